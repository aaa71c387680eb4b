"""The pixel pipeline's entry points: a DICOM data set or an image file to canonical images.

``load_dicom``: read -> check the Image Pixel Module -> decode each frame (reduced where
the codec allows) -> Modality LUT -> VOI LUT -> MONOCHROME1 -> 8 bits -> 224 x 224.
``load_image``: recognise DICOM by content, else read JPEG / PNG like the training data.
"""

from __future__ import annotations

from pathlib import Path

import structlog
from pydicom.dataset import Dataset

from screener.errors import ImageError
from screener.imaging.decode import iter_frames
from screener.imaging.dicom import (
    DICM_OFFSET,
    DICM_PREFIX,
    has_dicom_prefix,
    pixel_header,
    read_dataset,
)
from screener.imaging.raster import CANONICAL_SIZE, Grey8, load_raster, resize_canonical
from screener.imaging.voi import frame_to_uint8

log = structlog.get_logger(__name__)

#: Signatures of the raster formats the training data come in.
_JPEG_SOI = b"\xff\xd8\xff"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_dicom(
    source: str | Path | bytes | Dataset, size: int = CANONICAL_SIZE, *, fast: bool = True
) -> list[Grey8]:
    """One canonical image per frame of a DICOM data set (path, bytes or parsed).

    ``fast`` lets JPEG 2000 and JPEG decode at reduced resolution (never below twice
    ``size``); ``fast=False`` decodes every pixel, for comparison. Every failure raises
    :class:`ImageError`; the caller's data set is not modified.
    """
    ds = read_dataset(source)
    try:
        header = pixel_header(ds)
        images: list[Grey8] = []
        scale = 1
        for index, frame in enumerate(iter_frames(ds, header, size, fast=fast)):
            scale = max(scale, frame.scale)
            grey = frame_to_uint8(frame, header, ds, index)
            images.append(resize_canonical(grey, size, box=frame.box))
    except (ImageError, MemoryError):  # MemoryError: the decode process's cap, its own reason
        raise
    except Exception as exc:  # the stage boundary: nothing but ImageError leaves it
        raise ImageError(
            "undecodable_pixel_data",
            f"The pixel data could not be turned into an image ({type(exc).__name__}: {exc}).",
        ) from exc
    log.debug(
        "dicom_loaded",
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        transfer_syntax=str(header.transfer_syntax),
        frames=len(images),
        decode_scale=scale,
    )
    return images


def _head(source: str | Path | bytes, n: int) -> bytes:
    if isinstance(source, bytes):
        return source[:n]
    try:
        with open(source, "rb") as f:
            return f.read(n)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ImageError("unreadable_image", f"The file cannot be read: {reason}.") from exc


def _dataset_without_preamble(source: str | Path | bytes) -> Dataset | None:
    """The data set if ``source`` parses as DICOM without preamble and describes an image."""
    try:
        ds = read_dataset(source)
    except ImageError:
        return None
    try:
        has_image = "Rows" in ds and "Columns" in ds and ds.Rows and ds.Columns
    except Exception:  # force-parsed junk can fail on first access of any element
        return None
    return ds if has_image else None


def load_image(
    source: str | Path | bytes, size: int = CANONICAL_SIZE, *, fast: bool = True
) -> list[Grey8]:
    """Canonical images from DICOM (recognised by content), JPEG or PNG.

    DICOM is recognised by the 'DICM' prefix after the preamble (PS3.10 7.1 <https://dicom.nema.org/medical/dicom/current/output/html/part10.html#sect_7.1>), or as a data
    set without preamble with Rows and Columns; a JPEG or PNG gives a list of one image.
    """
    head = _head(source, DICM_OFFSET + len(DICM_PREFIX))
    if has_dicom_prefix(head):
        return load_dicom(source, size, fast=fast)
    if head.startswith((_JPEG_SOI, _PNG_SIGNATURE)):
        return [load_raster(source, size)]
    if head and (ds := _dataset_without_preamble(source)) is not None:
        return load_dicom(ds, size, fast=fast)
    raise ImageError(
        "not_an_image",
        "The data are neither DICOM (no 'DICM' prefix at byte 128 and no image attributes "
        "without one) nor a JPEG or PNG image.",
    )
