"""Pixel data to stored values, one frame at a time, at reduced resolution where possible.

The model needs a 224 px image, yet a radiograph is 2,000 px or more a side, and decoding
all of it costs far more than scoring it. Two codecs can decode a smaller image directly:

* JPEG 2000 (ISO/IEC 15444-1) keeps the image as wavelet resolution levels; decoding
  ``r`` fewer levels gives the low-pass image at 1/2**r the size (OpenJPEG's "reduce",
  reached through Pillow, which links the same OpenJPEG library).
* JPEG DCT (ISO/IEC 10918-1, Baseline and Extended 8-bit) can be inverse-transformed at
  1/2, 1/4 or 1/8 scale (libjpeg's scaled IDCT, Pillow's ``Image.draft``).

Both keep the reduced image at least :data:`KEEP_FACTOR` times the canonical size, so the
final resize still averages several source pixels per output pixel. Every other transfer
syntax (JPEG-LS, RLE, JPEG Lossless, native) is decoded fully by pydicom. The values
returned are the stored values exactly as pydicom would return them, so the value
pipeline (Modality LUT, VOI LUT) is the same for both paths.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import simplejpeg
import structlog
from PIL import Image
from PIL.Jpeg2KImagePlugin import Jpeg2KImageFile
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import as_pixel_options, get_j2k_parameters
from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit

from screener.errors import ImageError
from screener.imaging.codestream import (
    J2K_SYNTAXES,
    SOF55,
    check_encapsulated_items,
    check_frame,
    check_native_length,
    corrupt,
)
from screener.imaging.dicom import PixelHeader, describe_syntax

log = structlog.get_logger(__name__)

#: A reduced decode keeps at least this many source pixels per canonical pixel (a side).
KEEP_FACTOR = 2

#: Pillow's draft mode offers libjpeg's scaled IDCT at 1/2, 1/4 and 1/8.
MAX_JPEG_LOG2 = 3

JPEG_DCT_SYNTAXES = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit})

#: JPEG 2000 codestream markers (ISO/IEC 15444-1 A.2): SOC, COD, SOT, SOD.
_SOC, _COD, _SOT, _SOD = 0xFF4F, 0xFF52, 0xFF90, 0xFF93

Pixels = npt.NDArray[Any]
#: A region of an array in pixels: left, upper, right, lower.
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Frame:
    """One decoded frame: stored values, (rows, columns) grey or (rows, columns, 3) colour."""

    pixels: Pixels
    #: The interpretation after decoding: pydicom hands YBR_FULL(_422) over as RGB.
    photometric_interpretation: str
    #: How many times smaller than Rows x Columns the codec decoded it (1: full size).
    scale: int = 1
    #: The region of ``pixels`` (left, upper, right, lower) that covers the whole image,
    #: when that is not exactly the array; see :func:`reduced_box`.
    box: Box | None = None


def stored_dtype(header: PixelHeader) -> np.dtype[Any]:
    """The dtype pydicom gives stored values: PS3.5 8.1.1 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_8.1.1>, Bits Allocated and signedness."""
    kind = "i" if header.pixel_representation else "u"
    return np.dtype(f"{kind}{header.bits_allocated // 8}")


def reduction_log2(side: int, target: int, max_log2: int) -> int:
    """The largest ``r <= max_log2`` with ``ceil(side / 2**r) >= target``."""
    r = 0
    while r < max_log2 and -(-side // (2 << r)) >= target:
        r += 1
    return r


def reduced_box(header: PixelHeader, r: int, low_pass_at_start: bool) -> Box:
    """The region of a frame decoded ``2**r`` times smaller that covers the whole image.

    It spans Columns / 2**r x Rows / 2**r, so a last partial pixel counts for its share.
    A JPEG 2000 low-pass sample ``i`` is centred on full-resolution sample ``i * 2**r``
    (ISO/IEC 15444-1 Annex F: the low-pass band is the even-indexed samples, filtered),
    the start of its box rather than its middle; moving the region by that phase keeps
    the image exactly in place.
    """
    factor = float(1 << r)
    phase = (0.5 - 0.5 / factor) if low_pass_at_start else 0.0
    return (
        phase,
        phase,
        header.columns / factor + phase,
        header.rows / factor + phase,
    )


def j2k_image_size(codestream: bytes) -> tuple[int, int] | None:
    """(rows, columns) from the SIZ marker that follows SOC (ISO/IEC 15444-1 A.5.1).

    SIZ is ``FF51 Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz ...`` (2, 2, 2, then 4-byte values).
    """
    if len(codestream) < 24 or codestream[:4] != b"\xff\x4f\xff\x51":
        return None
    x, y, x0, y0 = (int.from_bytes(codestream[i : i + 4], "big") for i in range(8, 24, 4))
    return y - y0, x - x0


def j2k_decomposition_levels(codestream: bytes) -> int | None:
    """Number of wavelet decomposition levels from the COD marker of the main header.

    ISO/IEC 15444-1 A.6.1: COD is ``FF52 Lcod Scod SGcod(4) SPcod``, the first SPcod byte
    being the number of decomposition levels. ``None`` if the header cannot be walked.
    """
    if codestream[:2] != _SOC.to_bytes(2, "big"):
        return None
    pos = 2
    while pos + 4 <= len(codestream):
        marker = int.from_bytes(codestream[pos : pos + 2], "big")
        if marker in (_SOT, _SOD):
            return None
        length = int.from_bytes(codestream[pos + 2 : pos + 4], "big")
        if marker == _COD and pos + 9 < len(codestream):
            return codestream[pos + 9]
        if length < 2:
            return None
        pos += 2 + length
    return None


def decode_j2k(codestream: bytes, reduce: int, header: PixelHeader) -> Pixels | None:
    """Decode a grey JPEG 2000 codestream ``reduce`` resolution levels down.

    Returns the stored values as pydicom's own JPEG 2000 decoder would (``reduce=0`` gives
    the same array), or ``None`` when the codestream is not a single component of at most
    16 bits.
    """
    params = get_j2k_parameters(codestream)
    precision = int(params.get("precision", 0))
    signed = bool(params.get("is_signed", False))
    if not 1 <= precision <= 16:
        return None
    # the size checks were made on Rows and Columns: decode nothing that claims otherwise
    if j2k_image_size(codestream) != (header.rows, header.columns):
        return None
    with Image.open(io.BytesIO(codestream)) as im:
        if not isinstance(im, Jpeg2KImageFile) or im.mode not in ("L", "I;16"):
            return None
        im.reduce = reduce
        im.load()
        decoded = np.asarray(im)
    # Pillow scales samples to fill 8 (L) or 16 (I;16) bits and offsets signed ones by
    # 2**(precision - 1) to make them unsigned; undo both to recover the codestream value.
    container = decoded.dtype.itemsize * 8
    values = np.right_shift(decoded.astype(np.int32), container - precision)
    full = 1 << precision
    if signed:
        values -= full >> 1
    # As pydicom does, the codestream's signedness yields to (0028,0103) Pixel Representation.
    if header.pixel_representation and not signed:
        values = np.where(values >= full >> 1, values - full, values)
    elif not header.pixel_representation and signed:
        values &= full - 1
    return values.astype(stored_dtype(header))


def decode_jpeg(jpeg: bytes, scale: int, header: PixelHeader, *, colour: bool = False) -> Pixels:
    """Decode an 8-bit JPEG with libjpeg-turbo's IDCT scaled down ``scale`` times (1, 2, 4, 8).

    Strict: a stream libjpeg finds damaged ("Corrupt JPEG data", "Premature end of JPEG
    file") raises ``corrupt_pixel_data`` instead of giving a patched-up image.
    """
    try:
        pixels = simplejpeg.decode_jpeg(
            jpeg,
            colorspace="RGB" if colour else "GRAY",
            min_height=-(-header.rows // scale),
            min_width=-(-header.columns // scale),
            strict=True,
        )
    except ValueError as exc:
        raise corrupt(f"the JPEG stream is damaged: {exc}") from exc
    return np.asarray(pixels if colour else pixels[..., 0])


def _reduced(encoded: bytes, header: PixelHeader, target: int) -> Frame | None:
    """Decode ``encoded`` at the smallest size that keeps ``target`` px, or ``None``."""
    syntax = header.transfer_syntax
    if syntax in J2K_SYNTAXES:
        levels = j2k_decomposition_levels(encoded)
        r = reduction_log2(header.min_side, target, levels or 0)
        pixels = decode_j2k(encoded, r, header) if r else None
    else:
        r = reduction_log2(header.min_side, target, MAX_JPEG_LOG2)
        pixels = decode_jpeg(encoded, 1 << r, header).astype(stored_dtype(header), copy=False)
    expected = (-(-header.rows >> r), -(-header.columns >> r))
    if pixels is None or pixels.shape != expected:
        return None
    box = reduced_box(header, r, low_pass_at_start=syntax in J2K_SYNTAXES)
    return Frame(pixels, header.photometric_interpretation, 1 << r, box)


def _reducible(header: PixelHeader) -> bool:
    if not header.is_grey:
        return False
    if header.transfer_syntax in J2K_SYNTAXES:
        return True
    return (
        header.transfer_syntax in JPEG_DCT_SYNTAXES
        and header.bits_stored <= 8
        and not header.pixel_representation
    )


def _encoded_frames(ds: Dataset, header: PixelHeader) -> list[bytes]:
    # PS3.5 A.4 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_A.4>: a frame is one or more fragments; the offset tables say where each starts.
    check_encapsulated_items(ds.PixelData)
    extended: tuple[bytes, bytes] | None = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        frames = list(
            generate_frames(ds.PixelData, number_of_frames=header.frames, extended_offsets=extended)
        )
    except Exception as exc:  # pydicom's parser of the item sequence: damaged structure
        raise corrupt(f"the encapsulated Pixel Data cannot be split into frames: {exc}") from exc
    if len(frames) != header.frames:
        raise corrupt(
            f"the encapsulated Pixel Data holds {len(frames)} frame(s); (0028,0008) Number "
            f"of Frames says {header.frames}"
        )
    return frames


def check_pixel_data(
    ds: Dataset, header: PixelHeader, *, strict_jpeg: bool = True
) -> list[bytes] | None:
    """Every frame's codec header against the Image Pixel Module, before any decoding.

    With ``strict_jpeg`` an 8-bit JPEG frame is also run through libjpeg-turbo's strict
    decoder at 1/8 scale (every coded bit is read): leave it off only when the frame is
    decoded that way anyway (:func:`decode_jpeg`).

    Returns the encoded frames (``None`` for native pixel data); raises ``ImageError``
    ``corrupt_pixel_data`` when the data disagree with the module or their transfer syntax.
    """
    element = ds["PixelData"]
    if not header.transfer_syntax.is_compressed:  # PS3.5 8.1.1 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_8.1.1> native pixel data
        if element.is_undefined_length:
            raise corrupt(
                f"the Pixel Data are encapsulated (compressed) but the transfer syntax is "
                f"{describe_syntax(header.transfer_syntax)}, which is not compressed"
            )
        check_native_length(
            len(ds.PixelData),
            rows=header.rows,
            columns=header.columns,
            frames=header.frames,
            samples=header.samples_per_pixel,
            bits_allocated=header.bits_allocated,
        )
        return None
    if not element.is_undefined_length:
        raise corrupt(
            f"transfer syntax {describe_syntax(header.transfer_syntax)} needs encapsulated "
            "Pixel Data, but the element has a defined length (native data)"
        )
    frames = _encoded_frames(ds, header)
    for index, frame in enumerate(frames):
        stream = check_frame(
            frame,
            header.transfer_syntax,
            rows=header.rows,
            columns=header.columns,
            samples=header.samples_per_pixel,
            bits_allocated=header.bits_allocated,
            index=index,
        )
        jpeg_dct = stream is not None and stream.kind not in (0, SOF55)
        if strict_jpeg and jpeg_dct and stream is not None and stream.precision == 8:
            # 8-bit JPEG: libjpeg-turbo, strict, finds damaged coded data the marker walk cannot
            decode_jpeg(frame, 8, header, colour=not header.is_grey)
    return frames


def _full(ds: Dataset, header: PixelHeader, index: int) -> Frame:
    """Decode frame ``index`` at full size with pydicom; wrap any decoder failure.

    A warning from a decoder plug-in (damaged data it decoded anyway) is a failure.
    """
    options = as_pixel_options(
        ds,
        number_of_frames=header.frames,
        samples_per_pixel=header.samples_per_pixel,
        bits_stored=header.bits_stored,
        pixel_representation=header.pixel_representation,
        photometric_interpretation=header.photometric_interpretation,
    )
    try:
        decoder = get_decoder(header.transfer_syntax)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            warnings.simplefilter("error", RuntimeWarning)
            pixels, properties = decoder.as_array(ds, index=index, validate=True, **options)
    except (UserWarning, RuntimeWarning) as exc:
        detail = " ".join(str(exc).split())
        raise corrupt(f"the decoder reports damaged data in frame {index + 1}: {detail}") from exc
    except MemoryError:
        raise
    except Exception as exc:  # any decoder plug-in failure: the boundary to the codecs
        detail = " ".join(str(exc).split())
        raise ImageError(
            "undecodable_pixel_data",
            f"Frame {index + 1} of the pixel data in transfer syntax "
            f"{describe_syntax(header.transfer_syntax)} could not be decoded: {detail}",
        ) from exc
    pi = str(properties.get("photometric_interpretation", header.photometric_interpretation))
    return Frame(pixels, pi, 1)


def iter_frames(
    ds: Dataset, header: PixelHeader, size: int, *, fast: bool = True
) -> Iterator[Frame]:
    """Yield every frame of ``ds``; with ``fast``, as small as ``KEEP_FACTOR * size`` allows.

    Every frame's codec header is checked first (:func:`check_pixel_data`), so nothing is
    decoded from a stream that disagrees with the module. A damaged 8-bit JPEG raises
    ``corrupt_pixel_data``; a reduced JPEG 2000 decode that fails falls back to pydicom's
    full decode, whose failure raises :class:`ImageError` ``undecodable_pixel_data``.
    """
    reducible = fast and _reducible(header)
    strict_jpeg = not (reducible and header.transfer_syntax in JPEG_DCT_SYNTAXES)
    encoded = check_pixel_data(ds, header, strict_jpeg=strict_jpeg)
    for index in range(header.frames):
        if reducible and encoded is not None:
            try:
                frame = _reduced(encoded[index], header, KEEP_FACTOR * size)
            except (ImageError, MemoryError):
                raise
            except Exception as exc:  # a failed shortcut is not an error: decode in full
                log.warning(
                    "reduced_decode_failed",
                    transfer_syntax=str(header.transfer_syntax),
                    frame=index,
                    error=str(exc),
                )
                reducible, frame = False, None
            if frame is not None:
                yield frame
                continue
        yield _full(ds, header, index)
