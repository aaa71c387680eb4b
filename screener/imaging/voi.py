"""Stored values to display grey: the grayscale pipeline of PS3.4 N.2.1 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_N.2.1>, then 8 bits.

Stored value -> Modality LUT (rescale slope / intercept or LUT, PS3.3 C.11.1 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.11.1>) -> VOI LUT
(window or LUT, PS3.3 C.11.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.11.2>) -> MONOCHROME1 inversion (PS3.3 C.7.6.3.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.7.6.3.1.2>) -> 0..255.

Every step is a map of one value to one value, independent of resolution, so it is
computed once for every possible stored value (256 or 65,536 of them) with pydicom's own
functions and applied to the frame as one table look-up. That keeps the result identical
to applying the functions to the image, at a fraction of the cost.

The study page may put a window preset (:mod:`screener.imaging.window`) in the VOI step's
place; the model's input always takes the data set's own VOI.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi, apply_windowing

from screener.errors import ImageError
from screener.imaging.decode import Frame
from screener.imaging.dicom import PixelHeader
from screener.imaging.window import DEFAULT_WINDOW, Histogram, preset_voi, values_at_percentiles

log = structlog.get_logger(__name__)

#: Robust window used when the data set brings no VOI: these percentiles of the frame.
PERCENTILE_WINDOW = (0.5, 99.5)

#: apply_windowing maps a window onto the output range implied by Bits Stored (0..2**16-1
#: for the value data set built here); dividing by it gives the fraction of the window.
_WINDOW_OUTPUT_MAX = float(2**16 - 1)

#: ITU-R BT.601 luma, the weights Pillow's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114])

Floats = npt.NDArray[np.float64]
Grey8 = npt.NDArray[np.uint8]

_MODALITY_KEYWORDS = ("RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence")
_WINDOW_KEYWORDS = ("WindowCenter", "WindowWidth", "VOILUTFunction")


def _present(ds: Dataset, keyword: str) -> bool:
    return keyword in ds and ds[keyword].value not in (None, "", [])


def _functional_group_items(ds: Dataset, index: int, macro: str) -> list[Dataset]:
    """Items of ``macro`` for frame ``index``: shared first, then per-frame (PS3.3 C.7.6.16 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.7.6.16>)."""
    items: list[Dataset] = []
    for keyword, position in (
        ("SharedFunctionalGroupsSequence", 0),
        ("PerFrameFunctionalGroupsSequence", index),
    ):
        groups = ds.get(keyword)
        macro_items = groups[position].get(macro) if groups and position < len(groups) else None
        if macro_items:
            items.append(macro_items[0])
    return items


def _copy(target: Dataset, sources: list[Dataset], keywords: tuple[str, ...]) -> None:
    for source in sources:
        for keyword in keywords:
            if _present(source, keyword):
                target[keyword] = source[keyword]


def _with_encoding(ds: Dataset, header: PixelHeader) -> Dataset:
    # pydicom reads the byte order of OW LUT Data from the File Meta's transfer syntax.
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = header.transfer_syntax
    return ds


def modality_dataset(ds: Dataset, header: PixelHeader, index: int) -> Dataset:
    """The Modality LUT Module (PS3.3 C.11.1 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.11.1>) for frame ``index``, alone in a data set.

    An enhanced image's Pixel Value Transformation (shared, then per-frame) overrides the
    top level. A separate data set keeps pydicom from touching the caller's.
    """
    out = _with_encoding(Dataset(), header)
    out.BitsStored = header.bits_stored
    out.PixelRepresentation = header.pixel_representation
    out.PhotometricInterpretation = header.photometric_interpretation
    sources = [ds, *_functional_group_items(ds, index, "PixelValueTransformationSequence")]
    _copy(out, sources, _MODALITY_KEYWORDS)
    return out


def voi_dataset(ds: Dataset, header: PixelHeader, index: int) -> Dataset:
    """The VOI LUT Module (PS3.3 C.11.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.11.2>) for frame ``index``, alone in a data set.

    Its Bits Stored 16, unsigned, without rescale, fixes the output range of
    apply_windowing to 0..65535 whatever the image: the window result is a fraction.
    """
    out = _with_encoding(Dataset(), header)
    out.BitsStored = 16
    out.PixelRepresentation = 0
    out.PhotometricInterpretation = "MONOCHROME2"
    _copy(out, [ds, *_functional_group_items(ds, index, "FrameVOILUTSequence")], _WINDOW_KEYWORDS)
    _copy(out, [ds], ("VOILUTSequence",))
    return out


def _voi_lut_fraction(values: Floats, voi: Dataset) -> Floats:
    """PS3.3 C.11.2.1.1 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.11.2.1.1> VOI LUT: first item of the VOI LUT Sequence, as a fraction."""
    item = voi.VOILUTSequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 1 << 16
    inputs = np.rint(np.clip(values, first, first + entries - 1)).astype(np.int64)
    # pydicom 3.0 indexes an 8-bit LUT with uint8 indices, which wraps every entry past the
    # 256th; read the table as 16-bit entries instead (the values are the same).
    wide_item = Dataset()
    wide_item.LUTDescriptor = [entries % (1 << 16), first, max(bits, 16)]
    wide_item["LUTData"] = item["LUTData"]
    wide = Dataset()
    wide.file_meta = voi.file_meta
    wide.VOILUTSequence = [wide_item]
    table = apply_voi(np.arange(first, first + entries, dtype=np.int64), wide)
    # The descriptor's third value gives the output bits, but LUTs declaring 16 bits and
    # holding 12-bit data are common: read the range the data actually use (at least 8 bits).
    used = max(8, int(table.max()).bit_length())
    top = float((1 << min(bits, used)) - 1)
    fractions: Floats = table[inputs - first].astype(np.float64) / top
    return fractions


def _percentile_fraction(values: Floats, histogram: Histogram) -> Floats:
    """A window from the 0.5 and 99.5 percentiles of the frame's own values (no VOI given)."""
    counts = histogram()
    lo, hi = values_at_percentiles(values, counts, PERCENTILE_WINDOW)
    if hi <= lo:
        used = values[counts > 0]
        lo, hi = float(used.min()), float(used.max())
    if hi <= lo:
        return np.zeros_like(values, dtype=np.float64)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def _is_display_ready(header: PixelHeader, modality: Dataset) -> bool:
    """Unsigned data of 8 bits or fewer without a Modality LUT are display values already."""
    if header.bits_stored > 8 or header.pixel_representation:
        return False
    if _present(modality, "ModalityLUTSequence"):
        return False
    slope = float(modality.get("RescaleSlope", 1) or 1)
    intercept = float(modality.get("RescaleIntercept", 0) or 0)
    return slope == 1 and intercept == 0


