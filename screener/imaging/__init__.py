"""The pixel pipeline: from a DICOM data set or an image file to a canonical grey image.

The *canonical image* is what every training image is: a ``uint8`` array of shape
``(CANONICAL_SIZE, CANONICAL_SIZE)``, grey, 0 = black, resized without keeping the aspect
ratio, as the training data set's images were resized to 224 x 224. The model package turns it into the network's
input (intensity normalisation, resolution) from the parameters in the bundle.

Modules, in pipeline order: :mod:`~screener.imaging.dicom` (read and check the Image Pixel
Module), :mod:`~screener.imaging.decode` (frames, reduced-resolution decoding),
:mod:`~screener.imaging.voi` (Modality LUT, VOI LUT, MONOCHROME1, 8 bits),
:mod:`~screener.imaging.raster` (JPEG / PNG, the final resize) and
:mod:`~screener.imaging.loader` (the entry points).
"""

from __future__ import annotations

from screener.imaging.loader import load_dicom, load_image
from screener.imaging.raster import CANONICAL_SIZE, load_raster, resize_canonical

__all__ = ["CANONICAL_SIZE", "load_dicom", "load_image", "load_raster", "resize_canonical"]
