"""Canonical image -> network input: the one preprocessing function shared by training and serving.

The parameters live in the bundle's ``model.json`` under ``"preprocessing"``, so a bundle
always feeds its network exactly what it was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from screener.errors import ModelError

#: Intensity normalisations a bundle may ask for.
NORMALISATIONS = ("equalize", "minmax", "none")

#: Fraction of the image side ignored at each border when the histogram is counted:
#: burnt-in markers and collimator edges sit there and should not set the mapping.
HIST_MARGIN = 0.08


@dataclass(frozen=True)
class PreprocessParams:
    """How a canonical ``uint8`` image becomes the network input.

    ``normalisation``: ``equalize`` maps each image through its own cumulative histogram
    (counted inside the central ``1 - 2 * HIST_MARGIN`` of the film), which removes most
    exposure, contrast and gamma differences between acquisitions; ``minmax`` stretches the
    1st..99th percentile to 0..255; ``none`` leaves the pixels as they are. ``crop`` keeps
    the centred square of that fraction of the side first (a field-of-view normalisation that
    drops borders, collimation and burnt-in text; 1.0 keeps the whole film). The result is
    resized to ``input_size`` and scaled to ``[0, 1]`` as a ``(N, size, size, 1)`` float32 batch.
    """

    input_size: int = 192
    normalisation: str = "equalize"
    crop: float = 1.0

    def __post_init__(self) -> None:
        if self.normalisation not in NORMALISATIONS:
            raise ModelError(
                f"preprocessing normalisation {self.normalisation!r} is not one of {NORMALISATIONS}"
            )
        if not 32 <= self.input_size <= 1024:
            raise ModelError(f"input size {self.input_size} px is outside 32..1024")
        if not 0.5 <= self.crop <= 1.0:
            raise ModelError(f"centre crop {self.crop} is outside 0.5..1.0")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "hist_margin": HIST_MARGIN, "scale": "0..1", "channels": 1}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreprocessParams:
        return cls(
            input_size=int(data["input_size"]),
            normalisation=str(data["normalisation"]),
            crop=float(data.get("crop", 1.0)),
        )


def equalize(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Histogram-equalise one grey image, counting the histogram away from the borders."""
    h, w = image.shape
    mh, mw = int(h * HIST_MARGIN), int(w * HIST_MARGIN)
    centre = image[mh : h - mh, mw : w - mw]
    hist = np.bincount(centre.ravel(), minlength=256).astype(np.float64)
    cdf = np.cumsum(hist)
    lo = cdf[cdf > 0][0]
    span = cdf[-1] - lo
    if span <= 0:
        return np.zeros_like(image)
    lut = np.clip(np.round((cdf - lo) / span * 255.0), 0, 255).astype(np.uint8)
    out: npt.NDArray[np.uint8] = lut[image]
    return out


def stretch(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Stretch the 1st..99th percentile of one grey image to 0..255."""
    lo, hi = np.percentile(image, (1.0, 99.0))
    if hi <= lo:
        return np.zeros_like(image)
    scaled = (image.astype(np.float32) - lo) * (255.0 / (hi - lo))
    out: npt.NDArray[np.uint8] = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    return out


def crop_box(shape: tuple[int, ...], fraction: float) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the centred ``fraction`` of each side of ``shape``."""
    h, w = shape[0], shape[1]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def centre_crop(image: npt.NDArray[np.uint8], fraction: float) -> npt.NDArray[np.uint8]:
    """The centred region of ``fraction`` of each side of one grey image."""
    top, left, ch, cw = crop_box(image.shape, fraction)
    return image[top : top + ch, left : left + cw]


def normalise_one(image: npt.NDArray[np.uint8], params: PreprocessParams) -> npt.NDArray[np.uint8]:
    """Crop, intensity-normalise and resize one canonical image (still ``uint8``)."""
    if params.crop < 1.0:
        image = centre_crop(image, params.crop)
    if params.normalisation == "equalize":
        image = equalize(image)
    elif params.normalisation == "minmax":
        image = stretch(image)
    if image.shape != (params.input_size, params.input_size):
        resized = Image.fromarray(image, mode="L").resize(
            (params.input_size, params.input_size), resample=Image.Resampling.BILINEAR
        )
        image = np.asarray(resized, dtype=np.uint8)
    return image


def preprocess(images: npt.NDArray[np.uint8], params: PreprocessParams) -> npt.NDArray[np.float32]:
    """Turn a ``(N, H, W)`` uint8 batch of canonical images into the network's float input."""
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ModelError(
            "expected a (N, H, W) uint8 batch of canonical images, "
            f"got {images.dtype} {images.shape}"
        )
    out = np.empty((len(images), params.input_size, params.input_size, 1), dtype=np.float32)
    for i, image in enumerate(images):
        out[i, :, :, 0] = normalise_one(image, params)
    out *= np.float32(1.0 / 255.0)
    return out
