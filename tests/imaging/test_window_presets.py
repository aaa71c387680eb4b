"""The study page's window presets on arrays: each replaces the VOI step with a window made
from the frame's own values, MONOCHROME1 still comes out inverted, unknown names are the
data set's own VOI, and the model's path is untouched."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset

from screener.imaging import load_dicom
from screener.imaging.dicom import pixel_header
from screener.imaging.voi import grey_to_uint8
from screener.imaging.window import DEFAULT_WINDOW, WINDOW_PRESETS, window_named
from screener.web.modelwork import film_picture

Factory = Callable[..., Dataset]
SIDE = 64


def shown(ds: Dataset, window: str) -> npt.NDArray[np.uint8]:
    """Frame 0 of ``ds`` through the grey pipeline with ``window``."""
    return grey_to_uint8(ds.pixel_array, pixel_header(ds), ds, 0, window)


def ramp(low: int, high: int, dtype: Any = np.uint16) -> npt.NDArray[Any]:
    """A SIDE x SIDE frame whose values rise evenly from ``low`` to ``high``, row by row."""
    return np.linspace(low, high, SIDE * SIDE).round().astype(dtype).reshape(SIDE, SIDE)


def test_names_outside_the_presets_are_the_default() -> None:
    """window_named keeps a preset's name and turns anything else, or nothing, into default."""
    assert next(iter(WINDOW_PRESETS)) == DEFAULT_WINDOW
    assert all(window_named(name) == name for name in WINDOW_PRESETS)
    for other in (None, "", "WIDE", "lung", "<script>", "default "):
        assert window_named(other) == DEFAULT_WINDOW
    assert all(isinstance(label, str) and label for label in WINDOW_PRESETS.values())


def test_wide_shows_the_frame_from_its_lowest_to_its_highest_value(
    make_dataset: Factory,
) -> None:
    """A narrow sent window clips most of a 12-bit ramp; wide maps the frame's lowest value
    to black and its highest to white, evenly between, and an unknown name is the default."""
    ds = make_dataset(ramp(1000, 3000), bits_stored=12, WindowCenter=2000, WindowWidth=200)
    default = shown(ds, "default")
    assert (default == 0).mean() > 0.4 and (default == 255).mean() > 0.4
    wide = shown(ds, "wide")
    assert wide.min() == 0 and wide.max() == 255
    expected = np.rint((ds.pixel_array - 1000.0) / 2000.0 * 255.0)
    assert np.abs(wide.astype(int) - expected).max() <= 1
    assert np.array_equal(shown(ds, "no-such-preset"), default)


