"""Data sets the pipeline must refuse, each with its reason code and a readable message."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import MPEG2MPML

from screener.errors import ImageError
from screener.imaging import load_dicom, load_image

Factory = Callable[..., Dataset]
ToBytes = Callable[..., bytes]


Refuse = Callable[[bytes | Dataset, str], str]


@pytest.fixture
def refuse(phi: tuple[str, ...]) -> Refuse:
    """Load data, expect ImageError(reason) and return its message, checked free of PHI."""

    def check(data: bytes | Dataset, reason: str) -> str:
        with pytest.raises(ImageError) as caught:
            if isinstance(data, bytes):
                load_image(data)
            else:
                load_dicom(data)
        assert caught.value.reason == reason, str(caught.value)
        message = str(caught.value)
        assert not any(value in message for value in phi)
        return message

    return check


def grey(rows: int = 64, columns: int = 64) -> np.ndarray:
    """A small 12-bit grey image."""
    return np.full((rows, columns), 100, np.uint16)


def test_no_pixel_data(refuse: Refuse, make_dataset: Factory) -> None:
    """A data set without (7FE0,0010) Pixel Data is refused as no_pixel_data."""
    ds = make_dataset(grey(), bits_stored=12)
    del ds.PixelData
    assert "(7FE0,0010)" in refuse(ds, "no_pixel_data")


def test_empty_pixel_data(refuse: Refuse, make_dataset: Factory, to_bytes: ToBytes) -> None:
    """An empty Pixel Data element is refused as no_pixel_data."""
    ds = make_dataset(grey(), bits_stored=12)
    ds.PixelData = b""
    assert "empty" in refuse(to_bytes(ds), "no_pixel_data")


def test_too_small(refuse: Refuse, make_dataset: Factory, to_bytes: ToBytes) -> None:
    """An image under 64 px a side is refused as image_too_small, naming its size."""
    ds = make_dataset(grey(32, 80), bits_stored=12)
    assert "80 x 32" in refuse(to_bytes(ds), "image_too_small")


def test_too_large_side_is_refused_before_decoding(refuse: Refuse, make_dataset: Factory) -> None:
    """Rows of 20,000 are refused from the header alone, though the pixel data are tiny."""
    ds = make_dataset(grey(), bits_stored=12)
    ds.Rows = 20000
    assert "16384" in refuse(ds, "image_too_large")


def test_too_many_bytes_is_refused_before_decoding(refuse: Refuse, make_dataset: Factory) -> None:
    """Frames that would need gigabytes decoded are refused as image_too_large."""
    ds = make_dataset(grey(), bits_stored=12)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 8192, 8192, 100
    assert "decode_max_pixels" in refuse(ds, "image_too_large")


@pytest.mark.parametrize("interpretation", ["PALETTE COLOR", "HSV", "CMYK"])
def test_unsupported_interpretation(
    refuse: Refuse, make_dataset: Factory, interpretation: str
) -> None:
    """A photometric interpretation other than grey, RGB or YBR_FULL is refused by name."""
    ds = make_dataset(grey(), bits_stored=12)
    ds.PhotometricInterpretation = interpretation
    message = refuse(ds, "unsupported_photometric_interpretation")
    assert interpretation in message


def test_missing_interpretation(refuse: Refuse, make_dataset: Factory) -> None:
    """A data set without Photometric Interpretation is refused, naming the attribute."""
    ds = make_dataset(grey(), bits_stored=12)
    del ds.PhotometricInterpretation
    assert "(0028,0004)" in refuse(ds, "unsupported_photometric_interpretation")


def test_samples_disagree_with_interpretation(refuse: Refuse, make_dataset: Factory) -> None:
    """MONOCHROME2 with 3 samples per pixel is refused rather than mis-read."""
    ds = make_dataset(grey(), bits_stored=12)
    ds.SamplesPerPixel = 3
    assert "Samples per Pixel" in refuse(ds, "unsupported_photometric_interpretation")


def test_truncated_pixel_data(refuse: Refuse, make_dataset: Factory, to_bytes: ToBytes) -> None:
    """Native pixel data shorter than Rows x Columns is corrupt, not a crash."""
    ds = make_dataset(grey(), bits_stored=12)
    ds.PixelData = ds.PixelData[:1000]
    assert "need exactly" in refuse(to_bytes(ds), "corrupt_pixel_data")


def test_unsupported_transfer_syntax(
    refuse: Refuse, make_encapsulated: Callable[..., Dataset]
) -> None:
    """A video transfer syntax is refused with its name and UID."""
    ds = make_encapsulated([b"\x00\x00\x01\xb3" * 16], MPEG2MPML, 64, 64, 8)
    message = refuse(ds, "undecodable_pixel_data")
    assert "MPEG2" in message and MPEG2MPML in message


def test_corrupt_jpeg_2000(refuse: Refuse, make_encapsulated: Callable[..., Dataset]) -> None:
    """A JPEG 2000 frame of garbage is corrupt from its SIZ marker, before any decoding."""
    from pydicom.uid import JPEG2000Lossless

    ds = make_encapsulated([b"\xff\x4f\xff\x51" + bytes(200)], JPEG2000Lossless, 512, 512, 12)
    assert "SIZ" in refuse(ds, "corrupt_pixel_data")


def test_compressed_without_transfer_syntax(
    refuse: Refuse, make_encapsulated: Callable[..., Dataset]
) -> None:
    """Encapsulated pixel data without a Transfer Syntax UID cannot be decoded."""
    from pydicom.uid import JPEG2000Lossless

    ds = make_encapsulated([b"\xff\x4f" + bytes(100)], JPEG2000Lossless, 64, 64, 12)
    del ds.file_meta.TransferSyntaxUID
    assert "(0002,0010)" in refuse(ds, "undecodable_pixel_data")


def test_bits_allocated_32_is_refused(refuse: Refuse, make_dataset: Factory) -> None:
    """32 bits allocated is outside the 8-16 bit range the pipeline supports."""
    ds = make_dataset(grey(), bits_stored=12)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    ds.PixelData = bytes(64 * 64 * 4)
    assert "32" in refuse(ds, "undecodable_pixel_data")


def test_missing_rows(refuse: Refuse, make_dataset: Factory) -> None:
    """A data set with pixel data but no Rows is unreadable, naming the attribute."""
    ds = make_dataset(grey(), bits_stored=12)
    del ds.Rows
    assert "(0028,0010)" in refuse(ds, "unreadable_image")
