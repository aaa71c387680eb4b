"""Reduced-resolution decoding: same stored values as pydicom, smaller frames, near-equal images."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import structlog.testing
from openjpeg.utils import encode_array
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

from screener.imaging import load_dicom
from screener.imaging.decode import (
    decode_j2k,
    iter_frames,
    j2k_decomposition_levels,
    j2k_image_size,
    reduction_log2,
)
from screener.imaging.dicom import pixel_header

Encapsulated = Callable[..., Dataset]

#: Canonical size used with 512 px test images: a reduced decode must keep >= 128 px.
SMALL = 64


def smooth(side: int, bits: int, phase: float = 0.0) -> npt.NDArray[np.float64]:
    """A smooth test pattern filling most of ``bits`` bits, like a radiograph's low frequencies."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    half = (1 << (bits - 1)) - 1
    pattern = np.sin(x / 37.0 + phase) * np.cos(y / 53.0) * 0.8 + (x + y) / (4.0 * side)
    image: npt.NDArray[np.float64] = half + half * np.clip(pattern, -1, 1) * 0.9
    return image


def j2k_dataset(
    make_encapsulated: Encapsulated, frames: list[npt.NDArray[Any]], **kw: Any
) -> Dataset:
    """A JPEG 2000 Lossless data set of the given 12-bit frames."""
    codestreams = [encode_array(frame, bits_stored=12) for frame in frames]
    side = frames[0].shape[0]
    return make_encapsulated(codestreams, JPEG2000Lossless, side, side, 12, **kw)


@pytest.mark.parametrize(
    ("side", "target", "max_log2", "expected"),
    [(1760, 448, 5, 1), (2140, 448, 5, 2), (1024, 448, 3, 1), (4096, 448, 3, 3), (500, 448, 5, 0)],
)
def test_reduction_log2(side: int, target: int, max_log2: int, expected: int) -> None:
    """The reduction is the largest power of two that keeps at least ``target`` pixels."""
    assert reduction_log2(side, target, max_log2) == expected


def test_j2k_header_is_read() -> None:
    """SIZ gives rows and columns; COD of an OpenJPEG codestream (6 resolutions) gives 5 levels."""
    codestream = encode_array(np.zeros((96, 128), np.uint16), bits_stored=12)
    assert j2k_image_size(codestream) == (96, 128)
    assert j2k_decomposition_levels(codestream) == 5
    not_j2k = b"\xff\xd8\xff\xe0" + bytes(40)
    assert j2k_image_size(not_j2k) is None and j2k_decomposition_levels(not_j2k) is None


def test_j2k_larger_than_its_header_is_not_decoded(make_encapsulated: Encapsulated) -> None:
    """A codestream bigger than Rows x Columns is not handed to the reduced decoder."""
    codestream = encode_array(smooth(512, 12).astype(np.uint16), bits_stored=12)
    ds = make_encapsulated([codestream], JPEG2000Lossless, 256, 256, 12)
    assert decode_j2k(codestream, 1, pixel_header(ds)) is None


@pytest.mark.parametrize(
    ("dtype", "bits", "representation"),
    [
        (np.uint16, 12, 0),
        (np.int16, 12, 1),
        (np.uint16, 16, 0),
        (np.int16, 16, 1),
        (np.uint8, 8, 0),
        (np.uint16, 12, 1),  # unsigned codestream in a signed data set
        (np.int16, 12, 0),  # signed codestream in an unsigned data set
    ],
)
def test_j2k_values_match_pydicom(
    make_encapsulated: Encapsulated, dtype: Any, bits: int, representation: int
) -> None:
    """At full resolution the Pillow path returns exactly pydicom's stored values and dtype."""
    signed = np.iinfo(dtype).min < 0
    lo = -(1 << (bits - 1)) if signed else 0
    hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    pixels = np.random.default_rng(7).integers(lo, hi + 1, size=(96, 80)).astype(dtype)
    pixels[0, :2] = (lo, hi)
    codestream = encode_array(pixels, bits_stored=bits)
    ds = make_encapsulated([codestream], JPEG2000Lossless, 96, 80, bits, representation)
    expected = ds.pixel_array
    got = decode_j2k(codestream, 0, pixel_header(ds))
    assert got is not None
    assert got.dtype == expected.dtype
    assert np.array_equal(got, expected)


