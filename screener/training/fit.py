"""The Keras training loop: batches with augmentation, validation AUC, checkpoint, schedule."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import structlog

from screener.model.bundle import raw_pneumonia
from screener.model.metrics import roc_auc
from screener.model.preprocess import PreprocessParams
from screener.training.augment import AugmentParams, augment_batch
from screener.training.recipe import FitParams

if TYPE_CHECKING:
    import keras

log = structlog.get_logger()


def class_weights(targets: npt.NDArray[np.int64], n_classes: int) -> dict[int, float]:
    """Balanced weights ``n / (k * n_c)`` so each class contributes equally to the loss."""
    counts = np.bincount(targets, minlength=n_classes).astype(np.float64)
    total = counts.sum()
    return {
        c: float(total / (n_classes * counts[c])) if counts[c] else 0.0 for c in range(n_classes)
    }


class Batches:
    """An endless, deterministic stream of augmented, shuffled, class-weighted batches.

    Epoch ``e`` visits the images in ``default_rng([seed, e]).permutation`` order and batch
    ``b`` is augmented with ``default_rng([seed, e, b])``. One sequential Python generator
    feeds Keras (``steps_per_epoch = len(batches)``), so prefetching cannot reorder or
    re-seed anything: a run is reproducible.
    """

    def __init__(
        self,
        images: npt.NDArray[np.uint8],
        targets: npt.NDArray[np.int64],
        weights: dict[int, float],
        params: PreprocessParams,
        aug: AugmentParams,
        batch_size: int,
        seed: int,
        mixup: float = 0.0,
    ) -> None:
        self.images, self.targets = images, targets
        self.sample_weight = np.array([weights[int(t)] for t in targets], dtype=np.float32)
        self.params, self.aug = params, aug
        self.batch_size, self.seed = batch_size, seed
        self.mixup = mixup

    def __len__(self) -> int:
        return int(np.ceil(len(self.images) / self.batch_size))

    def batch(self, epoch: int, index: int) -> tuple[Any, Any, Any]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.images))
        idx = np.sort(order[index * self.batch_size : (index + 1) * self.batch_size])
        rng = np.random.default_rng([self.seed, epoch, index])
        x = augment_batch(self.images[idx], self.params, self.aug, rng)
        y, weight = self.targets[idx].astype(np.float32), self.sample_weight[idx]
        if self.mixup > 0:
            x, y, weight = mix(x, y, weight, self.mixup, rng)
        return x, y, weight

    def stream(self, first_epoch: int = 0) -> Iterator[tuple[Any, Any, Any]]:
        epoch = first_epoch
        while True:
            for index in range(len(self)):
                yield self.batch(epoch, index)
            epoch += 1


def mix(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.float32],
    weight: npt.NDArray[np.float32],
    alpha: float,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Mixup (Zhang et al., ICLR 2018): each image blended with another of its batch, its
    binary target and class weight blended alike. ``lambda ~ Beta(alpha, alpha)`` is folded
    to at least 0.5, so each image stays mostly itself."""
    partner = rng.permutation(len(x))
    lam = rng.beta(alpha, alpha, size=len(x)).astype(np.float32)
    lam = np.maximum(lam, 1.0 - lam)
    shape = (-1,) + (1,) * (x.ndim - 1)
    mixed = lam.reshape(shape) * x + (1.0 - lam.reshape(shape)) * x[partner]
    return (
        mixed.astype(np.float32),
        lam * y + (1.0 - lam) * y[partner],
        lam * weight + (1.0 - lam) * weight[partner],
    )


