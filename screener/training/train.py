"""``screener train`` end to end: data -> split -> fit -> calibrate -> threshold -> bundle."""

from __future__ import annotations

import datetime as dt
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

import screener
from screener.errors import ModelError
from screener.model import architectures
from screener.model.bundle import MODEL_FILE, Bundle, load_bundle, write_metadata
from screener.model.calibration import Platt, fit_platt
from screener.model.metrics import log_loss, summary, threshold_for_sensitivity
from screener.model.plots import plot_confusion, plot_roc
from screener.model.preprocess import PreprocessParams, preprocess
from screener.training import data
from screener.training.augment import AugmentParams
from screener.training.card import write_card
from screener.training.fit import Batches, FitParams, class_weights, fit_model

log = structlog.get_logger()

CHECKPOINT = "checkpoint.keras"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (recorded in model.json)."""

    data_dir: Path
    out_dir: Path
    backbone: str = "small_cnn"
    weights: str = "none"
    task: str = "binary"
    input_size: int = 224
    normalisation: str = "equalize"
    target_sensitivity: float = 0.95
    seed: int = 42
    val_fraction: float = 0.2
    limit: int | None = None
    exclude_family: str | None = None
    name: str | None = None
    fit: FitParams = field(default_factory=FitParams)


def weights_argument(weights: str) -> str | None:
    """``--weights`` as the Keras application constructor wants it (``None`` = random)."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights)
    if not path.is_file():
        raise ModelError(f"weights file {weights!r} does not exist (use imagenet, none or a path)")
    return str(path)


def select_samples(cfg: TrainConfig) -> list[data.Sample]:
    """The labelled images a run uses: listing, optional family exclusion, optional limit."""
    samples = data.list_samples(cfg.data_dir, cfg.task)
    if cfg.exclude_family:
        samples = [
            s
            for s in samples
            if not (s.label == 0 and data.family_of(Path(s.path).name) == cfg.exclude_family)
        ]
    if cfg.limit:
        samples = data.limit_samples(samples, cfg.limit, cfg.seed)
    return samples


def train(cfg: TrainConfig) -> Bundle:
    """Run a full training and write the bundle to ``cfg.out_dir``; returns it loaded."""
    import keras
    import tensorflow as tf

    started = time.monotonic()
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    weights = weights_argument(cfg.weights)
    pre = PreprocessParams(input_size=cfg.input_size, normalisation=cfg.normalisation)
    aug = AugmentParams()

    samples = select_samples(cfg)
    train_s, val_s = data.split_by_patient(samples, cfg.val_fraction, cfg.seed)
    split = data.split_description(train_s, val_s, cfg.val_fraction, cfg.seed)
    log.info("split_done", **{k: v for k, v in split.items() if k in ("train", "validation")})
    if not val_s or len({s.label for s in val_s}) < 2:
        raise ModelError("the validation split needs both classes; use more data or --val-fraction")

    x_train = data.load_images(cfg.data_dir, train_s)
    x_val_raw = data.load_images(cfg.data_dir, val_s)
    targets = np.array([s.kind for s in train_s], dtype=np.int64)
    y_val = np.array([s.label for s in val_s], dtype=np.int64)
    n_classes = architectures.n_outputs(cfg.task) if cfg.task == "type" else 2
    cw = class_weights(targets, n_classes)

    model = architectures.build_model(cfg.backbone, cfg.input_size, cfg.task, weights)
    log.info("model_built", backbone=cfg.backbone, parameters=int(model.count_params()))
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = cfg.out_dir / CHECKPOINT
    batches = Batches(x_train, targets, cw, pre, aug, cfg.fit.batch_size, cfg.seed)
    x_val = preprocess(x_val_raw, pre)
    transfer = cfg.backbone != "small_cnn" and weights is not None
    result = fit_model(
        model,
        batches,
        x_val,
        y_val,
        cfg.task,
        cfg.fit,
        checkpoint,
        transfer,
        architectures.BACKBONE_LAYER,
    )
    train_seconds = time.monotonic() - started
    log.info("training_done", seconds=round(train_seconds), best_epoch=result["best_epoch"])

    meta = base_metadata(cfg, pre, aug, samples, split, cw, result, train_seconds, model)
    return finalize(cfg.out_dir, checkpoint, meta, x_val_raw, y_val, cfg.target_sensitivity)


