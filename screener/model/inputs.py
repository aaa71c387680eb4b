"""Reading images for `screener predict` / `screener evaluate`: DICOM, JPEG or PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

Grey8 = npt.NDArray[np.uint8]


def load_frames(path: str | Path) -> list[Grey8]:
    """Canonical images of one file: every frame of a DICOM object, or the one raster image.

    Goes through ``screener.imaging.load_image``, the daemon's own pixel pipeline, so a file
    is scored here exactly as the daemon would score it. Raises ``ImageError`` with a reason.
    """
    from screener.imaging import load_image

    return list(load_image(Path(path)))
