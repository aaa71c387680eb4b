"""Leave-one-family-out (LOFO) model selection, and test-time augmentation as a candidate.

The training folder has four file-name families (:data:`screener.training.data.FAMILIES`),
each a proxy for an acquisition batch: normals ``IM`` and ``NORMAL2-IM``, pneumonias
``bacteria`` and ``virus``. A *fold* is a bundle trained by a recipe with
``--exclude-family F``: it is judged on F's films (all unseen) together with its own
validation films of the other class, from the per-member logits it keeps
(``shift_scores.npz``). A recipe (a *candidate*) is judged by the mean over its folds of
the best specificity with sensitivity >= 0.95, and of the AUC.

Test-time augmentation (TTA) averages each member's logit over a few deterministic views of
the film: small zooms and shifts within the training augmentation's ranges. No flips: the
training never flipped (the heart is on the left), so a flipped film is one the network has
never seen. Each view's logits are kept per fold (``tta_scores.npz``) so that view subsets
are candidates without running the networks again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from screener.errors import ModelError
from screener.model.calibration import fit_platt, sigmoid
from screener.model.metrics import (
    bootstrap_auc_ci,
    roc_auc,
    specificity_at_sensitivity,
    threshold_for_sensitivity,
)
from screener.training import data
from screener.training.lofo_tables import (
    KEY,
    TARGET,
    Row,
    fold_table,
    summarise,
    summary_table,
)
from screener.training.shift import SCORES_FILE, probe_set

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]

TTA_FILE = "tta_scores.npz"

#: Deterministic views ``(shift x, shift y, zoom)``: shifts as a fraction of the side
#: (training drew them from +-0.06), zooms > 1 magnify (training drew 0.9-1.12).
VIEWS: dict[str, tuple[float, float, float]] = {
    "identity": (0.0, 0.0, 1.0),
    "zoom_in": (0.0, 0.0, 1.06),
    "zoom_out": (0.0, 0.0, 0.95),
    "left": (-0.04, 0.0, 1.0),
    "right": (0.04, 0.0, 1.0),
}
#: The TTA candidates: name -> the views whose logits are averaged.
VIEW_SETS: dict[str, tuple[str, ...]] = {
    "TTA 3 (zooms)": ("identity", "zoom_in", "zoom_out"),
    "TTA 5 (zooms, shifts)": tuple(VIEWS),
}


@dataclass(frozen=True)
class Fold:
    """One fold's kept scores: the validation split and the unseen family, per member."""

    path: Path
    family: str
    #: the member of a multi-member run this fold stands for (None: all, logits averaged)
    member: int | None
    recipe: str
    val_labels: Ints
    val_logits: Floats
    unseen_logits: Floats
    unseen_files: tuple[str, ...]

    @property
    def unseen_label(self) -> int:
        return data.FAMILIES[self.family]

    @property
    def name(self) -> str:
        return f"{self.path}" + ("" if self.member is None else f"@{self.member}")


def parse_fold(spec: str) -> tuple[Path, int | None]:
    """``DIR`` or ``DIR@K`` (member K of a multi-member run, e.g. the shipped probe)."""
    head, sep, tail = spec.rpartition("@")
    if sep and tail.isdigit():
        return Path(head), int(tail)
    return Path(spec), None


def recipe_name(meta: dict[str, Any]) -> str:
    """A recipe's short name: backbone, width, input size, and the epochs if not 24."""
    width = f" width {meta['width']}" if meta.get("width") else ""
    epochs = (meta.get("training") or {}).get("optimiser", {}).get("epochs")
    tail = f", {epochs} epochs" if epochs not in (None, 24) else ""
    return f"{meta.get('backbone', '?')}{width}, {meta['input_size']} px{tail}"


def load_fold(spec: str) -> Fold:
    """Read a fold folder's ``shift_scores.npz`` and model.json (refused unless it left one
    family of :data:`FAMILIES` out)."""
    from screener.model.bundle import read_metadata

    path, member = parse_fold(spec)
    if not (path / SCORES_FILE).is_file():
        raise ModelError(f"{path} holds no {SCORES_FILE}: not a run trained with --exclude-family")
    meta = read_metadata(path)
    family = (meta.get("training") or {}).get("exclude_family")
    if family not in data.FAMILIES:
        raise ModelError(f"{path} left out {family!r}, not one of {', '.join(data.FAMILIES)}")
    with np.load(path / SCORES_FILE) as npz:
        val, unseen = npz["val_logits"], npz["unseen_logits"]
        labels = npz["val_labels"].astype(np.int64)
        files = tuple(str(f) for f in npz["unseen_files"])
    if member is not None:
        if not 0 <= member < len(val):
            raise ModelError(f"{path} has {len(val)} members: no member {member}")
        val, unseen = val[member : member + 1], unseen[member : member + 1]
    recipe = recipe_name(meta) + (f", ensemble of {len(val)}" if len(val) > 1 else "")
    return Fold(path, family, member, recipe, labels, val, unseen, files)


