"""TensorFlow's process set-up: ``worker.device`` and ``worker.inference_threads`` applied
before it is imported (:func:`configure_inference`), and started quietly
(:func:`start_tensorflow`: its start-up notices, absl, oneDNN, cudart, ``failed call to
cuInit`` on a CPU-only host, become one debug event instead of raw lines before a command's
answer, and whether a GPU is used is said once, as the ``tensorflow_ready`` event).
:func:`screener.model.opening.open_model` is how callers use it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from screener.config import WorkerSettings

log = structlog.get_logger(__name__)

_started = False


def start_tensorflow() -> None:
    """Import TensorFlow and find its devices once per process (idempotent).

    ``worker.device`` must have been applied before (:func:`select_device` sets
    ``CUDA_VISIBLE_DEVICES``), as TensorFlow reads it here.
    """
    global _started
    if _started:
        return
    from screener.runtime.logs import native_output_as_event

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # no INFO lines; warnings still come
    with native_output_as_event("tensorflow_startup_output"):
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")  # initialises CUDA (cuInit) if present
    _started = True
    log.info(
        "tensorflow_ready",
        version=tf.__version__,
        gpus=len(gpus),
        device="GPU" if gpus else "CPU only (no GPU visible)",
    )


_configured: tuple[str, int, int, int] | None = None


def configure_inference(settings: WorkerSettings, index: int = 0, processes: int = 1) -> None:
    """``worker.device`` and ``worker.inference_threads``, before TensorFlow is imported;
    once per process (a second call with the same settings does nothing)."""
    global _configured
    key = (settings.device, settings.inference_threads, index, processes)
    if _configured == key:
        return
    select_device(settings.device, index, processes)
    limit_threads(settings.inference_threads)
    _configured = key


def limit_threads(threads: int) -> None:
    """Cap TensorFlow's thread pools at ``threads`` (0 = leave its default: every core).

    Must run before TensorFlow executes its first operation.
    """
    if threads <= 0:
        return
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def select_device(device: str, index: int, processes: int) -> None:
    """Make TensorFlow see the configured device; call before TensorFlow is imported.

    ``cpu`` hides every GPU; ``gpu:N`` shows GPU N only; ``auto`` gives worker *i* GPU *i*
    when several worker processes run (one worker per GPU), and otherwise leaves TensorFlow
    to use a GPU if there is one.
    """
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    elif device.startswith("gpu:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
    elif processes > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
