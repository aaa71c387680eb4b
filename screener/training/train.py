"""``screener train`` end to end: data -> split -> fit -> calibrate -> threshold -> bundle."""

from __future__ import annotations

import datetime as dt
import json
import platform
import shutil
import time
from collections.abc import Sequence
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
from screener.model.runtime import start_tensorflow
from screener.training import data
from screener.training.augment import AugmentParams
from screener.training.card import write_card
from screener.training.fit import Batches, class_weights, fit_model
from screener.training.recipe import TrainConfig, select_samples, weights_argument

log = structlog.get_logger()

CHECKPOINT = "checkpoint.keras"
#: Finished ensemble members (and their training records), kept so a run can resume.
MEMBERS_DIR = "members"


def train(cfg: TrainConfig) -> Bundle:
    """Run a full training and write the bundle to ``cfg.out_dir``; returns it loaded."""
    start_tensorflow()
    import keras
    import tensorflow as tf

    started = time.monotonic()
    tf.config.experimental.enable_op_determinism()
    weights = weights_argument(cfg.weights)
    pre = PreprocessParams(
        input_size=cfg.input_size, normalisation=cfg.normalisation, crop=cfg.crop
    )
    aug = AugmentParams()
    if cfg.members < 1:
        raise ModelError(f"--members {cfg.members} must be at least 1")

    samples = select_samples(cfg)
    for folder in cfg.with_members:  # refuse a mismatch before hours of training
        borrowed_members(folder, cfg)
    train_s, val_s = data.split_by_patient(samples, cfg.val_fraction, cfg.data_split_seed)
    split = data.split_description(train_s, val_s, cfg.val_fraction, cfg.data_split_seed)
    log.info("split_done", **{k: v for k, v in split.items() if k in ("train", "validation")})
    if not val_s or len({s.label for s in val_s}) < 2:
        raise ModelError("the validation split needs both classes; use more data or --val-fraction")

    x_train = data.load_images(cfg.data_dir, train_s)
    x_val_raw = data.load_images(cfg.data_dir, val_s)
    targets = np.array([s.kind for s in train_s], dtype=np.int64)
    y_val = np.array([s.label for s in val_s], dtype=np.int64)
    n_classes = architectures.n_outputs(cfg.task) if cfg.task == "type" else 2
    cw = class_weights(targets, n_classes)

    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    x_val = preprocess(x_val_raw, pre)
    results = []
    for index in range(cfg.members):
        seed = cfg.seed + index
        keras.utils.set_random_seed(seed)
        batches = Batches(x_train, targets, cw, pre, aug, cfg.fit.batch_size, seed, cfg.fit.mixup)
        results.append(train_member(cfg, index, seed, weights, batches, x_val, y_val))
    borrowed = [m for folder in cfg.with_members for m in borrowed_members(folder, cfg)]
    model = load_members(cfg.out_dir, cfg.members, cfg.task, [path for path, _ in borrowed])
    result = ensemble_result(results + [record for _, record in borrowed])
    train_seconds = time.monotonic() - started
    log.info("training_done", seconds=round(train_seconds), members=cfg.members)

    meta = base_metadata(cfg, pre, aug, samples, split, cw, result, train_seconds, model)
    shift_platt = None
    if cfg.probe_dir is not None:
        from screener.training.shift import model_selection, probe_record, shift_calibration

        shift_platt = shift_calibration(cfg.probe_dir)
        meta["shift_proxy"] = probe_record(cfg.probe_dir, shift_platt)
        meta["model_selection"] = model_selection(  # the probe's members in the same order
            cfg.probe_dir, cfg.members + len(borrowed), cfg.target_sensitivity
        )
    bundle = finalize(
        cfg.out_dir, model, meta, x_val_raw, y_val, cfg.target_sensitivity, shift_platt
    )
    from screener.training.guard import fit_bundle_guard

    y_train = np.array([s.label for s in train_s], dtype=np.int64)
    fit_bundle_guard(bundle, x_train, y_train, x_val_raw)
    write_card(cfg.out_dir, bundle.metadata)
    if cfg.exclude_family:
        from screener.training.shift import score_unseen_family

        score_unseen_family(bundle, cfg, x_val_raw, y_val)
    return bundle


def member_path(out_dir: Path, index: int) -> Path:
    return out_dir / MEMBERS_DIR / f"member{index}.keras"