def display_fraction(
    values: Floats,
    histogram: Histogram,
    header: PixelHeader,
    modality: Dataset,
    voi: Dataset,
) -> Floats:
    """Map Modality LUT output ``values`` to 0..1, 1 = white; ``histogram`` counts their pixels.

    PS3.4 N.2.1.1 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_N.2.1.1>: a VOI LUT Sequence, else the first window, else (our choice, nothing
    being given) the full range of 8-bit data or a robust percentile window.
    """
    if _present(voi, "VOILUTSequence"):
        try:
            fraction = _voi_lut_fraction(values, voi)
        except (ValueError, NotImplementedError, AttributeError, IndexError, KeyError) as exc:
            log.warning("voi_lut_ignored", error=str(exc))
        else:
            return _invert_if_monochrome1(fraction, header)
    if _present(voi, "WindowCenter") and _present(voi, "WindowWidth"):
        try:
            # PS3.3 C.11.2.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.11.2.1.2> Window Center and Window Width: LINEAR, LINEAR_EXACT and
            # SIGMOID (C.11.2.1.3); the first pair when several are given.
            windowed = apply_windowing(values, voi, index=0)
        except (ValueError, TypeError, IndexError) as exc:
            log.warning("voi_window_ignored", error=str(exc))
        else:
            return _invert_if_monochrome1(np.asarray(windowed) / _WINDOW_OUTPUT_MAX, header)
    if _is_display_ready(header, modality):
        fraction = values / float((1 << header.bits_stored) - 1)
    else:
        fraction = _percentile_fraction(values, histogram)
    return _invert_if_monochrome1(fraction, header)


