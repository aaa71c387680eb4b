"""Site calibration: a new operating point fitted on the site's own reviewed reads.

The shipped threshold was chosen on the training centre's films; at another site the same
sensitivity needs another threshold. ``screener calibrate --from-reviews`` takes the latest
read of every reviewed study the bundle assessed (the radiologist's read is the reference),
applies the bundle's own threshold rule (the highest threshold whose one-sided 95 % Wilson
lower bound of sensitivity reaches the target) and, optionally, refits the Platt map on the
reads. It writes a *new* bundle with a new UID: in IHE AI Results terms the device that
produces the results changed, so the Device Observer UID in its SRs must change too.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import screener
from screener.errors import ModelError
from screener.model.bundle import read_metadata, write_metadata
from screener.model.calibration import Platt, fit_platt
from screener.model.metrics import at_threshold, threshold_for_sensitivity, wilson_lower

#: Fewest reads as pneumonia accepted, whatever the target.
MIN_POSITIVES_FLOOR = 30
#: Fewest reads as normal accepted when the calibration is refitted.
MIN_NEGATIVES_FOR_CALIBRATION = 30
#: Fewest audit reads (unflagged studies drawn at random, screener.site.audit) read as normal: the
#: weighted figures rest on them for what the model does with the studies it does not flag.
MIN_AUDITED_NORMALS = 20


class CalibrationRefused(ModelError):
    """Too few (or unusable) reviewed reads to fit a new operating point."""


@dataclass(frozen=True)
class Reads:
    """The reviewed studies: the model's probability then, the radiologist's read."""

    probabilities: npt.NDArray[np.float64]
    positives: npt.NDArray[np.int64]
    #: 1 / the chance each study was read (screener.site.audit): 1 flagged, 1 / share audited
    weights: npt.NDArray[np.float64] | None = None
    #: of the reads, those of unflagged studies drawn for an audit
    audited: npt.NDArray[np.bool_] | None = None

    @property
    def n_positive(self) -> int:
        return int(self.positives.sum())

    @property
    def n_negative(self) -> int:
        return int(len(self.positives) - self.positives.sum())


def min_positives(target: float) -> int:
    """Fewest positives with which catching all of them reaches the Wilson bound."""
    n = 1
    while wilson_lower(n, n) < target and n < 100_000:
        n += 1
    return max(MIN_POSITIVES_FLOOR, n)


def compose(first: Platt, second: Platt) -> Platt:
    """``second`` after ``first`` as one Platt map (both act on the logit)."""
    return Platt(a=second.a * first.a, b=second.a * first.b + second.b)


def site_operating_point(
    meta: dict[str, Any],
    reads: Reads,
    target: float,
    refit_calibration: bool,
    rule: str | None = None,
) -> dict[str, Any]:
    """The new calibration, threshold and before/after figures on the reads. ``rule`` is a
    key of :data:`screener.model.commission.RULES`; None keeps ``calibrate``'s rule (the
    weighted one-sided 95 % Wilson bound)."""
    needed = min_positives(target)
    if reads.n_positive < needed:
        raise CalibrationRefused(
            f"only {reads.n_positive} reviewed studies were read as pneumonia; a target "
            f"sensitivity of {target:.2f} needs at least {needed} (review more studies, "
            "flagged or not, and run this again)"
        )
    if refit_calibration and reads.n_negative < MIN_NEGATIVES_FOR_CALIBRATION:
        raise CalibrationRefused(
            f"only {reads.n_negative} reviewed studies were read as normal; refitting the "
            f"calibration needs at least {MIN_NEGATIVES_FOR_CALIBRATION}"
        )
    if reads.audited is not None:
        normals = int(np.sum(reads.audited & (reads.positives == 0)))
        positives = int(np.sum(reads.audited & (reads.positives == 1)))
        if normals < MIN_AUDITED_NORMALS:
            raise CalibrationRefused(
                f"{int(reads.audited.sum())} audit reads ({normals} read as normal, "
                f"{positives} as pneumonia): the unbiased figures need at least "
                f"{MIN_AUDITED_NORMALS} audit reads read as normal, {MIN_AUDITED_NORMALS - normals} "
                "more (read the studies the worklist marks AUDIT READ; README, Audit reads)"
            )
    base = Platt.from_json(meta.get("calibration"))
    calibration, probs = base, reads.probabilities
    if refit_calibration:
        local = fit_platt(reads.positives, reads.probabilities, weights=reads.weights)
        calibration = compose(base, local)
        probs = local.apply(reads.probabilities)
    if rule is None:
        threshold, words = threshold_for_sensitivity(reads.positives, probs, target, reads.weights)
        words = words.replace("validation", "site")
    else:
        from screener.model.commission import RULES

        name, choose = RULES[rule]
        weights = np.ones(len(probs)) if reads.weights is None else reads.weights
        threshold = float(choose(reads.positives, probs, target, weights))
        words = (
            f"the {name} rule on the site's reads, weighted by 1 / their chance of being read, "
            f"for sensitivity >= {target:.3f} (screener commission)"
        )
    before = at_threshold(reads.positives, reads.probabilities, float(meta["threshold"]))
    after = at_threshold(reads.positives, probs, threshold)
    return {
        "calibration": calibration,
        "threshold": threshold,
        "rule": words,
        "before": before,
        "after": after,
    }


def write_site_bundle(
    source: Path,
    out: Path,
    reads: Reads,
    target: float,
    refit_calibration: bool,
    rule: str | None = None,
    commissioning: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Copy ``source`` to ``out`` with the site's operating point and a new UID; with
    ``commissioning`` (screener commission) its table goes into model.json and the card."""
    from pydicom.uid import generate_uid

    meta = read_metadata(source)
    point = site_operating_point(meta, reads, target, refit_calibration, rule)
    if out.exists():
        raise ModelError(f"{str(out)!r} exists; choose a new folder for the site bundle")
    shutil.copytree(source, out)
    now = dt.datetime.now(dt.UTC)
    # the parent's calibration too: its results' P are put on this bundle's scale when the
    # site bundle is commissioned again (screener.views.commissioning.parent_to_own)
    parent = {k: meta[k] for k in ("name", "version", "uid")}
    parent["calibration"] = meta.get("calibration") or Platt().to_json()
    calibration: Platt = point["calibration"]
    new = dict(meta)
    new.update(
        version=f"{screener.__version__}+site{now:%Y%m%dT%H%M%SZ}",
        uid=str(generate_uid()),
        created=now.isoformat(timespec="seconds"),
        threshold=point["threshold"],
        threshold_rule=point["rule"],
        derived_from=parent,
    )
    if refit_calibration:
        new["calibration"] = {
            **calibration.to_json(),
            "fitted_on": f"the shipped calibration, then {len(reads.positives)} site reads",
        }
    new["site_calibration"] = {
        "at": now.isoformat(timespec="seconds"),
        "reviewed_studies": len(reads.positives),
        "read_as_pneumonia": reads.n_positive,
        "read_as_normal": reads.n_negative,
        "target_sensitivity": target,
        "calibration_refitted": refit_calibration,
        "threshold_before": float(meta["threshold"]),
        "threshold_after": point["threshold"],
        "before": point["before"],
        "after": point["after"],
        "note": "figures on the reads the threshold was fitted on (in-sample)",
    }
    if commissioning is not None:
        new["commissioning"] = commissioning
    write_metadata(out, new)
    _append_card_note(out, new)
    return new