def judge(
    val_logits: Floats,
    val_labels: Ints,
    unseen_logits: Floats,
    unseen_label: int,
    n_boot: int = 1000,
) -> dict[str, float]:
    """A fold's figures for one candidate's logits ``(members, n)`` (averaged over members).

    AUC (percentile bootstrap 95% CI) and the best specificity with sensitivity >= 0.95 on
    the probe set (the unseen family and the validation films of the other class); and the
    sensitivity and specificity there at the candidate's own threshold, calibrated and
    chosen on the fold's validation split exactly as training does for a bundle.
    """
    raw_val = sigmoid(val_logits.mean(axis=0))
    platt = fit_platt(val_labels, raw_val)
    threshold, _ = threshold_for_sensitivity(val_labels, platt.apply(raw_val), TARGET)
    labels, logits = probe_set(val_logits, val_labels, unseen_logits, unseen_label)
    probs = platt.apply(sigmoid(logits))
    lo, hi = bootstrap_auc_ci(labels, probs, n_boot=n_boot)
    flagged = probs >= threshold
    return {
        "auc": roc_auc(labels, probs),
        "auc_ci95_low": lo,
        "auc_ci95_high": hi,
        "specificity_at_sensitivity_0_95": specificity_at_sensitivity(labels, probs, TARGET),
        "threshold": threshold,
        "sensitivity": float(np.mean(flagged[labels == 1])),
        "specificity": float(np.mean(~flagged[labels == 0])),
        "unseen": float(unseen_logits.shape[1]),
        "other": float(np.sum(labels != unseen_label)),
    }


# --- test-time augmentation -----------------------------------------------------------


def view_images(
    images: npt.NDArray[np.uint8], shift_x: float, shift_y: float, zoom: float
) -> npt.NDArray[np.uint8]:
    """One deterministic view of ``(N, S, S)`` canonical films: zoom about the centre, then
    shift, bilinear, filled with black, as the training augmentation's affine does."""
    from PIL import Image

    if (shift_x, shift_y, zoom) == (0.0, 0.0, 1.0):
        return images
    size = images.shape[1]
    c = (size - 1) / 2.0
    tx, ty = shift_x * size, shift_y * size
    inv = 1.0 / zoom
    # PIL maps output (x, y) to input (a x + b y + c, d x + e y + f): the inverse transform.
    coeffs = (inv, 0.0, c - inv * (c + tx), 0.0, inv, c - inv * (c + ty))
    out = np.empty_like(images)
    for i, image in enumerate(images):
        pil = Image.fromarray(image, mode="L").transform(
            (size, size),
            Image.Transform.AFFINE,
            coeffs,
            resample=Image.Resampling.BILINEAR,
            fillcolor=0,
        )
        out[i] = np.asarray(pil, dtype=np.uint8)
    return out


def view_logits(
    member_logits: Callable[[npt.NDArray[np.uint8]], Floats],
    images: npt.NDArray[np.uint8],
    views: Sequence[str],
) -> Floats:
    """Each view's member logits, shape ``(views, members, N)``."""
    return np.stack([member_logits(view_images(images, *VIEWS[name])) for name in views])