def train_member(
    cfg: TrainConfig,
    index: int,
    seed: int,
    weights: str | None,
    batches: Batches,
    x_val: npt.NDArray[np.float32],
    y_val: npt.NDArray[np.int64],
) -> dict[str, Any]:
    """Train ensemble member ``index`` (or find it done: a rerun resumes after the last
    finished member) and return its training record."""
    import keras

    done_model, done_record = (
        member_path(cfg.out_dir, index),
        member_path(cfg.out_dir, index).with_suffix(".json"),
    )
    if done_model.is_file() and done_record.is_file():
        record: dict[str, Any] = json.loads(done_record.read_text())
        if record.get("seed") == seed and record.get("recipe") == recipe(cfg):
            log.info("member_already_trained", member=index, seed=seed)
            return record
    started = time.monotonic()
    model = architectures.build_model(
        cfg.backbone, cfg.input_size, cfg.task, weights, width=cfg.width
    )
    log.info("member_start", member=index, seed=seed, parameters=int(model.count_params()))
    done_model.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = done_model.with_suffix(".checkpoint.keras")
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
    best = keras.models.load_model(checkpoint, compile=False)
    best.save(done_model)  # without optimiser state
    checkpoint.unlink(missing_ok=True)
    record = {
        **result,
        "seed": seed,
        "recipe": recipe(cfg),
        "seconds": round(time.monotonic() - started, 1),
    }
    done_record.write_text(json.dumps(record, indent=1) + "\n")
    log.info(
        "member_done", member=index, best_epoch=result["best_epoch"], seconds=record["seconds"]
    )
    return record


#: What members joined from another run must share with this run: the data, the split,
#: the input and the task (the optimisation, augmentation and width may differ).
SHARED_RECIPE = (
    "backbone",
    "weights",
    "task",
    "input_size",
    "normalisation",
    "crop",
    "val_fraction",
    "data_dir",
    "split_seed",
    "limit",
    "exclude_family",
)


def recipe(cfg: TrainConfig) -> dict[str, Any]:
    """What a finished member must share with the run that wants to reuse it: the
    :data:`SHARED_RECIPE`, the optimisation and the width."""
    shared = {
        **{k: getattr(cfg, k) for k in SHARED_RECIPE[:7]},
        "data_dir": str(cfg.data_dir),
        "split_seed": cfg.data_split_seed,
        "limit": cfg.limit,
        "exclude_family": cfg.exclude_family,
    }
    assert tuple(shared) == SHARED_RECIPE
    return {
        **shared,
        "fit": cfg.fit.recorded(),
        # recorded only when not the default, so members trained before --width still match
        **({"width": cfg.width} if cfg.width != 32 else {}),
    }


def load_members(out_dir: Path, count: int, task: str, extra: Sequence[Path] = ()) -> Any:
    """The trained members (this run's, then ``extra`` member files) as one network (a
    single member is returned as it is)."""
    import keras

    paths = [member_path(out_dir, i) for i in range(count)] + list(extra)
    members = [keras.models.load_model(path, compile=False) for path in paths]
    return architectures.build_ensemble(members, task)


def borrowed_members(folder: Path, cfg: TrainConfig) -> list[tuple[Path, dict[str, Any]]]:
    """The finished members of another run (``--with-members``), each with its training
    record marked with where it came from and how its recipe differs from this run's.

    Refused unless every member was trained on the same data, split, input and task.
    """
    mine = recipe(cfg)
    found: list[tuple[Path, dict[str, Any]]] = []
    index = 0
    while member_path(folder, index).is_file():
        path = member_path(folder, index)
        record_path = path.with_suffix(".json")
        if not record_path.is_file():
            break
        record: dict[str, Any] = json.loads(record_path.read_text())
        theirs = record.get("recipe") or {}
        differs = [k for k in SHARED_RECIPE if theirs.get(k) != mine.get(k)]
        if cfg.limit and record.get("seed") != cfg.seed:  # --limit samples by the seed
            differs.append("seed")
            theirs, mine = {**theirs, "seed": record.get("seed")}, {**mine, "seed": cfg.seed}
        if differs:
            raise ModelError(
                f"--with-members {folder}: member {index} differs from this run in "
                + ", ".join(f"{k} ({theirs.get(k)!r} vs {mine.get(k)!r})" for k in differs)
            )
        found.append((path, {**record, "from": str(folder), "variant": variant(theirs, mine)}))
        index += 1
    if not found:
        raise ModelError(
            f"--with-members {folder}: no finished members under {folder / MEMBERS_DIR}"
        )
    return found