def _invert_if_monochrome1(fraction: Floats, header: PixelHeader) -> Floats:
    # PS3.3 C.7.6.3.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.7.6.3.1.2>: MONOCHROME1 shows the minimum value as white. The Presentation LUT
    # Shape INVERSE that DX requires with it (C.8.11.6.1.2) is this same inversion.
    clipped = np.clip(fraction, 0.0, 1.0)
    return 1.0 - clipped if header.photometric_interpretation == "MONOCHROME1" else clipped


def _to_uint8(fraction: npt.NDArray[Any]) -> Grey8:
    scaled: Floats = np.rint(np.clip(fraction, 0.0, 1.0) * 255.0)
    return scaled.astype(np.uint8)


def grey_to_uint8(
    pixels: npt.NDArray[Any],
    header: PixelHeader,
    ds: Dataset,
    index: int,
    window: str = DEFAULT_WINDOW,
) -> Grey8:
    """Stored grey values of frame ``index`` to 8-bit display grey via one look-up table;
    ``window``, a preset of :data:`screener.imaging.window.WINDOW_PRESETS`, takes the
    place of the data set's VOI (``default``: the data set's own)."""
    if pixels.dtype.kind not in "iu" or pixels.dtype.itemsize > 2:
        raise ImageError(
            "undecodable_pixel_data",
            f"The decoder returned {pixels.dtype} samples; 8- or 16-bit integers are expected.",
        )
    unsigned = np.dtype(f"u{pixels.dtype.itemsize}")
    codes = pixels.view(unsigned)
    domain = np.arange(1 << (8 * pixels.dtype.itemsize), dtype=unsigned).view(pixels.dtype)

    def histogram() -> npt.NDArray[np.intp]:
        # only the percentile window needs it, and counting costs as much as the look-up
        return np.bincount(codes.ravel(), minlength=domain.size)

    modality = modality_dataset(ds, header, index)
    # int64 so that a Modality LUT's index arithmetic cannot overflow the pixels' own dtype
    values = np.asarray(apply_modality_lut(domain.astype(np.int64), modality), dtype=np.float64)
    voi = preset_voi(window, values, histogram, header)
    if voi is None:
        voi = voi_dataset(ds, header, index)
    table = _to_uint8(display_fraction(values, histogram, header, modality, voi))
    if codes.dtype == np.uint8 and np.array_equal(table, domain):
        return codes  # 8-bit display-ready data without a window: the table is the identity
    grey: Grey8 = np.take(table, codes)
    return grey


def colour_to_uint8(frame: Frame, header: PixelHeader) -> Grey8:
    """RGB (or Y of YBR_FULL) samples to 8-bit grey; colour images carry no VOI (PS3.3 C.11.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.11.2>)."""
    pixels = frame.pixels
    if frame.photometric_interpretation.startswith("YBR_FULL"):
        luma = pixels[..., 0].astype(np.float64)
    else:
        luma = pixels[..., :3].astype(np.float64) @ _LUMA
    return _to_uint8(luma / float((1 << header.bits_stored) - 1))


def frame_to_uint8(
    frame: Frame, header: PixelHeader, ds: Dataset, index: int, window: str = DEFAULT_WINDOW
) -> Grey8:
    """A decoded frame to 8-bit display grey, 0 = black; ``window`` is a preset name for a
    grey frame (colour images carry no VOI)."""
    if frame.pixels.ndim == 3:
        return colour_to_uint8(frame, header)
    return grey_to_uint8(frame.pixels, header, ds, index, window)
