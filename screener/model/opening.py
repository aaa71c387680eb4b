"""Opening a model for inference, the one way every caller does it: the worker, the web's
model process, ``predict``, ``evaluate``, ``reference``, ``guard``, ``show`` and
``families``."""

from __future__ import annotations

from pathlib import Path

from screener.config import Settings
from screener.model.bundle import Bundle, load_bundle
from screener.model.engine import named
from screener.model.runtime import configure_inference


def open_model(
    settings: Settings,
    path: str | Path | None = None,
    *,
    with_guard: bool = True,
    index: int = 0,
    processes: int = 1,
) -> Bundle:
    """The model bundle at ``path`` (default: ``model.bundle``) ready for inference:
    ``worker.device`` and ``worker.inference_threads`` applied for worker ``index`` of
    ``processes`` (:func:`~screener.model.runtime.configure_inference`: so call this before
    anything imports TensorFlow), the bundle loaded with the configured ``model.engine`` and,
    unless ``with_guard=False`` (``screener guard`` refits it), its domain guard. Raises
    :class:`screener.errors.ModelError` for a missing or bad bundle."""
    configure_inference(settings.worker, index, processes)
    return load_bundle(
        path or settings.model.bundle, with_guard=with_guard, engine=named(settings.model.engine)
    )


__all__ = ["open_model"]