def _append_card_note(out: Path, meta: dict[str, Any]) -> None:
    card = out / "MODEL_CARD.md"
    s = meta["site_calibration"]
    b, a = s["before"], s["after"]
    text = card.read_text() if card.is_file() else ""
    text += (
        f"\n## Site calibration ({s['at']})\n\n"
        f"Derived from {meta['derived_from']['name']} {meta['derived_from']['version']} "
        f"(UID `{meta['derived_from']['uid']}`) on {s['reviewed_studies']} reviewed studies "
        f"({s['read_as_pneumonia']} read as pneumonia). New UID `{meta['uid']}`.\n\n"
        "| | threshold | sensitivity | specificity |\n|---|---|---|---|\n"
        f"| before | {s['threshold_before']:.4f} | {_pct(b['sensitivity'])} | "
        f"{_pct(b['specificity'])} |\n"
        f"| after | {s['threshold_after']:.4f} | {_pct(a['sensitivity'])} | "
        f"{_pct(a['specificity'])} |\n\n"
        "Measured on the same reads it was fitted on: confirm on the next reviewed studies.\n"
    )
    if "commissioning" in meta:
        text += _commissioning_table(meta["commissioning"])
    card.write_text(text)


def _commissioning_table(c: dict[str, Any]) -> str:
    """The candidate table ``screener commission`` showed, for the card."""

    def est(e: dict[str, Any]) -> str:
        if e["value"] is None:
            return "-"
        lo, hi = e["interval"] or (e["value"], e["value"])
        return f"{e['value']:.3f} ({lo:.3f}-{hi:.3f})"

    lo, hi = c["auc_interval"]

    def flags(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    rows = "".join(
        f"| {k['threshold']:.4f} | {est(k['sensitivity'])} | {est(k['specificity'])} | "
        f"{flags(k['flags_per_100'])} | {', '.join(k['chosen_by'])} |\n"
        for k in c["candidates"]
    )
    return (
        f"\n### Commissioning (screener commission)\n\n"
        f"{c['reads']} reads ({c['read_as_pneumonia']} as pneumonia, {c['read_as_normal']} as "
        f"normal; {c['audit_reads']} audit reads of unflagged studies), weighted by 1 / their "
        f"chance of being read; {c['assessed_studies']} studies assessed in all. Site AUC "
        f"{c['auc']:.3f} (95% CI {lo:.3f}-{hi:.3f}). Threshold chosen by the "
        f"**{c['rule']}** rule (recommended: {c['recommended_rule']}; {c['why']})\n\n"
        "| threshold | sensitivity (95% CI) | specificity (95% CI) | flags per 100 studies "
        "| chosen by |\n|---|---|---|---|---|\n" + rows
    )


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


__all__ = [
    "CalibrationRefused",
    "Reads",
    "compose",
    "min_positives",
    "site_operating_point",
    "write_site_bundle",
]