def test_fast_j2k_decodes_reduced(make_encapsulated: Encapsulated) -> None:
    """A 512 px JPEG 2000 frame is decoded at 128 px for a 64 px target, close to the full path."""
    ds = j2k_dataset(make_encapsulated, [smooth(512, 12).astype(np.uint16)])
    header = pixel_header(ds)
    fast = next(iter_frames(ds, header, SMALL, fast=True))
    full = next(iter_frames(ds, header, SMALL, fast=False))
    assert (fast.scale, fast.pixels.shape) == (4, (128, 128))
    assert (full.scale, full.pixels.shape) == (1, (512, 512))
    difference = np.abs(
        load_dicom(ds, SMALL, fast=True)[0].astype(int) - load_dicom(ds, SMALL, fast=False)[0]
    )
    assert difference.mean() < 0.5


def test_fast_path_keeps_window_and_monochrome1(make_encapsulated: Encapsulated) -> None:
    """After a reduced decode the window and MONOCHROME1 inversion apply exactly as in full."""
    pixels = [smooth(512, 12).astype(np.uint16)]
    images = {}
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        ds = j2k_dataset(make_encapsulated, pixels, photometric=photometric)
        ds.WindowCenter, ds.WindowWidth = 2000, 1500
        for fast in (True, False):
            images[photometric, fast] = load_dicom(ds, SMALL, fast=fast)[0].astype(int)
    assert np.abs(images["MONOCHROME1", True] - images["MONOCHROME1", False]).mean() < 0.5
    # the reduced MONOCHROME1 image is the full MONOCHROME2 image inverted
    assert np.abs(images["MONOCHROME1", True] + images["MONOCHROME2", False] - 255).mean() < 0.5
    assert images["MONOCHROME2", False].std() > 40


def test_fast_multi_frame_j2k(make_encapsulated: Encapsulated) -> None:
    """Every frame of a multi-frame JPEG 2000 is decoded reduced and stays in order."""
    frames = [smooth(512, 12, phase).astype(np.uint16) for phase in (0.0, 2.0)]
    ds = j2k_dataset(make_encapsulated, frames)
    fast = load_dicom(ds, SMALL, fast=True)
    full = load_dicom(ds, SMALL, fast=False)
    assert len(fast) == len(full) == 2
    for f, g in zip(fast, full, strict=True):
        assert np.abs(f.astype(int) - g).mean() < 0.5
    assert np.abs(fast[0].astype(int) - fast[1]).mean() > 10


def test_small_j2k_is_decoded_in_full(make_encapsulated: Encapsulated) -> None:
    """An image without room for reduction (200 px for a 224 target) gives identical paths."""
    ds = j2k_dataset(make_encapsulated, [smooth(200, 12).astype(np.uint16)])
    assert next(iter_frames(ds, pixel_header(ds), 224, fast=True)).scale == 1
    assert np.array_equal(load_dicom(ds, fast=True)[0], load_dicom(ds, fast=False)[0])


def test_fast_jpeg_decodes_reduced(make_encapsulated: Encapsulated) -> None:
    """An 8-bit JPEG Baseline frame is inverse-transformed at 1/4 scale, close to the full path."""
    buffer = io.BytesIO()
    Image.fromarray(smooth(512, 8).astype(np.uint8), mode="L").save(buffer, "JPEG", quality=95)
    ds = make_encapsulated([buffer.getvalue()], JPEGBaseline8Bit, 512, 512, 8)
    frame = next(iter_frames(ds, pixel_header(ds), SMALL, fast=True))
    assert (frame.scale, frame.pixels.shape) == (4, (128, 128))
    assert frame.pixels.dtype == np.dtype(np.uint8)
    difference = np.abs(
        load_dicom(ds, SMALL, fast=True)[0].astype(int) - load_dicom(ds, SMALL, fast=False)[0]
    )
    assert difference.mean() < 0.5


def test_failed_reduced_decode_falls_back(
    make_encapsulated: Encapsulated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the reduced decoder fails, the frame is decoded in full and the failure logged."""
    ds = j2k_dataset(make_encapsulated, [smooth(512, 12).astype(np.uint16)])
    expected = load_dicom(ds, SMALL, fast=False)[0]

    def broken(*args: object) -> None:
        raise OSError("broken codestream")

    monkeypatch.setattr("screener.imaging.decode.decode_j2k", broken)
    with structlog.testing.capture_logs() as events:
        got = load_dicom(ds, SMALL, fast=True)[0]
    assert np.array_equal(got, expected)
    assert [e["event"] for e in events if e["log_level"] == "warning"] == ["reduced_decode_failed"]