def test_contrast_windows_the_5th_to_95th_percentile_between_the_extremes(
    make_dataset: Factory,
) -> None:
    """contrast sends the 5th percentile of the frame to black and the 95th to white; a
    large block at the frame's lowest value (background, collimation) is not counted."""
    pixels = ramp(100, 4000)
    pixels[: SIDE // 2] = 0  # half the frame: black background at the frame's minimum
    ds = make_dataset(pixels, bits_stored=12)
    contrast = shown(ds, "contrast").astype(int)
    body = pixels[SIDE // 2 :]
    lo, hi = np.percentile(body[body < body.max()], (5, 95))
    inside = (body > lo + 20) & (body < hi - 20)
    expected = (body - lo) / (hi - lo) * 255.0
    assert np.abs(contrast[SIDE // 2 :][inside] - expected[inside]).max() <= 3
    assert (contrast[SIDE // 2 :][body < lo] == 0).all()
    assert (contrast[SIDE // 2 :][body > hi] == 255).all()
    assert (contrast[: SIDE // 2] == 0).all()


@pytest.mark.parametrize("window", ["default", "wide", "contrast"])
def test_a_monochrome1_frame_comes_out_inverted(make_dataset: Factory, window: str) -> None:
    """MONOCHROME1 shows its lowest values white (PS3.3 C.7.6.3.1.2): the same stored
    values read as MONOCHROME1 give 255 minus the MONOCHROME2 picture under the default
    and the presets windowed on the frame's values."""
    pixels = ramp(0, 1023)
    window_attributes = {"WindowCenter": 600, "WindowWidth": 400}
    mono2 = shown(make_dataset(pixels, "MONOCHROME2", 10, **window_attributes), window)
    mono1 = shown(make_dataset(pixels, "MONOCHROME1", 10, **window_attributes), window)
    assert mono2.min() == 0 and mono2.max() == 255
    assert np.abs(mono1.astype(int) + mono2.astype(int) - 255).max() <= 1


def test_dense_keeps_what_is_shown_bright_under_monochrome1(make_dataset: Factory) -> None:
    """dense windows the half shown bright: a MONOCHROME1 frame holding the mirrored values
    of a MONOCHROME2 frame (the same picture, PS3.3 C.7.6.3.1.2) gives the same picture."""
    pixels = ramp(0, 1023)
    mono2 = shown(make_dataset(pixels, "MONOCHROME2", 10), "dense")
    mirrored = (1023 - pixels).astype(np.uint16)
    mono1 = shown(make_dataset(mirrored, "MONOCHROME1", 10), "dense")
    assert mono2.min() == 0 and mono2.max() == 255
    assert np.abs(mono1.astype(int) - mono2.astype(int)).max() <= 1


def test_dense_spreads_the_brighter_half_of_the_picture(make_dataset: Factory) -> None:
    """dense sends the frame's median to black and its brightest values to white; in
    MONOCHROME1 the bright half is the low values, so the highest values are black."""
    pixels = ramp(0, 1023)
    mono2 = shown(make_dataset(pixels, "MONOCHROME2", 10), "dense")
    assert (mono2[pixels <= 505] == 0).all() and mono2[pixels >= 1020].min() >= 250
    assert np.all(np.diff(mono2.ravel().astype(int)) >= 0)
    mono1 = shown(make_dataset(pixels, "MONOCHROME1", 10), "dense")
    assert (mono1[pixels >= 518] == 0).all() and mono1[pixels <= 3].min() >= 250
    assert np.all(np.diff(mono1.ravel().astype(int)) <= 0)


def test_a_flat_frame_takes_the_default_under_every_preset(make_dataset: Factory) -> None:
    """A frame of one value has no range to window: every preset gives the default picture."""
    ds = make_dataset(np.full((SIDE, SIDE), 700, np.uint16), bits_stored=12)
    default = shown(ds, "default")
    for window in WINDOW_PRESETS:
        assert np.array_equal(shown(ds, window), default)


def test_presets_replace_a_voi_lut_sequence(make_dataset: Factory) -> None:
    """A sent VOI LUT (PS3.3 C.11.2.1.1) gives the default; wide windows the values after
    the Modality LUT (PS3.3 C.11.1) instead, so the LUT's own curve is gone."""
    pixels = ramp(0, 255, np.uint8)
    ds = make_dataset(pixels, bits_stored=8, RescaleSlope=2, RescaleIntercept=-100)
    item = Dataset()
    item.LUTDescriptor = [256, -100, 8]
    item.LUTData = [min(255, 2 * i) for i in range(256)]  # a steep curve: half the LUT white
    ds.VOILUTSequence = [item]
    default = shown(ds, "default")
    assert (default == 255).mean() > 0.3
    wide = shown(ds, "wide")
    assert np.abs(wide.astype(int) - pixels.astype(int)).max() <= 1


def test_the_models_input_is_unchanged_by_the_presets(make_dataset: Factory) -> None:
    """load_dicom, the model's path, gives the data set's own VOI: the same picture as
    the default preset, whatever the presets do."""
    ds = make_dataset(ramp(1000, 3000), bits_stored=12, WindowCenter=2000, WindowWidth=200)
    assert np.array_equal(load_dicom(ds, size=SIDE, fast=False)[0], shown(ds, "default"))
    assert not np.array_equal(shown(ds, "wide"), shown(ds, "default"))


def test_film_picture_at_full_size_and_with_presets_on_a_real_monochrome1_film(
    wg04_dir: Path,
) -> None:
    """The WG04 tibia (MONOCHROME1, 10-bit, with a window) at full size is its stored
    Rows x Columns; wide is the inverted linear map of its stored range and differs from the
    default, as contrast does; the page size keeps its proportions at 768 px."""
    path = str(wg04_dir / "RG3_JLSL.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and "WindowCenter" in ds
    stored = ds.pixel_array.astype(np.float64)
    default = film_picture(path, None, "default")
    assert default.shape == (ds.Rows, ds.Columns)
    wide = film_picture(path, None, "wide")
    expected = 255.0 - np.rint((stored - stored.min()) / (stored.max() - stored.min()) * 255.0)
    assert np.abs(wide.astype(int) - expected).max() <= 1
    contrast = film_picture(path, None, "contrast")
    for other in (wide, contrast):
        assert np.abs(other.astype(int) - default.astype(int)).mean() > 2
    assert film_picture(path).shape == (768, 768)