def joined_run(folder: Path) -> dict[str, Any]:
    """What model.json records of a run whose members joined: its folder and, where it
    finished as a bundle, its name, UID and the command that reproduces it."""
    from screener.model.bundle import read_metadata
    from screener.training.card import reproduce_command

    out: dict[str, Any] = {"folder": folder.name}
    if (folder / "model.json").is_file():
        meta = read_metadata(folder)
        out.update(name=meta["name"], uid=meta["uid"], reproduce=reproduce_command(meta))
    return out


def variant(theirs: dict[str, Any], mine: dict[str, Any]) -> str:
    """How a joined member's recipe differs from this run's, in words (``""``: it does not)."""
    parts = []
    fit_theirs, fit_mine = theirs.get("fit") or {}, mine.get("fit") or {}
    for key in sorted(set(fit_theirs) | set(fit_mine)):
        if fit_theirs.get(key) != fit_mine.get(key):
            parts.append(f"{key.replace('_', ' ')} {fit_theirs.get(key, 0)}")
    if theirs.get("width", 32) != mine.get("width", 32):
        parts.append(f"width {theirs.get('width', 32)}")
    return ", ".join(parts)


def ensemble_result(results: list[dict[str, Any]]) -> dict[str, Any]:
    """What model.json records of the members' training (the first member's history)."""
    first = results[0]
    return {
        "history": first["history"],
        "best_epoch": first["best_epoch"],
        "best_val_auc": first["best_val_auc"],
        "epochs_run": first["epochs_run"],
        "members": [
            {
                **{
                    k: r[k] for k in ("seed", "best_epoch", "best_val_auc", "epochs_run", "seconds")
                },
                **{k: r[k] for k in ("from", "variant") if k in r},
            }
            for r in results
        ],
    }


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
        **({"width": cfg.width} if cfg.backbone == "small_cnn" else {}),
        "parameters": int(model.count_params()),
        "initialisation": {
            "weights": cfg.weights,
            "note": _init_note(cfg.weights),
        },
        "input_size": cfg.input_size,
        "preprocessing": pre.to_json(),
        "population": {
            "age_years": list(cfg.population_age),
            "views": ["AP", "PA"],
            "description": "chest radiographs of children aged "
            f"{cfg.population_age[0]}-{cfg.population_age[1]} years (frontal views)",
            "source": "the training data's own description (Kermany et al., Cell 2018: "
            "pediatric patients one to five years old, anterior-posterior chest films)",
        },
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
                **cfg.fit.recorded(),
                "schedule": "1 epoch linear warm-up from lr/10, then cosine decay to 2%",
                "early_stopping": "on validation AUC",
                "checkpoint": "best validation AUC",
            },
            "seed": cfg.seed,
            "best_epoch": result["best_epoch"],
            "epochs_run": result["epochs_run"],
            "best_val_auc_uncalibrated": result["best_val_auc"],
            "members": result["members"],
            **(
                {"with_members": [joined_run(f) for f in cfg.with_members]}
                if cfg.with_members
                else {}
            ),
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
    model: Any,
    meta: dict[str, Any],
    x_val_raw: npt.NDArray[np.uint8],
    y_val: npt.NDArray[np.int64],
    target: float,
    calibration: Platt | None = None,
) -> Bundle:
    """Calibrate and pick the threshold on validation, write the bundle, card and figures.

    The reported metrics come from the bundle as written and reloaded, through the same
    ``Bundle.predict`` that `screener evaluate` and the daemon use.
    """
    model.save(out_dir / MODEL_FILE)  # without optimiser state: serving needs none
    provisional = Bundle(path=out_dir, metadata={**meta, "threshold": 0.5}, model=model)
    raw = provisional.predict_raw(x_val_raw)
    platt = calibration or fit_platt(y_val, raw)
    fitted_on = (
        "probe set (unseen family normals + validation pneumonias)"
        if calibration
        else "validation split"
    )
    calibrated = platt.apply(raw)
    threshold, rule = threshold_for_sensitivity(y_val, calibrated, target)
    meta.update(
        calibration={
            **platt.to_json(),
            "fitted_on": fitted_on,
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
