"""Fit a bundle's domain guard on its own training and validation films.

Run at the end of ``screener train`` and by ``screener guard`` for an existing bundle (its
split is recomputed from model.json, as ``screener evaluate --split validation`` does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from screener.model.bundle import Bundle, write_metadata
from screener.model.domain import SHRINKAGE, SMALL_CNN_LAYERS, VALIDATION_PASS, fit_guard

log = structlog.get_logger()


def domain_features(bundle: Bundle, images: npt.NDArray[np.uint8]) -> list[Any]:
    """Pooled features of every (member, stage), with a progress bar."""
    from tqdm import tqdm

    parts: list[list[Any]] = []
    step = 256
    for start in tqdm(range(0, len(images), step), desc="domain features", unit="batch"):
        parts.append(bundle.forward(images[start : start + step])[1])
    return [np.concatenate(chunks) for chunks in zip(*parts, strict=True)]


def fit_bundle_guard(
    bundle: Bundle,
    x_train: npt.NDArray[np.uint8],
    y_train: npt.NDArray[np.int64],
    x_val: npt.NDArray[np.uint8],
) -> dict[str, Any]:
    """Fit, save ``domain.npz`` and record ``domain_guard`` in model.json; returns it."""
    guard, val_scores = fit_guard(
        domain_features(bundle, x_train), y_train, domain_features(bundle, x_val)
    )
    guard.save(bundle.path)
    pass_rate = float(np.mean(val_scores <= guard.threshold))
    record: dict[str, Any] = {
        "method": (
            "Mahalanobis distance of pooled features to the nearest class mean (shared "
            "covariance, shrunk towards a scaled identity), per member and stage, z-normalised "
            "on the training films and summed (Lee et al. 2018)"
        ),
        "layers": list(SMALL_CNN_LAYERS),
        "components": len(guard.means),
        "shrinkage": SHRINKAGE,
        "threshold": guard.threshold,
        "threshold_rule": f"the {VALIDATION_PASS:.0%} quantile of the validation films' scores",
        "fitted_on": {"train_images": len(x_train), "validation_images": len(x_val)},
        "validation_pass_rate": pass_rate,
    }
    meta = dict(bundle.metadata)
    meta["domain_guard"] = record
    write_metadata(bundle.path, meta)
    bundle.metadata = meta
    bundle.guard = guard
    log.info(
        "domain_guard_fitted",
        threshold=round(guard.threshold, 3),
        validation_pass_rate=round(pass_rate, 4),
    )
    return record


def bundle_split(bundle: Bundle, data_dir: Path | None) -> tuple[list[Any], list[Any], Path]:
    """The bundle's (train, validation) samples, recomputed from model.json, and the root."""
    from screener.errors import ModelError
    from screener.training import data
    from screener.training.train import TrainConfig, select_samples

    t = bundle.metadata.get("training") or {}
    split = t.get("split") or {}
    if not split:
        raise ModelError(f"bundle {bundle.name!r} records no validation split in model.json")
    root = data_dir or Path(t["data_dir"])
    cfg = TrainConfig(
        data_dir=root,
        out_dir=bundle.path,
        task=bundle.task,
        seed=int(split["seed"]),
        val_fraction=float(split["val_fraction"]),
        limit=t.get("limit"),
        exclude_family=t.get("exclude_family"),
    )
    samples = select_samples(cfg)
    if data.fingerprint(samples) != t.get("data_fingerprint"):
        raise ModelError(
            f"data in {str(root)!r} does not match the bundle's training fingerprint "
            f"{str(t.get('data_fingerprint'))[:16]}...: cannot recompute its split"
        )
    train, val = data.split_by_patient(samples, cfg.val_fraction, cfg.seed)
    return train, val, root
