"""The leave-one-family-out tables (:mod:`screener.training.families`): one row per fold and
candidate, the means per candidate, and both as text. A leaf module, so that the model card
(:mod:`screener.training.card`) can render them without importing the folds' machinery."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The criterion's sensitivity (the shipped operating target).
TARGET = 0.95


@dataclass(frozen=True)
class Row:
    """One fold judged as one candidate."""

    candidate: str
    fold: str
    family: str
    figures: dict[str, float]


KEY = "specificity_at_sensitivity_0_95"


def summarise(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per candidate: its families and the mean criterion and AUC over its folds; and, paired
    with the reference (the first candidate, e.g. the shipped recipe) on the families both
    have, the mean difference of each (candidates cover different folds, so only paired
    differences compare them)."""
    candidates = list(dict.fromkeys(r.candidate for r in rows))
    by = {(r.candidate, r.family): r.figures for r in rows}
    families = {c: sorted({r.family for r in rows if r.candidate == c}) for c in candidates}
    reference = candidates[0] if candidates else ""
    out = []
    for c in candidates:
        mine = [by[c, f] for f in families[c]]
        paired = [f for f in families[c] if (reference, f) in by]
        out.append(
            {
                "candidate": c,
                "families": families[c],
                "mean_spec_at_sens_0_95": _mean(m[KEY] for m in mine),
                "mean_auc": _mean(m["auc"] for m in mine),
                "reference": reference,
                "paired_families": paired,
                "paired_delta_spec_at_sens_0_95": _mean(
                    by[c, f][KEY] - by[reference, f][KEY] for f in paired
                ),
                "paired_delta_auc": _mean(
                    by[c, f]["auc"] - by[reference, f]["auc"] for f in paired
                ),
            }
        )
    return out


def _mean(values: Any) -> float:
    items = list(values)
    return float(np.mean(items)) if items else math.nan


def fold_table(rows: Sequence[Row]) -> str:
    """The per-fold table (markdown)."""
    lines = [
        "| family left out | unseen films | candidate | AUC (95% CI) | best spec. at sens. >= 0.95 "
        "| sens. / spec. at its threshold |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r.family, r.candidate)):
        f = r.figures
        lines.append(
            f"| {r.family} | {int(f['unseen'])} | {r.candidate} | {f['auc']:.4f} "
            f"({f['auc_ci95_low']:.3f}-{f['auc_ci95_high']:.3f}) | {f[KEY]:.3f} "
            f"| {f['sensitivity']:.3f} / {f['specificity']:.3f} |"
        )
    return "\n".join(lines)


def summary_table(summary: Sequence[dict[str, Any]]) -> str:
    """The candidate table (markdown): the criterion over each candidate's folds, and the
    paired difference from the reference on the folds both have."""
    reference = summary[0]["reference"] if summary else ""
    lines = [
        "| candidate | folds | mean best spec. at sens. >= 0.95 | mean AUC | minus the "
        f"reference ({reference}) on the same folds: best spec. / AUC |",
        "|---|---|---|---|---|",
    ]
    for s in summary:
        paired = (
            f"{_signed(s['paired_delta_spec_at_sens_0_95'], 3)} / "
            f"{_signed(s['paired_delta_auc'], 4)} ({', '.join(s['paired_families'])})"
            if s["paired_families"] and s["candidate"] != reference
            else "-"
        )
        lines.append(
            f"| {s['candidate']} | {', '.join(s['families'])} | "
            f"{s['mean_spec_at_sens_0_95']:.3f} | {s['mean_auc']:.4f} | {paired} |"
        )
    return "\n".join(lines)


def _signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}"
