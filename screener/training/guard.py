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
from screener.model.domain import SHRINKAGE, VALIDATION_PASS, fit_guard, guard_layers

log = structlog.get_logger()


def domain_features(
    bundle: Bundle, images: npt.NDArray[np.uint8], layers: tuple[str, ...]
) -> list[Any]:
    """Pooled features of ``layers`` in every member, with a progress bar."""
    from tqdm import tqdm

    parts: list[list[Any]] = []
    step = 256
    for start in tqdm(range(0, len(images), step), desc="domain features", unit="batch"):
        parts.append(bundle.forward(images[start : start + step], layers)[1])
    return [np.concatenate(chunks) for chunks in zip(*parts, strict=True)]


def fit_bundle_guard(
    bundle: Bundle,
    x_train: npt.NDArray[np.uint8],
    y_train: npt.NDArray[np.int64],
    x_val: npt.NDArray[np.uint8],
) -> dict[str, Any]:
    """Fit, save ``domain.npz`` and record ``domain_guard`` in model.json; returns it."""
    layers = guard_layers(str(bundle.metadata.get("backbone", "small_cnn")))
    guard, val_scores = fit_guard(
        domain_features(bundle, x_train, layers),
        y_train,
        domain_features(bundle, x_val, layers),
        layers,
    )
    guard.save(bundle.path)
    pass_rate = float(np.mean(val_scores <= guard.threshold))
    record: dict[str, Any] = {
        "method": (
            "Mahalanobis distance of pooled features to the nearest class mean (shared "
            "covariance, shrunk towards a scaled identity), per member and stage, z-normalised "
            "on the training films and summed (Lee et al. 2018)"
        ),
        "layers": list(layers),
        "components": len(guard.means),
        "shrinkage": SHRINKAGE,
        "threshold": guard.threshold,
        "threshold_rule": f"the {VALIDATION_PASS:.1%} quantile of the validation films' scores",
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
    from screener.training.recipe import TrainConfig, select_samples

    t = bundle.metadata.get("training") or {}
    if not t.get("split"):
        raise ModelError(f"bundle {bundle.name!r} records no validation split in model.json")
    root = data_dir or Path(t["data_dir"])
    if data_dir is None and not root.is_dir():
        raise ModelError(
            f"the bundle's training folder {str(root)!r} (recorded in model.json; a relative "
            "one is read from the current folder) is not here: give it with --data"
        )
    cfg = TrainConfig.from_metadata({**bundle.metadata, "task": bundle.task}, root, bundle.path)
    samples = select_samples(cfg)
    if data.fingerprint(samples) != t.get("data_fingerprint"):
        raise ModelError(
            f"data in {str(root)!r} does not match the bundle's training fingerprint "
            f"{str(t.get('data_fingerprint'))[:16]}...: cannot recompute its split"
        )
    train, val = data.split_by_patient(samples, cfg.val_fraction, cfg.seed)
    return train, val, root


def foreign_checks(bundle: Bundle, data_root: Path, val_images: Any) -> list[dict[str, Any]]:
    """What the guard does with films the model is not for, from the development data:
    the share outside the domain and the share flagged (of all, by the score alone)."""
    import matplotlib

    from screener.errors import ScreenerError
    from screener.imaging import load_raster
    from screener.model.inputs import load_frames

    dicom = data_root / "dicom"

    def frames(folder: str, names: list[str] | None = None) -> list[Any]:
        out: list[Any] = []
        for path in sorted((dicom / folder).glob("*.dcm")):
            if names is None or path.name in names:
                try:
                    out.extend(load_frames(path))
                except (ScreenerError, OSError):  # the two JPLY files do not decode
                    continue
        return out

    rng = np.random.default_rng(0)
    sample = val_images[:100]
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    sets = {
        "pediatric validation films (in population)": list(val_images),
        "adult chest CR, SIIM (ages ignored)": frames("siim_chest_cr"),
        "adult chest DX, NIH (ages ignored)": frames(
            "nih_dx_header_variants", ["test1.dcm", "test2.dcm", "test3.dcm"]
        ),
        "hip and tibia CR, WG04": frames("wg04_nonchest"),
        "validation films inverted": [255 - x for x in sample],
        "validation films rotated 90 degrees": [np.rot90(x).copy() for x in sample],
        "constant images": [np.full((224, 224), v, np.uint8) for v in (0, 40, 128, 200, 255)],
        "uniform noise": [rng.integers(0, 256, (224, 224)).astype(np.uint8) for _ in range(10)],
        "a natural photograph": [load_raster(hopper)],
    }
    checks = []
    for what, images in sets.items():
        if not images:
            continue
        assessed = bundle.assess(np.stack(images))
        outside = np.array([not assessed.in_domain(i) for i in range(len(images))])
        flagged = (assessed.probabilities >= bundle.threshold) & ~outside
        checks.append(
            {
                "what": what,
                "n": len(images),
                "outside": float(outside.mean()),
                "flagged": float(flagged.mean()),
            }
        )
    return checks
