"""Plots written as PNG files (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def accuracy_heatmap(R, path: str | Path, title: str = "score matrix R[i][j]", label: str | None = None,
                     higher_is_better: bool = True) -> Path:
    """Heatmap of ``R [T, T]`` (rows: trained up to experience i; columns: tested on experience j).

    ``label`` names the colour bar (the score and its direction); the colours run from dark (worst) to
    bright (best) for either direction (``higher_is_better=False`` reverses the map).
    """
    plt = _pyplot()
    m = np.asarray(R, dtype=float)
    vmax = max(1.0, float(m.max()))
    fig, ax = plt.subplots(figsize=(2.6 + 0.6 * m.shape[1], 1.8 + 0.6 * m.shape[0]))
    image = ax.imshow(m, vmin=0.0, vmax=vmax, cmap="viridis" if higher_is_better else "viridis_r")
    for (i, j), value in np.ndenumerate(m):
        dark = (value / vmax < 0.5) == higher_is_better
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xlabel("test experience j")
    ax.set_ylabel("after training on i")
    ax.set_xticks(range(m.shape[1]))
    ax.set_yticks(range(m.shape[0]))
    ax.set_title(_wrap(title, 36 + 6 * m.shape[1]), fontsize=8)
    bar = fig.colorbar(image, ax=ax, fraction=0.046)
    if label:
        bar.set_label(_wrap(label, 24), fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.fill(part, width) for part in text.split("\n"))


def png_base64(draw, *args, **kwargs) -> str:
    """Run ``draw(*args, path, **kwargs)`` (any plot function of this module) and return the
    PNG as base64 text, so a plot made in a Ray worker can travel in a report."""
    import base64
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return base64.b64encode(draw(*args, Path(tmp) / "plot.png", **kwargs).read_bytes()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_by_experience(curves: dict[str, np.ndarray], ylabel: str, path: str | Path,
                         title: str | None = None) -> Path:
    """Mean ± sd over seeds of a per-experience metric, one line per group (legend in ``curves`` order).

    ``curves[label]`` is ``[seeds, T]`` (NaN where a seed has no value); ``ylabel`` should name the unit
    and direction of the metric, ``title`` (optional) what is plotted.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in curves.items():
        values = np.atleast_2d(np.asarray(values, dtype=float))
        mean, sd = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
        steps = np.arange(1, values.shape[1] + 1)
        ax.plot(steps, mean, marker="o", label=label)
        ax.fill_between(steps, mean - sd, mean + sd, alpha=0.2)
    ax.set_xticks(np.arange(1, max(np.atleast_2d(v).shape[1] for v in curves.values()) + 1))
    ax.set_xlabel("after training on experience")
    ax.set_ylabel(_wrap(ylabel, 45), fontsize=8)
    if title:
        ax.set_title(_wrap(title, 80), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def summary_bars(groups: dict[str, dict[str, tuple[float, float]]], metrics: tuple[str, ...],
                 path: str | Path, title: str | None = None, ylabel: str | None = None) -> Path:
    """Grouped bars of ``metrics`` (e.g. ACC, BWT) per group (in ``groups`` order, e.g. best first) with
    ± sd error bars over seeds; ``title``/``ylabel`` (optional) name the unit, direction and signs."""
    plt = _pyplot()
    labels = list(groups)
    width = 0.8 / max(1, len(metrics))
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(labels), 4))
    x = np.arange(len(labels))
    for k, metric in enumerate(metrics):
        means = [groups[g][metric][0] for g in labels]
        sds = [groups[g][metric][1] for g in labels]
        ax.bar(x + (k - (len(metrics) - 1) / 2) * width, means, width, yerr=sds, capsize=3, label=metric)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    if title:
        ax.set_title(_wrap(title, 30 + 16 * len(labels)), fontsize=7)
    if ylabel:
        ax.set_ylabel(_wrap(ylabel, 45), fontsize=8)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def memory_heatmaps(usage, read_weights, write_weights, path: str | Path) -> Path:
    """Memory access over time for one sequence: usage ``[T, N]`` (None: not drawn), read weights
    ``[T, R, N]`` (summed over heads R) and write weights ``[T, H, N]`` (summed over heads H)."""
    plt = _pyplot()
    panels = [("read weights (sum over heads)", np.asarray(read_weights, dtype=float).sum(axis=1)),
              ("write weights (sum over heads)", np.asarray(write_weights, dtype=float).sum(axis=1))]
    if usage is not None:  # the NTM has no usage
        panels.insert(0, ("usage", np.asarray(usage, dtype=float)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.5))
    for ax, (title, data) in zip(axes, panels):
        image = ax.imshow(data.T, aspect="auto", origin="lower", cmap="magma")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("time step t")
        ax.set_ylabel("memory slot n")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