def validation_callback(
    x_val: npt.NDArray[np.float32], y_val: npt.NDArray[np.int64], task: str
) -> Any:
    """A callback that adds ``val_auc`` (pneumonia vs normal, exact) to each epoch's logs.

    It must come first in the callback list, so checkpointing and early stopping see it.
    """
    import keras

    class ValidationAUC(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.started = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            out = self.model.predict(x_val, batch_size=64, verbose=0)
            auc = roc_auc(y_val, raw_pneumonia(out, task))
            if logs is not None:
                logs["val_auc"] = auc
            log.info(
                "epoch_done",
                epoch=epoch + 1,
                loss=round(float((logs or {}).get("loss", float("nan"))), 4),
                val_auc=round(auc, 4),
                elapsed_s=round(time.monotonic() - self.started, 1),
            )

    return ValidationAUC()


def _compile(model: keras.Model, task: str, lr: Any, fit: FitParams) -> None:
    import keras

    loss = (
        keras.losses.SparseCategoricalCrossentropy()  # integer targets: no smoothing
        if task == "type"
        else keras.losses.BinaryCrossentropy(label_smoothing=fit.label_smoothing)
    )
    optimizer = keras.optimizers.AdamW(
        lr,
        weight_decay=fit.weight_decay,
        use_ema=fit.ema > 0,
        ema_momentum=fit.ema if fit.ema > 0 else 0.99,
    )
    model.compile(optimizer=optimizer, loss=loss)


def _schedule(lr: float, epochs: int, steps: int) -> Any:
    import keras

    warmup = steps if epochs > 1 else 0
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr / 10.0,
        decay_steps=max(1, (epochs * steps) - warmup),
        alpha=0.02,
        warmup_target=lr,
        warmup_steps=warmup,
    )


def _set_trainable_top(model: keras.Model, backbone_name: str, fraction: float) -> int:
    """Unfreeze the top ``fraction`` of the backbone's layers (batch norm stays frozen)."""
    import keras

    backbone = model.get_layer(backbone_name)
    backbone.trainable = True
    layers = backbone.layers
    cut = int(len(layers) * (1.0 - fraction))
    for i, layer in enumerate(layers):
        frozen = i < cut or isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = not frozen
    return len(layers) - cut


def fit_model(
    model: keras.Model,
    batches: Batches,
    x_val: npt.NDArray[np.float32],
    y_val: npt.NDArray[np.int64],
    task: str,
    fit: FitParams,
    checkpoint: Path,
    transfer: bool,
    backbone_name: str,
) -> dict[str, Any]:
    """Train ``model`` in place; keep the weights of the best validation-AUC epoch.

    For a transfer-learning backbone (``transfer``): first ``head_epochs`` with the backbone
    frozen, then the top ``fine_tune_fraction`` of its layers unfrozen at a tenth of the
    learning rate. Returns the history and the best epoch.
    """
    import keras

    verbose = 1 if sys.stdout.isatty() else 2
    steps = len(batches)
    history: dict[str, list[float]] = {}
    phases: list[tuple[str, int, float]] = []
    if transfer:
        head = min(fit.head_epochs, fit.epochs)
        phases.append(("head", head, fit.learning_rate))
        if fit.epochs > head:
            phases.append(("fine_tune", fit.epochs - head, fit.learning_rate / 10.0))
    else:
        phases.append(("full", fit.epochs, fit.learning_rate))

    best = {"auc": -1.0, "epoch": 0}
    done = 0
    for phase, epochs, lr in phases:
        if transfer:
            if phase == "head":
                model.get_layer(backbone_name).trainable = False
            else:
                n = _set_trainable_top(model, backbone_name, fit.fine_tune_fraction)
                log.info("fine_tune_start", unfrozen_layers=n)
        _compile(model, task, _schedule(lr, epochs, steps), fit)
        stopper = keras.callbacks.EarlyStopping(
            monitor="val_auc", mode="max", patience=fit.patience, restore_best_weights=True
        )
        saver = keras.callbacks.ModelCheckpoint(
            checkpoint, monitor="val_auc", mode="max", save_best_only=True
        )
        saver.best = best["auc"] if best["auc"] >= 0 else saver.best
        # With weight averaging the averaged weights are swapped in at each epoch's end, so
        # validation, the checkpoint and early stopping all see them (Keras SwapEMAWeights).
        ema_swap = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if fit.ema > 0 else []
        log.info("phase_start", phase=phase, epochs=epochs, learning_rate=lr, steps=steps)
        result = model.fit(
            batches.stream(first_epoch=done),
            steps_per_epoch=steps,
            epochs=epochs,
            shuffle=False,  # the stream shuffles, deterministically
            callbacks=[*ema_swap, validation_callback(x_val, y_val, task), saver, stopper],
            verbose=verbose,
        )
        aucs = result.history.get("val_auc", [])
        for key, values in result.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        if aucs and max(aucs) > best["auc"]:
            best = {"auc": float(max(aucs)), "epoch": done + int(np.argmax(aucs)) + 1}
        done += len(aucs)
    return {
        "history": history,
        "best_epoch": best["epoch"],
        "best_val_auc": best["auc"],
        "epochs_run": done,
    }
