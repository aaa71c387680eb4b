"""A model bundle: a folder with ``model.keras`` and ``model.json`` (and the model card).

``load_bundle(path)`` is the daemon's whole view of a model: ``Bundle.predict`` takes a
``uint8`` batch of canonical images and returns calibrated P(pneumonia). Preprocessing,
calibration and the operating threshold all come from ``model.json``, written by
``screener train``, so serving repeats exactly what training and validation did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import structlog

from screener.errors import ModelError
from screener.model.calibration import Platt, sigmoid
from screener.model.domain import DomainGuard
from screener.model.engine import Engine, Forward, Outputs, member_outputs
from screener.model.engine import forward as engine_forward
from screener.model.engine import outputs as engine_outputs
from screener.model.preprocess import PreprocessParams, preprocess
from screener.model.runtime import start_tensorflow

if TYPE_CHECKING:
    import keras

log = structlog.get_logger()

MODEL_FILE = "model.keras"
META_FILE = "model.json"
CARD_FILE = "MODEL_CARD.md"
BUNDLE_FORMAT = "screener-bundle/1"
#: Images per forward pass: bounds memory; any value gives the same results.
PREDICT_BATCH = 32


def raw_pneumonia(outputs: npt.NDArray[Any], task: str) -> npt.NDArray[np.float64]:
    """Uncalibrated P(pneumonia) from the network output (sigmoid, or 1 - P(normal))."""
    out = np.asarray(outputs, dtype=np.float64)
    if task == "type":
        result: npt.NDArray[np.float64] = 1.0 - out[:, 0]
        return result
    return out.reshape(len(out), -1)[:, 0]


@dataclass(frozen=True)
class Assessment:
    """A batch's calibrated P(pneumonia) and, where the bundle has a domain guard, each
    film's distance score and whether it lies within the training domain."""

    probabilities: npt.NDArray[np.float64]
    domain_scores: npt.NDArray[np.float64] | None = None
    domain_threshold: float | None = None

    def in_domain(self, index: int) -> bool:
        if self.domain_scores is None or self.domain_threshold is None:
            return True
        return bool(self.domain_scores[index] <= self.domain_threshold)


