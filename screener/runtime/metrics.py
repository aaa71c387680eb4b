"""The metrics instruments this host's processes write: instances received and refused, batch
sizes, batch, decode and inference seconds, queue-to-result latency (prometheus_client
counters and histograms). The worker processes are separate processes, so prometheus_client
runs in its multiprocess mode: :func:`prepare` gives the daemon a private folder in
``PROMETHEUS_MULTIPROC_DIR`` before anything imports prometheus_client, the spawned workers
inherit it, and a scrape adds up every process's files. What serves them, with the database's
figures, is :mod:`screener.serve.health`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Set in a process that records metrics: the daemon's (prepare / enable_in_process) and,
#: through the environment, its worker processes.
_ENABLED_ENV = "SCREENER_METRICS_ACTIVE"

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def prepare() -> str | None:
    """Make this process (and the workers it spawns) record metrics in multiprocess mode.

    Must run before prometheus_client is imported here; returns the folder (removed by
    :func:`cleanup`), or None when the mode was already set from outside.
    """
    os.environ[_ENABLED_ENV] = "1"
    if os.environ.get(MULTIPROC_ENV):
        return None
    folder = tempfile.mkdtemp(prefix="screener-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    return folder


def cleanup(folder: str | None) -> None:
    os.environ.pop(_ENABLED_ENV, None)
    if folder is not None:
        if os.environ.get(MULTIPROC_ENV) == folder:
            del os.environ[MULTIPROC_ENV]
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Instruments:
    received: Any
    refused: Any
    batch_size: Any
    batch_seconds: Any
    decode_seconds: Any
    inference_seconds: Any
    latency_seconds: Any
    commit_group: Any


_instruments: Instruments | None = None
_lock = threading.Lock()


def multiprocess_mode() -> bool:
    """Whether prometheus_client runs in its multiprocess mode (set up by :func:`prepare`)."""
    from prometheus_client import values

    return values.ValueClass is not values.MutexValue


def instruments() -> Instruments | None:
    """This process's instruments, or None when metrics are off (nothing is recorded)."""
    global _instruments
    if _instruments is not None or not os.environ.get(_ENABLED_ENV):
        return _instruments
    with _lock:
        if _instruments is None:
            from prometheus_client import REGISTRY, Counter, Histogram

            # In multiprocess mode values live in files; the scrape reads them, not a registry.
            registry = None if multiprocess_mode() else REGISTRY
            _instruments = Instruments(
                received=Counter(
                    "screener_instances_received",
                    "Instances taken in, by source (dicom, folder) and outcome "
                    "(queued, skipped, duplicate, replaced)",
                    ["source", "outcome"],
                    registry=registry,
                ),
                commit_group=Histogram(
                    "screener_ingest_commit_group",
                    "Instances recorded per ingest transaction (group commit across associations)",
                    buckets=(1, 2, 4, 8, 16, 32, 64),
                    registry=registry,
                ),
                refused=Counter(
                    "screener_instances_refused",
                    "C-STOREs and associations refused, by reason",
                    ["reason"],
                    registry=registry,
                ),
                batch_size=Histogram(
                    "screener_batch_size",
                    "Jobs per worker batch",
                    buckets=BATCH_BUCKETS,
                    registry=registry,
                ),
                batch_seconds=Histogram(
                    "screener_batch_seconds",
                    "Seconds to score one batch (decode wait + model)",
                    buckets=SECONDS_BUCKETS,
                    registry=registry,
                ),
                decode_seconds=Histogram(
                    "screener_decode_wait_seconds",
                    "Seconds a batch waited for its decoded images (decoding overlaps the "
                    "previous batch's inference; only the wait shows)",
                    buckets=SECONDS_BUCKETS,
                    registry=registry,
                ),
                inference_seconds=Histogram(
                    "screener_inference_seconds",
                    "Seconds of model inference per batch",
                    buckets=SECONDS_BUCKETS,
                    registry=registry,
                ),
                latency_seconds=Histogram(
                    "screener_job_latency_seconds",
                    "Seconds from queued to result recorded",
                    buckets=SECONDS_BUCKETS,
                    registry=registry,
                ),
            )
    return _instruments


def enable_in_process() -> None:
    """Record metrics in this process only (a daemon whose worker runs as a thread)."""
    os.environ[_ENABLED_ENV] = "1"
