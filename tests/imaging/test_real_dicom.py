"""The pipeline on real DICOM files: every WG04 transfer syntax, SIIM chest CR, NIH DX.

The mean-absolute-difference bounds are about twice what was measured (wg04 fast vs full:
at most 0.11 grey levels; SIIM fast vs full and DICOM vs JPEG export: at most 0.25).
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from PIL import Image

from screener.errors import ImageError
from screener.imaging import CANONICAL_SIZE, load_image, resize_canonical
from screener.imaging.decode import iter_frames
from screener.imaging.dicom import pixel_header

WG04_IMAGES = ("RG2", "RG3")
LOSSLESS = ("J2KR", "JLSL", "JPLL", "RLE")
LOSSY = ("J2KI", "JLSN")
REDUCIBLE = ("J2KR", "J2KI")

Grey8 = npt.NDArray[np.uint8]


@functools.cache
def canonical(path: Path, fast: bool) -> Grey8:
    """The only canonical image of ``path`` (cached: the real films take a while to decode)."""
    images = load_image(path, fast=fast)
    assert len(images) == 1
    return images[0]


def mad(a: Grey8, b: Grey8) -> float:
    """Mean absolute difference in grey levels."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def siim_files(siim_dir: Path) -> list[Path]:
    """The SIIM chest films, sorted. The folder's absence skips (``siim_dir``); a folder
    without films fails, or the tests that loop over them would pass on nothing."""
    files = sorted(siim_dir.glob("*.dcm"))
    assert files, f"no SIIM chest films (*.dcm) in {siim_dir}"
    return files


@pytest.mark.parametrize("image", WG04_IMAGES)
@pytest.mark.parametrize("variant", LOSSLESS + LOSSY)
def test_wg04_syntax_gives_canonical_image(wg04_dir: Path, image: str, variant: str) -> None:
    """Every decodable WG04 transfer syntax gives one 224 x 224 uint8 image with contrast."""
    out = canonical(wg04_dir / f"{image}_{variant}.dcm", True)
    assert out.shape == (CANONICAL_SIZE, CANONICAL_SIZE) and out.dtype == np.uint8
    assert out.std() > 20 and out.min() < 30 and out.max() > 200


@pytest.mark.parametrize("image", WG04_IMAGES)
def test_wg04_lossless_variants_agree(wg04_dir: Path, image: str) -> None:
    """J2KR, JLSL, JPLL and RLE of one film give the same canonical image (within 1 level)."""
    reference = canonical(wg04_dir / f"{image}_RLE.dcm", False)
    for variant in LOSSLESS:
        other = canonical(wg04_dir / f"{image}_{variant}.dcm", False)
        assert np.abs(other.astype(int) - reference).max() <= 1, variant


@pytest.mark.parametrize("image", WG04_IMAGES)
@pytest.mark.parametrize("variant", LOSSY)
def test_wg04_lossy_variants_are_close(wg04_dir: Path, image: str, variant: str) -> None:
    """The lossy JPEG 2000 and near-lossless JPEG-LS films stay within 0.6 levels of lossless."""
    reference = canonical(wg04_dir / f"{image}_RLE.dcm", False)
    assert mad(canonical(wg04_dir / f"{image}_{variant}.dcm", False), reference) < 0.6


@pytest.mark.parametrize("image", WG04_IMAGES)
@pytest.mark.parametrize("variant", LOSSLESS + LOSSY)
def test_wg04_fast_matches_full(wg04_dir: Path, image: str, variant: str) -> None:
    """The fast path differs from the full decode by under 0.25 levels; exactly 0 if not reduced."""
    path = wg04_dir / f"{image}_{variant}.dcm"
    difference = mad(canonical(path, True), canonical(path, False))
    if variant in REDUCIBLE:
        assert difference < 0.25
    else:
        assert difference == 0.0


def test_wg04_jpeg_2000_is_decoded_reduced(wg04_dir: Path) -> None:
    """The 1760 x 2140 JPEG 2000 film is decoded one level down, 880 x 1070 (>= 448 px)."""
    ds = pydicom.dcmread(wg04_dir / "RG2_J2KR.dcm")
    frame = next(iter_frames(ds, pixel_header(ds), CANONICAL_SIZE, fast=True))
    assert (frame.scale, frame.pixels.shape) == (2, (1070, 880))


@pytest.mark.parametrize("image", WG04_IMAGES)
def test_wg04_jply_is_refused(wg04_dir: Path, image: str) -> None:
    """The 12-bit JPEG Extended files raise undecodable_pixel_data naming the transfer syntax."""
    with pytest.raises(ImageError) as caught:
        load_image(wg04_dir / f"{image}_JPLY.dcm")
    assert caught.value.reason == "undecodable_pixel_data"
    assert "JPEG Extended" in str(caught.value)
    assert "1.2.840.10008.1.2.4.51" in str(caught.value)


@pytest.mark.parametrize("image", WG04_IMAGES)
def test_wg04_window_and_inversion(wg04_dir: Path, image: str) -> None:
    """The stored window (and MONOCHROME1 for the tibia) match an independent computation."""
    ds = pydicom.dcmread(wg04_dir / f"{image}_RLE.dcm")
    centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
    # PS3.3 C.11.2.1.2.1 LINEAR, written out
    x = ds.pixel_array.astype(np.float64)
    fraction = np.clip((x - (centre - 0.5)) / (width - 1) + 0.5, 0, 1)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        fraction = 1 - fraction
    expected = resize_canonical(np.rint(fraction * 255).astype(np.uint8))
    assert (image == "RG3") == (ds.PhotometricInterpretation == "MONOCHROME1")
    got = canonical(wg04_dir / f"{image}_RLE.dcm", False)
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_siim_dicom_matches_its_jpeg_export(siim_dir: Path) -> None:
    """A SIIM DICOM and a JPEG export of its 1024 px pixels give nearly the same image."""
    for path in siim_files(siim_dir)[:4]:
        buffer = io.BytesIO()
        Image.fromarray(pydicom.dcmread(path).pixel_array, mode="L").save(
            buffer, "JPEG", quality=95
        )
        exported = load_image(buffer.getvalue())
        assert len(exported) == 1
        assert mad(canonical(path, True), exported[0]) < 0.5, path.name


def test_siim_fast_matches_full(siim_dir: Path) -> None:
    """The half-scale IDCT of the SIIM JPEG Baseline films stays within 0.5 levels of full."""
    for path in siim_files(siim_dir):
        ds = pydicom.dcmread(path)
        assert next(iter_frames(ds, pixel_header(ds), CANONICAL_SIZE)).scale == 2
        assert mad(canonical(path, True), canonical(path, False)) < 0.5, path.name


def test_nih_implicit_vr_is_the_resized_pixels(nih_dir: Path) -> None:
    """The 8-bit NIH DX films without VOI come out as their pixels resized, value for value."""
    paths = sorted(nih_dir.glob("*.dcm"))
    assert len(paths) == 6
    for path in paths:
        expected = resize_canonical(pydicom.dcmread(path).pixel_array)
        assert np.array_equal(canonical(path, True), expected), path.name
