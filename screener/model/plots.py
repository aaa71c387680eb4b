"""ROC curve and confusion-matrix figures (PNG), drawn with matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from screener.model.metrics import roc_curve


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(
    labels: Any,
    probs: Any,
    path: Path,
    threshold: float,
    title: str,
    auc: float,
    ci: tuple[float, float] | list[float],
) -> None:
    """ROC curve with the operating point at ``threshold`` marked."""
    plt = _pyplot()
    fpr, tpr, _ = roc_curve(labels, probs)
    y = np.asarray(labels)
    p = np.asarray(probs)
    sens = float(np.mean(p[y == 1] >= threshold)) if np.any(y == 1) else float("nan")
    fp = float(np.mean(p[y == 0] >= threshold)) if np.any(y == 0) else float("nan")
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.plot(fpr, tpr, lw=2, label=f"AUC {auc:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.scatter([fp], [sens], c="red", zorder=3, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(confusion: dict[str, int], path: Path, title: str) -> None:
    """2 x 2 confusion matrix (rows: truth, columns: prediction)."""
    plt = _pyplot()
    grid = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])
    fig, ax = plt.subplots(figsize=(4.2, 4), dpi=100)
    ax.imshow(grid, cmap="Blues")
    names = ["normal", "pneumonia"]
    ax.set_xticks([0, 1], labels=names)
    ax.set_yticks([0, 1], labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    for i in range(2):
        for j in range(2):
            colour = "white" if grid[i, j] > grid.max() / 2 else "black"
            ax.text(j, i, str(grid[i, j]), ha="center", va="center", color=colour, fontsize=14)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
