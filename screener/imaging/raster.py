"""JPEG / PNG files to the canonical image (the training data's own format)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from screener.errors import ImageError

#: Side of the canonical square image; the training JPEGs are 224 x 224.
CANONICAL_SIZE = 224

#: Smallest side we accept: anything smaller cannot carry a diagnostic chest film.
MIN_SIDE = 64

Grey8 = npt.NDArray[np.uint8]


def resize_canonical(
    image: Grey8,
    size: int = CANONICAL_SIZE,
    *,
    box: tuple[float, float, float, float] | None = None,
) -> Grey8:
    """Resize a grey ``uint8`` image to ``size`` x ``size``, aspect ratio not kept.

    Pillow's bilinear filter widens its support when it shrinks, so a 2,000 px film is
    area-averaged rather than aliased: the same as the training images were made.

    ``box`` (left, upper, right, lower, in pixels, fractions allowed) is the region that
    holds the whole picture when it is not exactly the array, as after a reduced-resolution
    decode; a box reaching past the array's edge is served by repeating the edge pixels.
    """
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ImageError(
            "bad_canonical_input",
            f"expected a 2-D uint8 image, got dtype {image.dtype} with shape {image.shape}",
        )
    if box is None:
        if image.shape == (size, size):
            return image
    else:
        rows, columns = image.shape
        pad_rows = max(0, math.ceil(box[3]) - rows)
        pad_columns = max(0, math.ceil(box[2]) - columns)
        if pad_rows or pad_columns:
            image = np.pad(image, ((0, pad_rows), (0, pad_columns)), mode="edge")
    resized = Image.fromarray(np.ascontiguousarray(image), mode="L").resize(
        (size, size), resample=Image.Resampling.BILINEAR, box=box
    )
    return np.asarray(resized, dtype=np.uint8)


def _check_raster_size(width: int, height: int, bands: int) -> None:
    """The header's size against the decode budget (``worker.decode_max_pixels``), before a
    byte of the image is decoded: a few hundred bytes of PNG can declare gigabytes."""
    from screener.imaging import limits

    pixels = width * height * bands
    budget = limits.current().max_pixels
    if pixels > budget:
        raise ImageError(
            "image_too_large",
            f"The image is {width} x {height} px with {bands} band(s): {pixels:,} pixels, over "
            f"the budget of {budget:,} (worker.decode_max_pixels).",
        )


def load_raster(source: str | Path | bytes, size: int = CANONICAL_SIZE) -> Grey8:
    """Read a JPEG or PNG (path or bytes) into the canonical image.

    A 3-channel file of grey pixels (as the training set is) contributes its first channel.
    """
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            _check_raster_size(im.width, im.height, len(im.getbands()))
            im.load()
            if im.mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
                grey = np.asarray(im.convert("RGB"))[:, :, 0]
            elif im.mode in ("I;16", "I;16B", "I", "F"):
                arr = np.asarray(im, dtype=np.float64)
                lo, hi = float(arr.min()), float(arr.max())
                scale = 255.0 / (hi - lo) if hi > lo else 0.0
                grey = np.round((arr - lo) * scale).astype(np.uint8)
            else:
                grey = np.asarray(im.convert("L"))
    except Image.DecompressionBombError as exc:  # PIL's own cap, above ours when ours is raised
        raise ImageError("image_too_large", f"refused by the image decoder: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageError("unreadable_image", f"not a readable JPEG or PNG image: {exc}") from exc
    if min(grey.shape) < MIN_SIDE:
        raise ImageError(
            "image_too_small",
            f"The image is {grey.shape[1]} x {grey.shape[0]} px; at least {MIN_SIDE} px a side "
            "is needed.",
        )
    return resize_canonical(np.ascontiguousarray(grey, dtype=np.uint8), size)
