"""Reading a DICOM data set and checking its Image Pixel Module before any decoding.

Everything here is cheap: it reads attributes, never pixels. A data set that passes
:func:`pixel_header` can be handed to the decoders without risk of an absurd allocation.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import get_nr_frames
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from screener.errors import ImageError
from screener.imaging import limits
from screener.imaging.raster import MIN_SIDE

#: Largest Rows or Columns accepted; no radiograph detector comes near it.
MAX_SIDE = 16384


#: Offset and value of the DICOM prefix after the 128-byte preamble (PS3.10 7.1 <https://dicom.nema.org/medical/dicom/current/output/html/part10.html#sect_7.1>).
DICM_OFFSET = 128
DICM_PREFIX = b"DICM"

GREY = frozenset({"MONOCHROME1", "MONOCHROME2"})

#: Colour interpretations we turn into grey. PS3.3 C.7.6.3.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.7.6.3.1.2>: YBR_ICT / YBR_RCT are
#: undone by the JPEG 2000 decoder and YBR_FULL(_422) by pydicom, so all arrive as RGB.
COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"})


@dataclass(frozen=True)
class PixelHeader:
    """The Image Pixel Module (PS3.3 C.7.6.3 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.7.6.3>) values the pipeline needs, already checked."""

    rows: int
    columns: int
    frames: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    transfer_syntax: UID

    @property
    def is_grey(self) -> bool:
        """True for MONOCHROME1 / MONOCHROME2."""
        return self.photometric_interpretation in GREY

    @property
    def min_side(self) -> int:
        """The shorter of Rows and Columns."""
        return min(self.rows, self.columns)


def describe_syntax(uid: UID) -> str:
    """Name a transfer syntax the way a PACS administrator looks it up: name and UID."""
    name = uid.name
    return f"{name} ({uid})" if name != str(uid) else f"'{uid}'"


def has_dicom_prefix(head: bytes) -> bool:
    """True when ``head`` (the first bytes of a file) carries the PS3.10 <https://dicom.nema.org/medical/dicom/current/output/html/part10.html> 'DICM' prefix."""
    return head[DICM_OFFSET : DICM_OFFSET + len(DICM_PREFIX)] == DICM_PREFIX


