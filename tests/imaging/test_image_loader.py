"""load_image's dispatch: DICOM recognised by content, JPEG and PNG like the training data."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from screener.errors import ImageError
from screener.imaging import CANONICAL_SIZE, load_image, load_raster

Factory = Callable[..., Dataset]
ToBytes = Callable[..., bytes]


def ramp_dataset(make_dataset: Factory) -> Dataset:
    """A 128 x 96 8-bit ramp, a stand-in for an exported radiograph."""
    pixels = (np.arange(128 * 96).reshape(128, 96) % 256).astype(np.uint8)
    return make_dataset(pixels)


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    """``pixels`` as a grey JPEG or PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format=fmt)
    return buffer.getvalue()


def test_dicom_file_with_preamble(make_dataset: Factory, to_bytes: ToBytes) -> None:
    """Bytes with 'DICM' at offset 128 are read as DICOM, one canonical image per frame."""
    images = load_image(to_bytes(ramp_dataset(make_dataset)))
    assert len(images) == 1 and images[0].shape == (CANONICAL_SIZE, CANONICAL_SIZE)


def test_dicom_path(make_dataset: Factory, to_bytes: ToBytes, tmp_path: Path) -> None:
    """A path to a DICOM file gives the same image as its bytes."""
    data = to_bytes(ramp_dataset(make_dataset))
    path = tmp_path / "image.dcm"
    path.write_bytes(data)
    assert np.array_equal(load_image(path)[0], load_image(data)[0])
    assert np.array_equal(load_image(str(path))[0], load_image(data)[0])


def test_dataset_without_preamble(make_dataset: Factory, to_bytes: ToBytes) -> None:
    """A bare Implicit VR data set (no preamble, no File Meta) is still recognised as DICOM."""
    ds = ramp_dataset(make_dataset)
    bare = to_bytes(ds, preamble=False)
    assert bare[128:132] != b"DICM"
    assert np.array_equal(load_image(bare)[0], load_image(to_bytes(ds))[0])


def test_tiff_preamble_is_still_dicom(make_dataset: Factory, to_bytes: ToBytes) -> None:
    """A DICOM file whose preamble is a TIFF header (dual-personality files) is read as DICOM."""
    ds = ramp_dataset(make_dataset)
    ds.preamble = b"II*\x00" + bytes(124)
    data = to_bytes(ds)
    assert data[:4] == b"II*\x00"
    assert np.array_equal(load_image(data)[0], load_image(to_bytes(ramp_dataset(make_dataset)))[0])


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_raster_goes_to_load_raster(fmt: str) -> None:
    """JPEG and PNG bytes give a list of one image, equal to load_raster's."""
    pixels = (np.arange(100 * 120).reshape(100, 120) % 251).astype(np.uint8)
    data = encode(pixels, fmt)
    images = load_image(data)
    assert len(images) == 1
    assert np.array_equal(images[0], load_raster(data))


@pytest.mark.parametrize("data", [b"", b"hello world, not an image" * 20, bytes(300)])
def test_not_an_image(data: bytes) -> None:
    """Bytes that are neither DICOM nor JPEG nor PNG raise not_an_image."""
    with pytest.raises(ImageError) as caught:
        load_image(data)
    assert caught.value.reason == "not_an_image"


def test_truncated_jpeg_is_unreadable() -> None:
    """A JPEG cut after its first bytes raises unreadable_image."""
    data = encode(np.zeros((100, 100), np.uint8), "JPEG")[:40]
    with pytest.raises(ImageError) as caught:
        load_image(data)
    assert caught.value.reason == "unreadable_image"


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    """A path that does not exist raises unreadable_image, not OSError."""
    with pytest.raises(ImageError) as caught:
        load_image(tmp_path / "absent.dcm")
    assert caught.value.reason == "unreadable_image"


def test_truncated_dicom_file(make_dataset: Factory, to_bytes: ToBytes) -> None:
    """A DICOM file cut in the middle of its pixel data raises an ImageError, never a crash."""
    data = to_bytes(ramp_dataset(make_dataset))
    with pytest.raises(ImageError) as caught:
        load_image(data[: len(data) // 2])
    assert caught.value.reason in {"corrupt_pixel_data", "unreadable_image"}
