"""Decode cost per transfer syntax: pydicom's full decode against the screener pipeline.

Run as ``.venv/bin/python benchmarks/bench_decode.py``. For each WG04 file (and one SIIM
JPEG Baseline film) it prints, as the median of a few repeats on one core:

* ``pydicom``: ``dcmread(...).pixel_array``, the full decode alone;
* ``fast`` / ``full``: ``load_dicom`` to the canonical image with and without reduced-
  resolution decoding (both include parsing, the value pipeline and the resize);
* ``MAD``: mean absolute difference of the two canonical images, in grey levels;
* ``dP``: the difference of the model's probability between them, when the bundle at
  ``models/screener-default`` loads.

Data come from ``$SCREENER_DATA`` or ``<repo>/../shared/data``.
"""

from __future__ import annotations

import functools
import importlib
import io
import logging
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import structlog

from screener.errors import ImageError, ScreenerError
from screener.imaging import load_dicom

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "models" / "screener-default"
REPEATS = 3


def data_root() -> Path:
    """$SCREENER_DATA, else the shared data folder beside the repository."""
    return Path(os.environ.get("SCREENER_DATA") or REPO.parent / "shared" / "data")


def median_ms(action: Callable[[], object]) -> float:
    """Median wall time of ``action`` over :data:`REPEATS` runs, after one warm-up."""
    action()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def pydicom_decode(data: bytes) -> object:
    """pydicom's full decode of a DICOM file's pixel data."""
    return pydicom.dcmread(io.BytesIO(data)).pixel_array


def load_model() -> tuple[Any | None, str]:
    """The bundle's model if it loads, else ``None`` and why the probability column is empty."""
    if not BUNDLE.is_dir():
        return None, f"the probability column needs the bundle at {BUNDLE} (absent)"
    load_bundle = getattr(importlib.import_module("screener.model"), "load_bundle", None)
    if load_bundle is None:
        return None, "the probability column needs screener.model.load_bundle"
    try:
        return load_bundle(BUNDLE), ""
    except ScreenerError as exc:
        return None, f"the probability column needs the bundle: {exc}"


def files(root: Path) -> list[Path]:
    """The WG04 files, then the first SIIM film for the JPEG Baseline path."""
    wg04 = sorted((root / "dicom" / "wg04_nonchest").glob("*.dcm"))
    siim = sorted((root / "dicom" / "siim_chest_cr").glob("*.dcm"))[:1]
    return wg04 + siim


def main() -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    warnings.simplefilter("ignore")
    root = data_root()
    paths = files(root)
    if not paths:
        print(f"no DICOM data found under {root / 'dicom'} (set SCREENER_DATA)")
        return 1
    model, why_not = load_model()
    header = (
        f"{'file':<16} {'transfer syntax':<44} {'pydicom ms':>10} {'fast ms':>8} "
        f"{'full ms':>8} {'MAD':>6} {'dP':>8}"
    )
    print(header)
    print("-" * len(header))
    for path in paths:
        data = path.read_bytes()
        ds = pydicom.dcmread(io.BytesIO(data))
        syntax = ds.file_meta.TransferSyntaxUID.name
        name = path.name if path.parent.name == "wg04_nonchest" else "SIIM " + path.name[-10:]
        try:
            fast_image = load_dicom(data, fast=True)[0]
            full_image = load_dicom(data, fast=False)[0]
        except ImageError as exc:
            print(f"{name:<16} {syntax[:44]:<44} refused: {exc.reason}")
            continue
        pydicom_ms = median_ms(functools.partial(pydicom_decode, data))
        fast_ms = median_ms(functools.partial(load_dicom, data, fast=True))
        full_ms = median_ms(functools.partial(load_dicom, data, fast=False))
        mad = float(np.abs(fast_image.astype(np.int16) - full_image).mean())
        dp = "n/a"
        if model is not None:
            probabilities = model.predict(np.stack([fast_image, full_image]))
            dp = f"{abs(float(probabilities[0]) - float(probabilities[1])):.4f}"
        print(
            f"{name:<16} {syntax[:44]:<44} {pydicom_ms:>10.1f} {fast_ms:>8.1f} "
            f"{full_ms:>8.1f} {mad:>6.3f} {dp:>8}"
        )
    if why_not:
        print(f"\n({why_not})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
