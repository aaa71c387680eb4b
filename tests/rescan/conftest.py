"""Fixtures of the rescan tests; they live in rescan_support.py, a uniquely named module."""

from __future__ import annotations

from rescan.rescan_support import (  # noqa: F401
    dcmqrscp,
    model_bundle,
    orthanc,
    recent_copies,
    siim_films,
    store,
)
