"""Training-time augmentation suited to chest films.

Geometry: small rotation, shift and zoom (no flips: the heart is on the left, and a
vertical flip never occurs in a real film). Intensity: gamma, contrast and brightness before
the bundle's normalisation (mostly removed by histogram equalisation, which is the point:
the network sees what serving will see), Gaussian blur and noise, then a milder gamma and
contrast jitter *after* normalisation so the network does not depend on it being perfect.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

from screener.model.preprocess import PreprocessParams, normalise_one


@dataclass(frozen=True)
class AugmentParams:
    """Ranges of the random transforms (each drawn uniformly per image)."""

    rotate_deg: float = 7.0
    shift: float = 0.06
    zoom: tuple[float, float] = (0.9, 1.12)
    gamma: tuple[float, float] = (0.6, 1.6)
    contrast: tuple[float, float] = (0.6, 1.4)
    brightness: float = 0.15
    blur_p: float = 0.3
    blur_radius: tuple[float, float] = (0.3, 1.5)
    noise_p: float = 0.4
    noise_sigma: tuple[float, float] = (1.0, 10.0)
    post_gamma: tuple[float, float] = (0.8, 1.25)
    post_contrast: tuple[float, float] = (0.85, 1.15)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _affine(
    image: npt.NDArray[np.uint8], p: AugmentParams, rng: np.random.Generator
) -> Image.Image:
    size = image.shape[0]
    angle = math.radians(rng.uniform(-p.rotate_deg, p.rotate_deg))
    scale = rng.uniform(*p.zoom)
    tx, ty = rng.uniform(-p.shift, p.shift, size=2) * size
    c = (size - 1) / 2.0
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    # PIL maps output (x, y) to input (a x + b y + c, d x + e y + f): the inverse transform.
    coeffs = (
        cos,
        sin,
        c - cos * (c + tx) - sin * (c + ty),
        -sin,
        cos,
        c + sin * (c + tx) - cos * (c + ty),
    )
    return Image.fromarray(image, mode="L").transform(
        (size, size),
        Image.Transform.AFFINE,
        coeffs,
        resample=Image.Resampling.BILINEAR,
        fillcolor=0,
    )


def _intensity(x: npt.NDArray[np.float32], gamma: float, contrast: float, shift: float) -> Any:
    x = np.power(np.clip(x, 0.0, 1.0), gamma)
    return np.clip((x - 0.5) * contrast + 0.5 + shift, 0.0, 1.0)


def augment_one(
    image: npt.NDArray[np.uint8],
    params: PreprocessParams,
    aug: AugmentParams,
    rng: np.random.Generator,
) -> npt.NDArray[np.float32]:
    """Augment one canonical image and return the network input ``(size, size)`` in [0, 1]."""
    pil = _affine(image, aug, rng)
    if rng.random() < aug.blur_p:
        pil = pil.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(*aug.blur_radius))))
    x = np.asarray(pil, dtype=np.float32) / 255.0
    x = _intensity(
        x, rng.uniform(*aug.gamma), rng.uniform(*aug.contrast), rng.uniform(-1, 1) * aug.brightness
    )
    if rng.random() < aug.noise_p:
        x = x + rng.normal(0.0, rng.uniform(*aug.noise_sigma) / 255.0, size=x.shape)
    raw = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
    y = normalise_one(raw, params).astype(np.float32) / 255.0
    out: npt.NDArray[np.float32] = _intensity(
        y, rng.uniform(*aug.post_gamma), rng.uniform(*aug.post_contrast), 0.0
    ).astype(np.float32)
    return out


def augment_batch(
    images: npt.NDArray[np.uint8],
    params: PreprocessParams,
    aug: AugmentParams,
    rng: np.random.Generator,
) -> npt.NDArray[np.float32]:
    """Augment a ``(N, 224, 224)`` uint8 batch into a ``(N, size, size, 1)`` float32 batch."""
    out = np.empty((len(images), params.input_size, params.input_size, 1), dtype=np.float32)
    for i, image in enumerate(images):
        out[i, :, :, 0] = augment_one(image, params, aug, rng)
    return out