def base_metadata(
    cfg: TrainConfig,
    pre: PreprocessParams,
    aug: AugmentParams,
    samples: list[data.Sample],
    split: dict[str, Any],
    cw: dict[int, float],
    result: dict[str, Any],
    seconds: float,
    model: Any,
) -> dict[str, Any]:
    """model.json before calibration, threshold and metrics are known."""
    import keras
    import tensorflow as tf
    from pydicom.uid import generate_uid

    now = dt.datetime.now(dt.UTC)
    return {
        "format": "screener-bundle/1",
        "name": cfg.name or cfg.out_dir.resolve().name,
        "version": f"{screener.__version__}+{now:%Y%m%dT%H%M%SZ}",
        "uid": generate_uid(),
        "created": now.isoformat(timespec="seconds"),
        "task": cfg.task,
        "classes": list(data.TYPE_CLASSES) if cfg.task == "type" else ["normal", "pneumonia"],
        "output": "calibrated P(pneumonia)",
        "backbone": cfg.backbone,
        "parameters": int(model.count_params()),
        "initialisation": {
            "weights": cfg.weights,
            "note": _init_note(cfg.weights),
        },
        "input_size": cfg.input_size,
        "preprocessing": pre.to_json(),
        "gradcam_layer": architectures.gradcam_layer(cfg.backbone),
        "target_sensitivity": cfg.target_sensitivity,
        "training": {
            "data_dir": str(cfg.data_dir),
            "data_fingerprint": data.fingerprint(samples),
            "fingerprint_method": "sha256 over sorted 'CLASS/name<TAB>size' lines",
            "images": len(samples),
            "limit": cfg.limit,
            "exclude_family": cfg.exclude_family,
            "split": split,
            "class_weights": {str(k): v for k, v in cw.items()},
            "augmentation": aug.to_json(),
            "optimiser": {
                "name": "AdamW",
                **asdict(cfg.fit),
                "schedule": "1 epoch linear warm-up from lr/10, then cosine decay to 2%",
                "early_stopping": "on validation AUC",
                "checkpoint": "best validation AUC",
            },
            "seed": cfg.seed,
            "best_epoch": result["best_epoch"],
            "epochs_run": result["epochs_run"],
            "best_val_auc_uncalibrated": result["best_val_auc"],
            "history": result["history"],
            "seconds": round(seconds, 1),
            "host": {"cpus": _cpus(), "machine": platform.machine(), "accelerator": "none"},
            "versions": {
                "screener": screener.__version__,
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "python": platform.python_version(),
            },
        },
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _init_note(weights: str) -> str:
    if weights == "none":
        return "random initialisation, trained from scratch (no ImageNet weights on this machine)"
    if weights == "imagenet":
        return "ImageNet weights fetched by Keras"
    return f"weights loaded from local file {Path(weights).name}"


def finalize(
    out_dir: Path,
    checkpoint: Path,
    meta: dict[str, Any],
    x_val_raw: npt.NDArray[np.uint8],
    y_val: npt.NDArray[np.int64],
    target: float,
) -> Bundle:
    """Calibrate and pick the threshold on validation, write the bundle, card and figures.

    The reported metrics come from the bundle as written and reloaded, through the same
    ``Bundle.predict`` that `screener evaluate` and the daemon use.
    """
    import keras

    model = keras.models.load_model(checkpoint, compile=False)
    model.save(out_dir / MODEL_FILE)  # without optimiser state: serving needs none
    provisional = Bundle(path=out_dir, metadata={**meta, "threshold": 0.5}, model=model)
    raw = provisional.predict_raw(x_val_raw)
    platt = fit_platt(y_val, raw)
    calibrated = platt.apply(raw)
    threshold, rule = threshold_for_sensitivity(y_val, calibrated, target)
    meta.update(
        calibration={
            **platt.to_json(),
            "val_log_loss_before": log_loss(y_val, raw),
            "val_log_loss_after": log_loss(y_val, calibrated),
        },
        threshold=threshold,
        threshold_rule=rule,
    )
    write_metadata(out_dir, meta)
    bundle = load_bundle(out_dir)
    probs = bundle.predict(x_val_raw)
    metrics = summary(y_val, probs, bundle.threshold)
    meta["operating_point"] = {
        "threshold": threshold,
        "validation_sensitivity": metrics["sensitivity"],
        "validation_specificity": metrics["specificity"],
    }
    meta["validation_metrics"] = metrics
    write_metadata(out_dir, meta)
    bundle.metadata = meta
    write_figures(out_dir, y_val, probs, metrics, "validation split")
    write_card(out_dir, meta)
    checkpoint.unlink(missing_ok=True)
    log.info(
        "bundle_written",
        uid=meta["uid"],
        val_auc=round(metrics["auc"], 4),
        threshold=round(threshold, 4),
        sensitivity=round(metrics["sensitivity"], 4),
        specificity=round(metrics["specificity"], 4),
    )
    return bundle


def write_figures(
    out_dir: Path, labels: Any, probs: Any, metrics: dict[str, Any], what: str
) -> None:
    """roc.png and confusion.png for one scored set."""
    plot_roc(
        labels,
        probs,
        out_dir / "roc.png",
        metrics["threshold"],
        f"ROC, {what} (n={metrics['n']})",
        metrics["auc"],
        metrics["auc_ci95"],
    )
    plot_confusion(
        metrics["confusion"],
        out_dir / "confusion.png",
        f"{what}, threshold {metrics['threshold']:.3f}",
    )


def remove_stale(out_dir: Path) -> None:
    """Remove a previous bundle's files from ``out_dir`` (only the files a bundle has)."""
    for name in (MODEL_FILE, "model.json", "MODEL_CARD.md", "roc.png", "confusion.png", CHECKPOINT):
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


__all__ = ["Platt", "TrainConfig", "finalize", "remove_stale", "train"]