@dataclass
class Bundle:
    """A loaded model bundle. ``predict`` and ``assess`` are the inference entry points."""

    path: Path
    metadata: dict[str, Any]
    model: keras.Model = field(repr=False)
    guard: DomainGuard | None = field(default=None, repr=False)
    #: how the Keras model is run (:mod:`screener.model.engine`); same scores either way
    engine: Engine = "graph"
    _forward: Forward | None = field(default=None, repr=False)
    _forward_layers: tuple[str, ...] = field(default=(), repr=False)
    _outputs: Outputs | None = field(default=None, repr=False)
    _member_outputs: Outputs | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def uid(self) -> str:
        return str(self.metadata["uid"])

    @property
    def threshold(self) -> float:
        return float(self.metadata["threshold"])

    @property
    def input_size(self) -> int:
        return int(self.metadata["input_size"])

    @property
    def task(self) -> str:
        return str(self.metadata.get("task", "binary"))

    @property
    def preprocessing(self) -> PreprocessParams:
        return PreprocessParams.from_json(self.metadata["preprocessing"])

    @property
    def calibration(self) -> Platt:
        return Platt.from_json(self.metadata.get("calibration"))

    def network_input(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """The preprocessed float batch the network sees (used by Grad-CAM too)."""
        return preprocess(self._check(images), self.preprocessing)

    def predict_raw(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        """Uncalibrated P(pneumonia) for a ``(N, 224, 224)`` uint8 batch."""
        images = self._check(images)
        if len(images) == 0:
            return np.zeros(0, dtype=np.float64)
        if self._outputs is None:
            self._outputs = engine_outputs(self.model, self.engine)
        chunks = []
        for start in range(0, len(images), PREDICT_BATCH):
            x = preprocess(images[start : start + PREDICT_BATCH], self.preprocessing)
            chunks.append(self._outputs(x))
        return raw_pneumonia(np.concatenate(chunks), self.task)

    def member_logits(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        """Each member's pneumonia logit, shape ``(members, N)`` (binary task)."""
        from screener.model.architectures import members_of

        images = self._check(images)
        if self._member_outputs is None:
            self._member_outputs = member_outputs(members_of(self.model), self.engine)
        chunks = []
        for start in range(0, len(images), PREDICT_BATCH):
            x = preprocess(images[start : start + PREDICT_BATCH], self.preprocessing)
            z = self._member_outputs(x)
            chunks.append(z.reshape(z.shape[0], len(x), -1)[:, :, 0])
        if not chunks:
            return np.zeros((len(members_of(self.model)), 0), dtype=np.float64)
        return np.concatenate(chunks, axis=1)

    def predict(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        """Calibrated P(pneumonia), shape ``(N,)``, for a ``(N, 224, 224)`` uint8 batch."""
        return self.calibration.apply(self.predict_raw(images))

    def assess(self, images: npt.NDArray[np.uint8]) -> Assessment:
        """Calibrated P(pneumonia) and the domain guard's scores, in one pass per member.

        Without a guard this is :meth:`predict`. With one, each member runs once with its
        logit and the guard's feature maps as outputs; the probabilities equal ``predict``'s.
        """
        if self.guard is None:
            return Assessment(self.predict(images))
        z, features = self.forward(images)
        raw = raw_pneumonia(_activation(z, self.task), self.task)
        return Assessment(
            self.calibration.apply(raw), self.guard.score(features), self.guard.threshold
        )

    def forward(
        self, images: npt.NDArray[np.uint8], layers: tuple[str, ...] | None = None
    ) -> tuple[npt.NDArray[np.float64], list[npt.NDArray[np.float64]]]:
        """The ensemble's mean logits and each (member, stage)'s pooled features (the
        guard's layers, or ``layers`` when fitting one)."""
        from screener.model.architectures import members_of
        from screener.model.domain import SMALL_CNN_LAYERS, feature_model

        images = self._check(images)
        if layers is None:
            layers = self.guard.layers if self.guard is not None else SMALL_CNN_LAYERS
        if self._forward is None or self._forward_layers != layers:
            feature_models = [feature_model(m, layers) for m in members_of(self.model)]
            self._forward = engine_forward(feature_models, self.engine)
            self._forward_layers = layers
        logits: list[npt.NDArray[np.float64]] = []
        features: list[list[npt.NDArray[np.float64]]] = []
        for start in range(0, len(images), PREDICT_BATCH):
            x = preprocess(images[start : start + PREDICT_BATCH], self.preprocessing)
            batch_logits, batch_features = self._forward(x)
            logits.append(batch_logits)
            features.append(batch_features)
        if not logits:
            return np.zeros((0, 1)), []
        return np.concatenate(logits), [
            np.concatenate(parts) for parts in zip(*features, strict=True)
        ]

    def label(self, probability: float) -> str:
        return "pneumonia" if probability >= self.threshold else "normal"

    @staticmethod
    def _check(images: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
        arr = np.asarray(images)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.dtype != np.uint8 or arr.ndim != 3:
            raise ModelError(
                f"predict expects a (N, 224, 224) uint8 batch of canonical images, "
                f"got {arr.dtype} {arr.shape}"
            )
        return arr


def _activation(z: npt.NDArray[np.float64], task: str) -> npt.NDArray[np.float64]:
    """The network's final activation on averaged logits (sigmoid, or softmax for type)."""
    if task == "type":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        out: npt.NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
        return out
    return sigmoid(z)


def read_metadata(path: str | Path) -> dict[str, Any]:
    meta_path = Path(path) / META_FILE
    try:
        data: dict[str, Any] = json.loads(meta_path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"model bundle {str(path)!r} has no {META_FILE}") from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"{str(meta_path)!r} is not valid JSON: {exc}") from exc
    missing = {"name", "version", "uid", "threshold", "input_size", "preprocessing"} - set(data)
    if missing:
        raise ModelError(f"{str(meta_path)!r} lacks required keys {sorted(missing)}")
    return data


def write_metadata(path: str | Path, metadata: dict[str, Any]) -> None:
    text = json.dumps(metadata, indent=2, sort_keys=False, default=_json_default)
    (Path(path) / META_FILE).write_text(text + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def load_bundle(path: str | Path, *, with_guard: bool = True, engine: Engine = "graph") -> Bundle:
    """Load a bundle folder; raises :class:`ModelError` if it is missing or malformed.

    ``with_guard=False`` leaves the domain guard out (``screener guard`` refits it);
    ``engine``: how the model runs (``model.engine``; :mod:`screener.model.engine`).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(f"model bundle folder {str(folder)!r} does not exist")
    metadata = read_metadata(folder)
    model_path = folder / MODEL_FILE
    if not model_path.is_file():
        raise ModelError(f"model bundle {str(folder)!r} has no {MODEL_FILE}")
    start_tensorflow()
    import keras

    try:
        model = keras.models.load_model(model_path, compile=False)
    except Exception as exc:  # Keras raises many types for a corrupt file: boundary.
        raise ModelError(f"cannot load {str(model_path)!r}: {exc}") from exc
    guard = DomainGuard.load(folder) if with_guard and metadata.get("domain_guard") else None
    log.info(
        "bundle_loaded",
        name=metadata["name"],
        version=metadata["version"],
        uid=metadata["uid"],
        domain_guard=guard is not None,
        engine=engine,
    )
    return Bundle(path=folder, metadata=metadata, model=model, guard=guard, engine=engine)
