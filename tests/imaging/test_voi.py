"""The value pipeline on synthetic data sets: Modality LUT, VOI LUT, MONOCHROME1, colour."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import structlog.testing
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEGBaseline8Bit

from screener.imaging import load_dicom, load_image

#: The synthetic images are SIDE x SIDE and loaded at that size, so no resize blurs them.
SIDE = 64

Factory = Callable[..., Dataset]
ToBytes = Callable[..., bytes]


def columns_of(values: list[int], dtype: Any) -> npt.NDArray[Any]:
    """A SIDE x SIDE image whose columns cycle through ``values``."""
    row = np.resize(np.array(values), SIDE)
    return np.tile(row, (SIDE, 1)).astype(dtype)


def load_one(ds: Dataset, to_bytes: ToBytes) -> npt.NDArray[np.uint8]:
    """Round-trip ``ds`` through a DICOM file and return its only canonical image."""
    images = load_image(to_bytes(ds), size=SIDE)
    assert len(images) == 1
    assert images[0].shape == (SIDE, SIDE) and images[0].dtype == np.uint8
    return images[0]


def test_window_maps_centre_to_mid_grey(make_dataset: Factory, to_bytes: ToBytes) -> None:
    """A LINEAR window sends its centre to 128 and values beyond its edges to 0 and 255."""
    pixels = columns_of([2048, 1548, 2548, 0, 4095], np.uint16)
    ds = make_dataset(pixels, bits_stored=12, WindowCenter=2048, WindowWidth=1000)
    out = load_one(ds, to_bytes)
    assert out[0, :5].tolist() == [128, 0, 255, 0, 255]


def test_monochrome1_ramp_is_inverted(make_dataset: Factory, to_bytes: ToBytes) -> None:
    """MONOCHROME1 shows the lowest value white: its ramp is the MONOCHROME2 ramp reversed."""
    ramp = columns_of(list(range(0, 4096, 64)), np.uint16)
    window = {"WindowCenter": 2048, "WindowWidth": 4096}
    mono2 = load_one(make_dataset(ramp, "MONOCHROME2", 12, **window), to_bytes)
    mono1 = load_one(make_dataset(ramp, "MONOCHROME1", 12, **window), to_bytes)
    assert mono2[0, 0] == 0 and mono2[0, -1] >= 250
    assert mono1[0, 0] == 255 and mono1[0, -1] <= 5
    assert np.all(np.diff(mono1[0].astype(int)) <= 0)
    assert np.abs(mono1.astype(int) + mono2.astype(int) - 255).max() <= 1


def test_signed_rescaled_window(make_dataset: Factory, to_bytes: ToBytes) -> None:
    """Signed 16-bit values are rescaled (slope 2, intercept -100) before a window in output units."""
    pixels = columns_of([50, 0, 100, -500, 30000], np.int16)
    ds = make_dataset(
        pixels,
        bits_stored=16,
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=0,
        WindowWidth=200,
    )
    out = load_one(ds, to_bytes)
    # stored 50 -> 0 (the centre), 0 -> -100 (lower edge), 100 -> 100 (upper edge)
    assert out[0, :5].tolist() == [128, 0, 255, 0, 255]


def test_first_of_several_windows_is_used(make_dataset: Factory, to_bytes: ToBytes) -> None:
    """With several window pairs (VM 2), the first centre and width are applied."""
    pixels = columns_of([2048, 1548, 2548], np.uint16)
    ds = make_dataset(pixels, bits_stored=12, WindowCenter=[2048, 100], WindowWidth=[1000, 50])
    assert load_one(ds, to_bytes)[0, :3].tolist() == [128, 0, 255]


def test_sigmoid_window(make_dataset: Factory, to_bytes: ToBytes) -> None:
    """VOI LUT Function SIGMOID (PS3.3 C.11.2.1.3.1) gives 128 at the centre and 250 a width above."""
    pixels = columns_of([2048, 2448, 1648], np.uint16)
    ds = make_dataset(
        pixels, bits_stored=12, WindowCenter=2048, WindowWidth=400, VOILUTFunction="SIGMOID"
    )
    # 255 / (1 + exp(-4)) = 250.4 and 255 / (1 + exp(4)) = 4.6
    assert load_one(ds, to_bytes)[0, :3].tolist() == [128, 250, 5]


def _voi_lut(descriptor: list[int], data: list[int]) -> Sequence:
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.LUTData = data
    item["LUTDescriptor"].VR = "US"
    item["LUTData"].VR = "US"
    return Sequence([item])


def test_voi_lut_sequence_wins_over_window(make_dataset: Factory, to_bytes: ToBytes) -> None:
    """An 8-bit VOI LUT Sequence maps values by its table, even when a window is also present."""
    table = [10] * 2048 + [200] * 2048
    pixels = columns_of([100, 3000, 5000], np.uint16)
    ds = make_dataset(pixels, bits_stored=16, WindowCenter=2048, WindowWidth=10)
    ds.VOILUTSequence = _voi_lut([4096, 0, 8], table)
    # values past the last entry take the last entry (PS3.3 C.11.2.1.1)
    assert load_one(ds, to_bytes)[0, :3].tolist() == [10, 200, 200]


def test_voi_lut_declaring_16_bits_with_12_bit_data(
    make_dataset: Factory, to_bytes: ToBytes
) -> None:
    """A VOI LUT declaring 16-bit entries but holding 12-bit data is scaled by what it holds."""
    pixels = columns_of([0, 2048, 4095], np.uint16)
    ds = make_dataset(pixels, bits_stored=12)
    ds.VOILUTSequence = _voi_lut([4096, 0, 16], list(range(4096)))
    assert load_one(ds, to_bytes)[0, :3].tolist() == [0, 128, 255]


def test_percentile_window_ignores_outliers(make_dataset: Factory, to_bytes: ToBytes) -> None:
    """Without any VOI, 12-bit data get a 0.5-99.5 % window that single outliers do not stretch."""
    pixels = np.full((SIDE, SIDE), 1000, np.uint16)
    pixels[SIDE // 2 :] = 2000
    pixels[0, 1] = 1500
    pixels[0, 2] = 0
    pixels[-1, -1] = 4095
    out = load_one(make_dataset(pixels, bits_stored=12), to_bytes)
    assert [out[0, 0], out[0, 1], out[0, 2], out[-1, 0], out[-1, -1]] == [0, 128, 0, 255, 255]


def test_eight_bit_without_window_is_kept(make_dataset: Factory, to_bytes: ToBytes) -> None:
    """8-bit data without VOI are display values already and pass unchanged, like the JPEGs."""
    pixels = columns_of([0, 37, 200, 255, 90], np.uint8)
    assert load_one(make_dataset(pixels), to_bytes)[0, :5].tolist() == [0, 37, 200, 255, 90]


def test_invalid_window_falls_back(make_dataset: Factory, to_bytes: ToBytes) -> None:
    """A window of width 0 is ignored in favour of the percentile window rather than failing."""
    pixels = np.full((SIDE, SIDE), 1000, np.uint16)
    pixels[SIDE // 2 :] = 2000
    ds = make_dataset(pixels, bits_stored=12, WindowCenter=1500, WindowWidth=0)
    out = load_one(ds, to_bytes)
    assert (out[0, 0], out[-1, 0]) == (0, 255)


def test_rgb_becomes_luma(make_dataset: Factory, to_bytes: ToBytes) -> None:
    """RGB pixels become BT.601 luma grey: red 76, green 150, blue 29, white 255."""
    pixels = np.zeros((SIDE, SIDE, 3), np.uint8)
    pixels[:, 0] = (255, 0, 0)
    pixels[:, 1] = (0, 255, 0)
    pixels[:, 2] = (0, 0, 255)
    pixels[:, 3] = (255, 255, 255)
    ds = make_dataset(pixels, "RGB", 8, PlanarConfiguration=0)
    assert load_one(ds, to_bytes)[0, :4].tolist() == [76, 150, 29, 255]


def test_ybr_full_becomes_its_luma(make_dataset: Factory, to_bytes: ToBytes) -> None:
    """YBR_FULL pixels without chroma come out as their Y value."""
    pixels = np.full((SIDE, SIDE, 3), 128, np.uint8)
    pixels[..., 0] = 200
    ds = make_dataset(pixels, "YBR_FULL", 8, PlanarConfiguration=0)
    assert abs(int(load_one(ds, to_bytes)[5, 5]) - 200) <= 1


def test_colour_jpeg_baseline_becomes_luma(
    make_encapsulated: Callable[..., Dataset], to_bytes: ToBytes
) -> None:
    """A YBR_FULL_422 JPEG Baseline frame (a colour secondary capture) becomes luma grey."""
    rgb = np.zeros((SIDE, SIDE, 3), np.uint8)
    rgb[:, : SIDE // 2] = (255, 0, 0)
    rgb[:, SIDE // 2 :] = (255, 255, 255)
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, "JPEG", quality=100, subsampling=0)
    ds = make_encapsulated(
        [buffer.getvalue()], JPEGBaseline8Bit, SIDE, SIDE, 8, photometric="YBR_FULL_422"
    )
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    out = load_one(ds, to_bytes)
    assert abs(int(out[SIDE // 2, 8]) - 76) <= 2 and abs(int(out[SIDE // 2, -8]) - 255) <= 2


def test_multi_frame_gives_one_image_per_frame(make_dataset: Factory, to_bytes: ToBytes) -> None:
    """Each frame of a multi-frame image becomes its own canonical image."""
    frames = np.stack([np.full((SIDE, SIDE), v, np.uint16) for v in (0, 2048, 4095)])
    ds = make_dataset(frames, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    images = load_image(to_bytes(ds), size=SIDE)
    assert [int(image[0, 0]) for image in images] == [0, 128, 255]


def test_per_frame_window_of_an_enhanced_image(make_dataset: Factory, to_bytes: ToBytes) -> None:
    """A Frame VOI LUT in the per-frame functional groups overrides the shared one (PS3.3 C.7.6.16)."""
    frames = np.full((2, SIDE, SIDE), 2048, np.uint16)

    def group(centre: int) -> Dataset:
        voi = Dataset()
        voi.WindowCenter = centre
        voi.WindowWidth = 1000
        item = Dataset()
        item.FrameVOILUTSequence = Sequence([voi])
        return item

    ds = make_dataset(frames, bits_stored=12)
    ds.SharedFunctionalGroupsSequence = Sequence([group(2048)])
    ds.PerFrameFunctionalGroupsSequence = Sequence([Dataset(), group(3000)])
    images = load_image(to_bytes(ds), size=SIDE)
    assert [int(image[0, 0]) for image in images] == [128, 0]


def test_caller_dataset_is_not_modified(make_dataset: Factory) -> None:
    """load_dicom of a parsed data set (with rescale, window, VOI LUT) leaves it as it was."""
    pixels = columns_of([2048, 1548], np.uint16)
    ds = make_dataset(pixels, bits_stored=12, WindowCenter="2048", WindowWidth="1000")
    ds.VOILUTSequence = _voi_lut([4096, 0, 8], [10] * 4096)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    before = copy.deepcopy(ds)
    load_dicom(ds, size=SIDE)
    assert ds == before


@pytest.mark.parametrize("size", [224, 100])
def test_output_is_canonical(make_dataset: Factory, to_bytes: ToBytes, size: int) -> None:
    """Any image comes out as a square uint8 image of the requested size."""
    pixels = np.arange(80 * 120, dtype=np.uint16).reshape(80, 120) % 4096
    images = load_image(to_bytes(make_dataset(pixels, bits_stored=12)), size=size)
    assert images[0].shape == (size, size) and images[0].dtype == np.uint8


def test_logs_carry_uids_not_phi(make_dataset: Factory, phi: tuple[str, ...]) -> None:
    """Log events of a load name the SOP Instance UID and never the patient."""
    pixels = columns_of([1000, 2000], np.uint16)
    ds = make_dataset(pixels, bits_stored=12, WindowCenter=1500, WindowWidth=0)
    with structlog.testing.capture_logs() as events:
        load_dicom(ds, size=SIDE)
    assert {"voi_window_ignored", "dicom_loaded"} <= {e["event"] for e in events}
    assert any(e.get("sop_instance_uid") == ds.SOPInstanceUID for e in events)
    text = repr(events)
    assert not any(value in text for value in phi)