def read_dataset(source: str | Path | bytes | Dataset) -> Dataset:
    """Parse ``source`` into a data set; a :class:`Dataset` is returned as it is.

    Tolerant on read: a data set without preamble and File Meta Information is accepted.
    """
    if isinstance(source, Dataset):
        return source
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        ds = pydicom.dcmread(fp, force=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ImageError("unreadable_image", f"The file cannot be read: {reason}.") from exc
    except MemoryError:
        raise
    except Exception as exc:  # the boundary to pydicom's parser: any failure means unreadable
        raise ImageError(
            "unreadable_image", f"The data are not a readable DICOM data set: {exc}."
        ) from exc
    if len(ds) == 0:
        raise ImageError(
            "unreadable_image", "The data are not a DICOM data set: no element could be read."
        )
    return ds


def transfer_syntax(ds: Dataset) -> UID:
    """The data set's Transfer Syntax UID, inferred from its encoding when File Meta is absent.

    Inference is only safe for native (uncompressed) pixel data: encapsulated pixel data
    without a stated transfer syntax cannot be decoded.
    """
    file_meta = getattr(ds, "file_meta", None)
    stated = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if stated:
        return UID(str(stated))
    if "PixelData" in ds and ds["PixelData"].is_undefined_length:
        raise ImageError(
            "undecodable_pixel_data",
            "The pixel data are compressed (encapsulated) but the data set states no "
            "(0002,0010) Transfer Syntax UID, so the codec is unknown.",
        )
    implicit, little = ds.original_encoding
    if implicit or implicit is None:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _int_attribute(ds: Dataset, keyword: str, tag: str, default: int | None = None) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        if default is not None:
            return default
        raise ImageError(
            "unreadable_image", f"The data set has no {tag} {keyword}, which an image needs."
        )
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise ImageError(
            "unreadable_image", f"{tag} {keyword} has the invalid value {value!r}."
        ) from exc


def _check_pixel_data(ds: Dataset) -> None:
    if "PixelData" in ds and ds["PixelData"].value:
        return
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        detail = "it has Float Pixel Data, which screener does not read"
    elif "PixelData" in ds:
        detail = "the element is empty"
    else:
        detail = "the element is absent"
    sop_class = ds.get("SOPClassUID")
    where = f" (SOP Class {UID(str(sop_class)).name})" if sop_class else ""
    raise ImageError(
        "no_pixel_data", f"The data set{where} has no (7FE0,0010) Pixel Data: {detail}."
    )


def _check_photometric(ds: Dataset, samples: int) -> str:
    # PS3.3 C.7.6.3.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.7.6.3.1.2> Photometric Interpretation
    value = ds.get("PhotometricInterpretation")
    if not value:
        raise ImageError(
            "unsupported_photometric_interpretation",
            "(0028,0004) Photometric Interpretation is absent; MONOCHROME1, MONOCHROME2 "
            "or RGB is expected.",
        )
    pi = str(value).strip().upper()
    expected_samples = 1 if pi in GREY else 3
    if pi not in GREY | COLOUR:
        raise ImageError(
            "unsupported_photometric_interpretation",
            f"(0028,0004) Photometric Interpretation '{pi}' is not supported; MONOCHROME1, "
            f"MONOCHROME2, RGB or YBR_FULL is expected.",
        )
    if samples != expected_samples:
        raise ImageError(
            "unsupported_photometric_interpretation",
            f"(0028,0004) Photometric Interpretation '{pi}' needs {expected_samples} "
            f"sample(s) per pixel, but (0028,0002) Samples per Pixel is {samples}.",
        )
    return pi


def _check_syntax(uid: UID) -> None:
    try:
        decoder = get_decoder(uid)
    except NotImplementedError as exc:
        raise ImageError(
            "undecodable_pixel_data",
            f"Transfer syntax {describe_syntax(uid)} is not supported by any installed decoder.",
        ) from exc
    if not decoder.is_available:
        raise ImageError(
            "undecodable_pixel_data",
            f"Transfer syntax {describe_syntax(uid)} needs a decoder plug-in that is not "
            "installed.",
        )


def _check_size(rows: int, columns: int, frames: int, samples: int, bits: int) -> None:
    if rows < MIN_SIDE or columns < MIN_SIDE:
        raise ImageError(
            "image_too_small",
            f"The image is {columns} x {rows} px (Columns x Rows); at least {MIN_SIDE} px "
            "a side is needed.",
        )
    if rows > MAX_SIDE or columns > MAX_SIDE:
        raise ImageError(
            "image_too_large",
            f"The image is {columns} x {rows} px (Columns x Rows); at most {MAX_SIDE} px a "
            "side is accepted.",
        )
    pixels = rows * columns * frames * samples
    budget = limits.current().max_pixels
    if pixels > budget:
        raise ImageError(
            "image_too_large",
            f"{frames} frame(s) of {columns} x {rows} px with {samples} sample(s) are "
            f"{pixels:,} pixels, over the budget of {budget:,} (worker.decode_max_pixels); "
            f"decoded at {bits} bits they would need {pixels * (bits // 8) / (1 << 30):.1f} GiB.",
        )


def pixel_header(ds: Dataset) -> PixelHeader:
    """Check the Image Pixel Module of ``ds`` before decoding; raise :class:`ImageError`.

    The order of the checks gives the most useful reason first: no pixels at all, an
    interpretation we cannot show, an absurd size, then a codec we lack.
    """
    _check_pixel_data(ds)
    rows = _int_attribute(ds, "Rows", "(0028,0010)")
    columns = _int_attribute(ds, "Columns", "(0028,0011)")
    samples = _int_attribute(ds, "SamplesPerPixel", "(0028,0002)", default=1)
    bits_allocated = _int_attribute(ds, "BitsAllocated", "(0028,0100)")
    bits_stored = _int_attribute(ds, "BitsStored", "(0028,0101)", default=bits_allocated)
    representation = _int_attribute(ds, "PixelRepresentation", "(0028,0103)", default=0)
    pi = _check_photometric(ds, samples)
    if bits_allocated not in (8, 16) or not 1 <= bits_stored <= bits_allocated:
        raise ImageError(
            "undecodable_pixel_data",
            f"(0028,0100) Bits Allocated {bits_allocated} with (0028,0101) Bits Stored "
            f"{bits_stored} is not supported; 8 or 16 bits allocated are expected.",
        )
    frames = max(1, int(get_nr_frames(ds, warn=False)))
    _check_size(rows, columns, frames, samples, bits_allocated)
    uid = transfer_syntax(ds)
    _check_syntax(uid)
    return PixelHeader(
        rows=rows,
        columns=columns,
        frames=frames,
        samples_per_pixel=samples,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        pixel_representation=1 if representation else 0,
        photometric_interpretation=pi,
        transfer_syntax=uid,
    )
