"""ROC curve, calibration (reliability) and confusion-matrix figures as PNG.

Drawn on matplotlib ``Figure`` objects with the Agg canvas, not through pyplot's global
state, so the web app can draw from several threads at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import numpy as np

from screener.model.metrics import brier, expected_calibration_error, roc_curve, wilson_interval

Target = Path | IO[bytes]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, target: Target) -> None:
    fig.tight_layout()
    fig.savefig(target, format="png")


def plot_roc(
    labels: Any,
    probs: Any,
    path: Target,
    threshold: float | None,
    title: str,
    auc: float,
    ci: tuple[float, float] | list[float],
    *,
    point: tuple[float, float] | None = None,
    point_label: str | None = None,
) -> None:
    """ROC curve with the operating point marked: the one at ``threshold``, or ``point``
    (false-positive rate, sensitivity) when the threshold is not known."""
    fpr, tpr, _ = roc_curve(labels, probs)
    y = np.asarray(labels)
    p = np.asarray(probs)
    if point is None and threshold is not None:
        sens = float(np.mean(p[y == 1] >= threshold)) if np.any(y == 1) else float("nan")
        fp = float(np.mean(p[y == 0] >= threshold)) if np.any(y == 0) else float("nan")
        point, point_label = (fp, sens), point_label or f"threshold {threshold:.3f}"
    fig = _figure(5, 5)
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=2, label=f"AUC {auc:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    if point is not None:
        ax.scatter([point[0]], [point[1]], c="red", zorder=3, label=point_label)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    _save(fig, path)


def calibration_bins(labels: Any, probs: Any, bins: int = 10) -> list[dict[str, Any]]:
    """Per equal-width bin of P: films, mean P, observed rate and its 95 % Wilson interval
    (empty bins left out)."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        if n:
            positives = int(y[inside].sum())
            rows.append(
                {
                    "n": n,
                    "mean_p": float(p[inside].mean()),
                    "observed": positives / n,
                    "interval": wilson_interval(positives, n),
                }
            )
    return rows


def plot_calibration(labels: Any, probs: Any, path: Target, title: str, bins: int = 10) -> None:
    """Reliability diagram: observed rate of pneumonia against mean P per bin, with 95 %
    Wilson intervals and each bin's count; below it, how the P values spread."""
    rows = calibration_bins(labels, probs, bins)
    fig = _figure(5, 6)
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1))
    ax = fig.add_subplot(grid[0])
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    x = [r["mean_p"] for r in rows]
    obs = [r["observed"] for r in rows]
    low = [r["observed"] - r["interval"][0] for r in rows]
    high = [r["interval"][1] - r["observed"] for r in rows]
    ax.errorbar(x, obs, yerr=[low, high], fmt="o-", c="tab:blue", capsize=3, label="reads")
    for r in rows:
        ax.annotate(
            str(r["n"]),
            (r["mean_p"], r["observed"]),
            textcoords="offset points",
            xytext=(5, -10),
            fontsize=8,
            color="tab:blue",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mean P(pneumonia) in the bin")
    ax.set_ylabel("read as pneumonia")
    b, e = brier(labels, probs), expected_calibration_error(labels, probs, bins)
    ax.set_title(f"{title}\nBrier {b:.3f}, ECE {e:.3f}", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    hist = fig.add_subplot(grid[1])
    hist.hist(np.asarray(probs, dtype=np.float64), bins=bins, range=(0, 1), color="tab:grey")
    hist.set_xlim(0, 1)
    hist.set_xlabel("P(pneumonia)")
    hist.set_ylabel("studies")
    _save(fig, path)


def plot_confusion(confusion: dict[str, int], path: Target, title: str) -> None:
    """2 x 2 confusion matrix (rows: truth, columns: prediction)."""
    grid = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])
    fig = _figure(4.2, 4)
    ax = fig.add_subplot()
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
    _save(fig, path)


def plot_commission(c: Any, roc_path: Target, calibration_path: Target) -> None:
    """The commissioning pictures (:class:`screener.model.commission.Commissioning`): the
    site's weighted ROC with each candidate threshold marked, and the calibration on the
    weighted reads (observed share per bin of P with its Wilson interval over the bin's
    effective size), on the scale the site bundle will flag on."""
    from screener.model.commission import weighted_estimate, weighted_roc

    fpr, tpr = weighted_roc(c.labels, c.probabilities, c.weights)
    fig = _figure(5.5, 5.5)
    ax = fig.add_subplot()
    lo, hi = c.auc_interval
    ax.plot(fpr, tpr, lw=2, label=f"AUC {c.auc:.3f} (95% CI {lo:.3f}-{hi:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    for k in c.candidates:
        if k.sensitivity.value is None or k.specificity.value is None:
            continue
        recommended = any("recommended" in n for n in k.names)
        ax.scatter(
            [1 - k.specificity.value],
            [k.sensitivity.value],
            c="red" if recommended else "black",
            s=40 if recommended else 16,
            zorder=3,
            label=f"{k.threshold:.3f}: {k.label}" if recommended else None,
        )
    ax.axhline(c.target, ls=":", c="tab:red", lw=1)
    ax.set_xlabel("1 - specificity (weighted reads)")
    ax.set_ylabel("sensitivity (weighted reads)")
    ax.set_title(
        f"Site ROC: {len(c.labels)} reads, {c.audit_reads} of them audit reads", fontsize=10
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    _save(fig, roc_path)

    fig = _figure(5.5, 5)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect calibration")
    p = np.asarray(c.probabilities, dtype=np.float64)
    index = np.minimum((p * 10).astype(np.int64), 9)
    for b in range(10):
        inside = index == b
        if not inside.any():
            continue
        e = weighted_estimate(c.labels[inside] == 1, c.weights[inside])
        if e.value is None:
            continue
        x = float(np.average(p[inside], weights=c.weights[inside]))
        low, high = e.interval or (e.value, e.value)
        ax.errorbar(
            [x],
            [e.value],
            yerr=[[e.value - low], [high - e.value]],
            fmt="o",
            c="tab:blue",
            capsize=3,
        )
        ax.annotate(
            f"{int(inside.sum())}",
            (x, e.value),
            textcoords="offset points",
            xytext=(5, -10),
            fontsize=8,
            color="tab:blue",
        )
    after = c.calibration_after
    ax.set_title(
        f"Calibration on the site's reads ({'refitted' if c.refitted else 'kept'})\n"
        f"Brier {after['brier']:.3f}, ECE {after['ece']:.3f}; bins show reads",
        fontsize=9,
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mean P(pneumonia) in the bin")
    ax.set_ylabel("read as pneumonia (weighted)")
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, calibration_path)
