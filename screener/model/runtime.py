"""Starting TensorFlow quietly: its start-up notices (absl, oneDNN, cudart, ``failed call to
cuInit`` on a CPU-only host) become one debug event instead of raw lines before a command's
answer, and whether a GPU is used is said once, as the ``tensorflow_ready`` event."""

from __future__ import annotations

import os

import structlog

log = structlog.get_logger(__name__)

_started = False


def start_tensorflow() -> None:
    """Import TensorFlow and find its devices once per process (idempotent).

    ``worker.device`` must have been applied before (``screener.scoring.select_device`` sets
    ``CUDA_VISIBLE_DEVICES``), as TensorFlow reads it here.
    """
    global _started
    if _started:
        return
    from screener.logs import native_output_as_event

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
