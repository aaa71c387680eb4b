"""The shift proxy: how a recipe does on films of an acquisition batch it has never seen.

The patient-level validation split shares centre, batches and curation with training and
says AUC 0.999 for every candidate, so it cannot choose between them. A *probe* run trains
the recipe without the normal films of one file-name family (``--exclude-family``, in
practice ``NORMAL2-IM``, a proxy for an acquisition batch) and scores that unseen family's
normals together with its own validation pneumonias. Its figures are the model-selection
criterion; the per-member logits are kept (``shift_scores.npz``) so ensembles of any subset
of members, and the calibration of the shipped bundle, can be computed from them later.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import structlog

from screener.model.bundle import Bundle, write_metadata
from screener.model.calibration import Platt, fit_platt, sigmoid
from screener.model.metrics import (
    brier,
    expected_calibration_error,
    roc_auc,
    specificity_at_sensitivity,
)
from screener.training import data
from screener.training.card import write_card

if TYPE_CHECKING:
    from screener.training.recipe import TrainConfig

log = structlog.get_logger()

SCORES_FILE = "shift_scores.npz"


def unseen_family(cfg: TrainConfig) -> list[data.Sample]:
    """The films a probe run left out (normal or pneumonia): its unseen acquisition batch."""
    family = cfg.exclude_family
    assert family is not None
    return [s for s in data.list_samples(cfg.data_dir, cfg.task) if data.in_family(s, family)]


def score_unseen_family(
    bundle: Bundle,
    cfg: TrainConfig,
    x_val_raw: npt.NDArray[np.uint8],
    y_val: npt.NDArray[np.int64],
) -> dict[str, Any]:
    """Score the unseen family, record ``shift_proxy`` in model.json and the card, and keep
    every member's logits on the unseen films and on the validation split."""
    assert cfg.exclude_family is not None
    unseen = unseen_family(cfg)
    unseen_label = data.FAMILIES[cfg.exclude_family]
    x_unseen = data.load_images(cfg.data_dir, unseen)
    val_logits = bundle.member_logits(x_val_raw)
    unseen_logits = bundle.member_logits(x_unseen)
    np.savez_compressed(
        bundle.path / SCORES_FILE,
        val_logits=val_logits,
        val_labels=y_val,
        unseen_logits=unseen_logits,
        unseen_files=np.array([Path(s.path).name for s in unseen]),
        unseen_label=np.array(unseen_label),
        family=np.array(cfg.exclude_family),
    )
    figures = proxy_figures(
        val_logits, y_val, unseen_logits, bundle.calibration, bundle.threshold, unseen_label
    )
    if bundle.guard is not None:  # the share of the unseen batch the domain guard lets in
        scores = bundle.assess(x_unseen).domain_scores
        assert scores is not None
        figures["domain_pass_rate_unseen"] = float(np.mean(scores <= bundle.guard.threshold))
    meta = dict(bundle.metadata)
    unseen_class, other_class = (
        ("pneumonias", "normals") if unseen_label else ("normals", "pneumonias")
    )
    meta["shift_proxy"] = {
        "family_left_out": cfg.exclude_family,
        f"unseen_{unseen_class}": len(unseen),
        **figures,
        "method": (
            f"the unseen family's {unseen_class} and this run's validation {other_class}, "
            "scored by this bundle at its own calibration and threshold"
        ),
    }
    write_metadata(bundle.path, meta)
    write_card(bundle.path, meta)
    bundle.metadata = meta
    log.info(
        "shift_proxy",
        unseen_normals=len(unseen),
        specificity=round(figures["specificity"], 4),
        sensitivity=round(figures["sensitivity"], 4),
        auc=round(figures["auc"], 4),
    )
    return figures