def fold_images(
    fold: Fold, data_dir: Path | None
) -> tuple[Any, npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """The fold's bundle and its validation and unseen films, recomputed from model.json and
    checked against the kept scores (the same labels, the same unseen files)."""
    from screener.model.bundle import MODEL_FILE, load_bundle
    from screener.training.guard import bundle_split
    from screener.training.recipe import TrainConfig
    from screener.training.shift import unseen_family

    if not (fold.path / MODEL_FILE).exists():
        raise ModelError(f"{fold.path} keeps scores but no network ({MODEL_FILE}): no TTA")
    bundle = load_bundle(fold.path, with_guard=False)
    _, val, root = bundle_split(bundle, data_dir)
    labels = np.array([s.label for s in val], dtype=np.int64)
    if not np.array_equal(labels, fold.val_labels):
        raise ModelError(f"{fold.path}: the recomputed validation split differs from the kept one")
    cfg = TrainConfig(data_dir=root, out_dir=fold.path, exclude_family=fold.family)
    unseen = unseen_family(cfg)
    if tuple(Path(s.path).name for s in unseen) != fold.unseen_files:
        raise ModelError(f"{fold.path}: the unseen {fold.family} films differ from the kept ones")
    return bundle, data.load_images(root, val), data.load_images(root, unseen)


def tta_scores(
    fold: Fold,
    data_dir: Path | None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """The fold's per-view logits for every view in :data:`VIEWS`: read from its
    ``tta_scores.npz``, or computed with its networks (and kept there)."""
    cache = fold.path / TTA_FILE
    if cache.is_file():
        with np.load(cache) as npz:
            kept = {key: npz[key] for key in npz.files}
        if tuple(str(v) for v in kept["views"]) == tuple(VIEWS):
            return select_member(kept, fold.member)
    bundle, x_val, x_unseen = fold_images(fold, data_dir)
    progress(f"{fold.name}: {len(VIEWS)} views of {len(x_val) + len(x_unseen)} films")
    scores = {
        "views": np.array(list(VIEWS)),
        "val_logits": view_logits(bundle.member_logits, x_val, list(VIEWS)),
        "unseen_logits": view_logits(bundle.member_logits, x_unseen, list(VIEWS)),
    }
    with np.load(fold.path / SCORES_FILE) as npz:
        kept_val = npz["val_logits"]
    # the plain view must give the kept scores (the same networks, the same films)
    if not np.allclose(scores["val_logits"][0], kept_val, atol=1e-3):
        raise ModelError(f"{fold.path}: the networks no longer give the kept scores")
    np.savez_compressed(
        cache,
        views=scores["views"],
        val_logits=scores["val_logits"],
        unseen_logits=scores["unseen_logits"],
    )
    return select_member(scores, fold.member)


def select_member(scores: dict[str, Any], member: int | None) -> dict[str, Any]:
    if member is None:
        return scores
    return {
        **scores,
        "val_logits": scores["val_logits"][:, member : member + 1],
        "unseen_logits": scores["unseen_logits"][:, member : member + 1],
    }


def tta_logits(scores: dict[str, Any], views: Sequence[str]) -> tuple[Floats, Floats]:
    """A view set's logits, averaged over its views: ``(members, n)`` for val and unseen."""
    names = [str(v) for v in scores["views"]]
    index = [names.index(v) for v in views]
    return scores["val_logits"][index].mean(axis=0), scores["unseen_logits"][index].mean(axis=0)


# --- the table --------------------------------------------------------------------------


def evaluate(
    folds: Sequence[Fold],
    tta: bool,
    data_dir: Path | None = None,
    n_boot: int = 1000,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Row]:
    """Every fold judged as its recipe, and with ``tta`` also as each TTA view set."""
    rows: list[Row] = []
    for fold in folds:
        progress(f"{fold.name}: {fold.family} left out, {len(fold.unseen_files)} unseen films")
        rows.append(
            Row(
                fold.recipe,
                fold.name,
                fold.family,
                judge(
                    fold.val_logits, fold.val_labels, fold.unseen_logits, fold.unseen_label, n_boot
                ),
            )
        )
        if not tta:
            continue
        try:
            scores = tta_scores(fold, data_dir, progress)
        except ModelError as exc:
            progress(f"{fold.name}: no TTA ({exc})")
            continue
        for name, views in VIEW_SETS.items():
            val, unseen = tta_logits(scores, views)
            figures = judge(val, fold.val_labels, unseen, fold.unseen_label, n_boot)
            rows.append(Row(f"{fold.recipe} + {name}", fold.name, fold.family, figures))
    return rows


#: What the card says of the method (model_selection.lofo.method).
METHOD = (
    "The training folder has four file-name families, each a stand-in for an acquisition "
    "batch: normals `IM` (597 films) and `NORMAL2-IM` (744), pneumonias `bacteria` (2,530) "
    "and `virus` (1,345). A fold is a recipe trained (one network, seed 1, split seed 42) "
    "without one family and judged on that family's films, all unseen, together with its own "
    "validation films of the other class; its threshold is fitted on its validation split "
    "as training does. `screener families` computes the tables from the folds' kept logits "
    "(`models/screener-default/lofo/`). TTA: each network's logit averaged over views of "
    "the film (TTA 3: plain, zoom 1.06, zoom 0.95; TTA 5: also shifts of 4% left and right)."
)


def record(bundle_dir: Path, rows: Sequence[Row], conclusion: str) -> None:
    """Keep the LOFO tables in a bundle's model.json (``model_selection.lofo``) and render
    its card again: figures only, the network, calibration and threshold stay as they are."""
    from screener.model.bundle import read_metadata, write_metadata
    from screener.training.card import write_card

    meta = read_metadata(bundle_dir)
    selection = dict(meta.get("model_selection") or {})
    selection["lofo"] = {
        "criterion": "mean over folds of the best specificity with sensitivity >= 0.95 "
        "(and of the AUC)",
        "method": METHOD,
        "folds": [r.__dict__ for r in rows],
        "candidates": summarise(rows),
        "conclusion": conclusion,
    }
    meta["model_selection"] = selection
    write_metadata(bundle_dir, meta)
    write_card(bundle_dir, meta)


__all__ = [
    "KEY",
    "Fold",
    "Row",
    "evaluate",
    "fold_table",
    "load_fold",
    "record",
    "summarise",
    "summary_table",
]
