"""clmem: continual learning with memory-augmented networks on Avalanche, Ray Tune and MLflow."""

__version__ = "0.1.0"
