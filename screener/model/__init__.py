"""Inference: model bundles (``load_bundle``), preprocessing, metrics and explanations.

TensorFlow is imported only when a bundle is loaded or a model is built.
"""

from __future__ import annotations

from screener.model.bundle import Bundle, load_bundle

__all__ = ["Bundle", "load_bundle"]
