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
from screener.model.calibration import Platt
from screener.model.preprocess import PreprocessParams, preprocess

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


@dataclass
class Bundle:
    """A loaded model bundle. ``predict`` is the only inference entry point."""

    path: Path
    metadata: dict[str, Any]
    model: keras.Model = field(repr=False)

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
        chunks = []
        for start in range(0, len(images), PREDICT_BATCH):
            x = preprocess(images[start : start + PREDICT_BATCH], self.preprocessing)
            chunks.append(np.asarray(self.model(x, training=False)))
        return raw_pneumonia(np.concatenate(chunks), self.task)

    def predict(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        """Calibrated P(pneumonia), shape ``(N,)``, for a ``(N, 224, 224)`` uint8 batch."""
        return self.calibration.apply(self.predict_raw(images))

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


def load_bundle(path: str | Path) -> Bundle:
    """Load a bundle folder; raises :class:`ModelError` if it is missing or malformed."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(f"model bundle folder {str(folder)!r} does not exist")
    metadata = read_metadata(folder)
    model_path = folder / MODEL_FILE
    if not model_path.is_file():
        raise ModelError(f"model bundle {str(folder)!r} has no {MODEL_FILE}")
    import keras

    try:
        model = keras.models.load_model(model_path, compile=False)
    except Exception as exc:  # Keras raises many types for a corrupt file: boundary.
        raise ModelError(f"cannot load {str(model_path)!r}: {exc}") from exc
    log.info(
        "bundle_loaded", name=metadata["name"], version=metadata["version"], uid=metadata["uid"]
    )
    return Bundle(path=folder, metadata=metadata, model=model)