def probe_set(
    val_logits: npt.NDArray[np.float64],
    y_val: npt.NDArray[np.int64],
    unseen_logits: npt.NDArray[np.float64],
    unseen_label: int = 0,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Labels and ensemble logits of the probe set: the unseen family's films (first) and the
    validation films of the other class (unseen normals + validation pneumonias, or unseen
    pneumonias + validation normals)."""
    other = val_logits[:, y_val == 1 - unseen_label]
    logits = np.concatenate([unseen_logits, other], axis=1).mean(axis=0)
    labels = np.concatenate(
        [np.full(unseen_logits.shape[1], unseen_label), np.full(other.shape[1], 1 - unseen_label)]
    )
    return labels.astype(np.int64), logits


def proxy_figures(
    val_logits: npt.NDArray[np.float64],
    y_val: npt.NDArray[np.int64],
    unseen_logits: npt.NDArray[np.float64],
    calibration: Platt,
    threshold: float,
    unseen_label: int = 0,
) -> dict[str, float]:
    """The proxy's figures for the ensemble of the given members' logits (on unseen normals:
    their specificity and how many were flagged; on unseen pneumonias: their sensitivity and
    how many were missed)."""
    labels, logits = probe_set(val_logits, y_val, unseen_logits, unseen_label)
    probs = calibration.apply(sigmoid(logits))
    flagged = probs >= threshold
    unseen_flagged = flagged[: unseen_logits.shape[1]]
    val_probs = calibration.apply(sigmoid(val_logits.mean(axis=0)))
    if unseen_label == 0:
        own = {
            "specificity_unseen": float(np.mean(~unseen_flagged)),
            "flagged_unseen": float(np.sum(unseen_flagged)),
        }
    else:
        own = {
            "sensitivity_unseen": float(np.mean(unseen_flagged)),
            "missed_unseen": float(np.sum(~unseen_flagged)),
        }
    return {
        "auc": roc_auc(labels, probs),
        **own,
        "sensitivity": float(np.mean(flagged[labels == 1])),
        "specificity": float(np.mean(~flagged[labels == 0])),
        "specificity_at_sensitivity_0_95": specificity_at_sensitivity(labels, probs, 0.95),
        "brier": brier(labels, probs),
        "ece": expected_calibration_error(labels, probs),
        "validation_auc": roc_auc(y_val, val_probs),
        "validation_brier": brier(y_val, val_probs),
        "validation_ece": expected_calibration_error(y_val, val_probs),
    }


def load_scores(probe_dir: Path) -> dict[str, Any]:
    with np.load(probe_dir / SCORES_FILE) as npz:
        return {key: npz[key] for key in npz.files}


def shift_calibration(probe_dir: Path) -> Platt:
    """Platt scaling fitted on the probe set (unseen normals + validation pneumonias): the
    scores that best mimic a new site's, so the certainty survives a change of batch."""
    scores = load_scores(probe_dir)
    labels, logits = probe_set(scores["val_logits"], scores["val_labels"], scores["unseen_logits"])
    return fit_platt(labels, sigmoid(logits))


__all__ = [
    "load_scores",
    "probe_record",
    "proxy_figures",
    "score_unseen_family",
    "shift_calibration",
]


def probe_record(probe_dir: Path, calibration: Platt) -> dict[str, Any]:
    """What the shipped bundle records of its probe: the probe's own figures, and those of
    the probe's scores under the shipped calibration (fitted on them: in-sample)."""
    from screener.model.bundle import read_metadata

    probe_meta = read_metadata(probe_dir)
    own = probe_meta.get("shift_proxy")
    if not own:
        raise ValueError(f"{probe_dir} is not a probe bundle (no shift_proxy in model.json)")
    scores = load_scores(probe_dir)
    under_shipped = proxy_figures(
        scores["val_logits"],
        scores["val_labels"],
        scores["unseen_logits"],
        calibration,
        float(probe_meta["threshold"]),
    )
    return {
        **own,
        "probe_bundle": {"name": probe_meta["name"], "uid": probe_meta["uid"]},
        "probe_threshold": float(probe_meta["threshold"]),
        "under_shift_calibration": {
            "brier": under_shipped["brier"],
            "ece": under_shipped["ece"],
            "note": "the probe's scores under the calibration fitted on them (in-sample)",
            **cross_fitted(scores),
        },
    }


def cross_fitted(scores: dict[str, Any]) -> dict[str, float]:
    """Brier and ECE of the shift calibration out of sample: fitted on one half of the probe
    set (alternate films) and measured on the other, both ways, pooled."""
    labels, logits = probe_set(scores["val_logits"], scores["val_labels"], scores["unseen_logits"])
    raw = sigmoid(logits)
    probs = np.empty_like(raw)
    halves = np.arange(len(raw)) % 2
    for half in (0, 1):
        fit, out = halves != half, halves == half
        probs[out] = fit_platt(labels[fit], raw[fit]).apply(raw[out])
    return {
        "cross_fitted_brier": brier(labels, probs),
        "cross_fitted_ece": expected_calibration_error(labels, probs),
    }


def candidate_figures(
    val_logits: npt.NDArray[np.float64],
    y_val: npt.NDArray[np.int64],
    unseen_logits: npt.NDArray[np.float64],
    target: float,
) -> dict[str, float]:
    """The proxy's figures for one candidate (a subset of members), calibrated and
    thresholded on the probe's validation split exactly as training does for a bundle."""
    from screener.model.metrics import threshold_for_sensitivity

    raw = sigmoid(val_logits.mean(axis=0))
    platt = fit_platt(y_val, raw)
    threshold, _ = threshold_for_sensitivity(y_val, platt.apply(raw), target)
    return {
        **proxy_figures(val_logits, y_val, unseen_logits, platt, threshold),
        "threshold": threshold,
    }


def member_candidates(probe_dir: Path, target: float) -> list[dict[str, Any]]:
    """Each probe member alone, then the ensembles of the first 2, 3, ... members."""
    from screener.model.bundle import read_metadata

    scores = load_scores(probe_dir)
    val, y, unseen = scores["val_logits"], scores["val_labels"], scores["unseen_logits"]
    records = read_metadata(probe_dir)["training"].get("members") or []
    variants = [r.get("variant", "") for r in records] + [""] * len(val)
    subsets = [
        ([k], f"single network (member {k}{', ' + variants[k] if variants[k] else ''})")
        for k in range(len(val))
    ]
    subsets += [(list(range(n)), f"ensemble of {n}") for n in range(2, len(val) + 1)]
    return [
        {"name": name, "members": index, **candidate_figures(val[index], y, unseen[index], target)}
        for index, name in subsets
    ]


def model_selection(probe_dir: Path, members: int, target: float) -> dict[str, Any]:
    """The candidates the probe can judge (each member, the ensembles of its first members)
    and which of them this bundle is, ranked by specificity on the unseen batch at
    sensitivity >= 0.95 on the probe set (the threshold-free figure that matters here)."""
    candidates = member_candidates(probe_dir, target)
    key = "specificity_at_sensitivity_0_95"
    ranked = sorted(candidates, key=lambda c: -c[key])
    shipped = (
        next(c for c in candidates if c["members"] == list(range(members)))
        if members <= len(load_scores(probe_dir)["val_logits"])
        else None
    )
    if shipped is None:
        choice = f"This bundle has {members} members; the probe judged fewer."
    else:
        rank = ranked.index(shipped) + 1
        choice = (
            f"This bundle is the recipe of the candidate '{shipped['name']}', ranked {rank} of "
            f"{len(candidates)} on the probe's best specificity at sensitivity >= 0.95 "
            f"({shipped[key]:.3f}; best {ranked[0][key]:.3f}, '{ranked[0]['name']}')."
        )
    return {"criterion": key, "candidates": candidates, "choice": choice}
