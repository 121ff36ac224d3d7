"""Plots written as PNG files (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def accuracy_heatmap(R, path: str | Path, title: str = "accuracy matrix R[i][j]") -> Path:
    """Heatmap of ``R`` (rows: trained up to experience i; columns: tested on experience j)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(R, dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * m.shape[1], 0.8 + 0.6 * m.shape[0]))
    image = ax.imshow(m, vmin=0.0, vmax=max(1.0, float(m.max())), cmap="viridis")
    for (i, j), value in np.ndenumerate(m):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                color="white" if value < 0.5 else "black")
    ax.set_xlabel("test experience j")
    ax.set_ylabel("after training on i")
    ax.set_xticks(range(m.shape[1]))
    ax.set_yticks(range(m.shape[0]))
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
