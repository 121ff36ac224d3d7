# Two commands for a fresh machine (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-fast clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,dev]'
	touch $@

# The main job: the quickstart grid on local Ray, tracked in ./mlflow.db, offline data.
demo: install
	$(BIN)/clmem grid experiments/quickstart.yaml

# The whole test suite (CPU only), two worker processes (Ray start-ups and subprocess waits overlap).
test: install
	CLMEM_REQUIRE_NATIVE=1 $(BIN)/python -m pytest -q -n 2

# Without the slow end-to-end tests.
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf ray_results mlartifacts mlflow.db .pytest_cache
