"""Window presets for reading a grey film on the study page (MONOCHROME1 / MONOCHROME2).

A preset replaces the VOI step of the grayscale pipeline (PS3.4 N.2.1 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_N.2.1>) with one linear
window (PS3.3 C.11.2.1.3.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.11.2.1.3.2>, LINEAR_EXACT) made from the frame's own values after the
Modality LUT; the rest of the pipeline is unchanged, MONOCHROME1 inversion included
(PS3.3 C.7.6.3.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.7.6.3.1.2>). CR and DX values are detector exposure, not Hounsfield units, so
fixed CT windows (lung, mediastinum, bone) mean nothing here: every preset is relative to
the frame. ``default`` is what the model sees and what the page always showed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.valuerep import DSfloat

from screener.imaging.dicom import PixelHeader

#: name -> label shown on the study page, in the order shown.
#:
#: - ``default``, *As sent*: the data set's own VOI (its VOI LUT, else its first window,
#:   PS3.4 N.2.1.1 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_N.2.1.1>), else screener's choice (8-bit data as they are, or the 0.5th-99.5th
#:   percentile window): the picture the model is given.
#: - ``wide``, *Full range*: from the frame's lowest to its highest value, nothing clipped;
#:   shows what a sender's narrow window or LUT cut off (collimation edges, skin line,
#:   burnt-out or saturated regions).
#: - ``contrast``, *More contrast*: the 5th to 95th percentile of the frame's values; the
#:   tails go black and white and the body's middle range is spread over more grey levels
#:   (subtle lines and nodules over the lung fields).
#: - ``dense``, *Dense areas*: the brighter half of the picture (median to the 99.5th
#:   percentile of what is shown bright), to look into the mediastinum, behind the heart
#:   and below the diaphragm, which the as-sent window leaves nearly white.
#:
#: The percentiles of ``contrast`` and ``dense`` count the pixels between the frame's lowest
#: and highest value only (see :func:`_between_extremes`).
WINDOW_PRESETS: dict[str, str] = {
    "default": "As sent",
    "wide": "Full range",
    "contrast": "More contrast",
    "dense": "Dense areas",
}
DEFAULT_WINDOW = "default"

#: ``contrast``: percentiles of the frame's values that bound the window.
CONTRAST_PERCENTILES = (5.0, 95.0)
#: ``dense``: percentiles of brightness as shown (high values in MONOCHROME2, low in
#: MONOCHROME1) that bound the window.
DENSE_PERCENTILES = (50.0, 99.5)

Floats = npt.NDArray[np.float64]
Counts = npt.NDArray[np.intp]
#: Pixel count per stored value, computed on demand.
Histogram = Callable[[], Counts]


def window_named(name: str | None) -> str:
    """The preset called ``name``; an unknown name, or none, is :data:`DEFAULT_WINDOW`."""
    return name if name in WINDOW_PRESETS else DEFAULT_WINDOW


def values_at_percentiles(
    values: Floats, counts: Counts, percentiles: Sequence[float]
) -> list[float]:
    """The value below which ``p`` percent of the pixels lie, for each ``p``; ``values``
    are the Modality LUT outputs of the stored values and ``counts`` their pixels."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    cumulative = np.cumsum(counts[order])
    total = float(cumulative[-1])
    return [float(ordered[np.searchsorted(cumulative, p / 100 * total)]) for p in percentiles]


def _between_extremes(values: Floats, counts: Counts) -> Counts:
    """``counts`` without the pixels at the frame's lowest and highest value: on a
    radiograph those are mostly background, collimation and saturated detector, and a
    percentile that lands on them gives the full range again. All the counts when nothing
    lies between."""
    used = values[counts > 0]
    inner: Counts = np.where((values > used.min()) & (values < used.max()), counts, 0)
    return inner if inner.any() else counts


def _bounds(name: str, values: Floats, counts: Counts, header: PixelHeader) -> tuple[float, float]:
    if name == "wide":
        used = values[counts > 0]
        return float(used.min()), float(used.max())
    inner = _between_extremes(values, counts)
    if name == "contrast":
        lo, hi = values_at_percentiles(values, inner, CONTRAST_PERCENTILES)
        return lo, hi
    # "dense": MONOCHROME1 shows its lowest values brightest, so the bright half is low
    low, high = DENSE_PERCENTILES
    if header.photometric_interpretation == "MONOCHROME1":
        low, high = 100.0 - high, 100.0 - low
    lo, hi = values_at_percentiles(values, inner, (low, high))
    return lo, hi


def preset_voi(
    name: str, values: Floats, histogram: Histogram, header: PixelHeader
) -> Dataset | None:
    """The VOI LUT Module (PS3.3 C.11.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.11.2>) of preset ``name`` for a frame, alone in a data
    set; ``None`` for ``default`` (the data set's own VOI), or when the frame is one flat
    value and no window can be made from it."""
    name = window_named(name)
    if name == DEFAULT_WINDOW:
        return None
    lo, hi = _bounds(name, values, histogram(), header)
    if not hi > lo:
        return None
    voi = Dataset()
    # Bits Stored 16, unsigned: apply_windowing's output is then 0..65535, as for the
    # data set's own window (screener.imaging.voi.voi_dataset)
    voi.BitsStored = 16
    voi.PixelRepresentation = 0
    voi.PhotometricInterpretation = "MONOCHROME2"
    # PS3.3 C.11.2.1.3.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.11.2.1.3.2> LINEAR_EXACT: lo maps to the darkest output, hi to the brightest
    voi.WindowCenter = DSfloat((lo + hi) / 2, auto_format=True)
    voi.WindowWidth = DSfloat(hi - lo, auto_format=True)
    voi.VOILUTFunction = "LINEAR_EXACT"
    return voi
