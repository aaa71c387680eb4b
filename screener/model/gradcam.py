"""Grad-CAM (Selvaraju et al., ICCV 2017) heat maps for a bundle's pneumonia score.

The feature map is the input of the model's global-pooling layer (``pool``): the last
spatial layer. The score differentiated is the pneumonia log-odds (the binary logit, or
``logsumexp(bacterial, viral) - normal`` for the type task). A coarse picture of where the
evidence lies, not a localisation of disease.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from screener.errors import ModelError
from screener.model.bundle import Bundle
from screener.model.preprocess import crop_box

POOL_LAYER = "pool"


def gradcam(bundle: Bundle, image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Heat map in [0, 1] with the canonical image's shape, for one canonical image.

    For an ensemble, the mean of its members' maps (each normalised to its own peak).
    """
    import tensorflow as tf

    from screener.model.architectures import members_of

    x = tf.convert_to_tensor(bundle.network_input(image[None]))
    maps = [_member_cam(member, x, bundle.task) for member in members_of(bundle.model)]
    cam = np.mean(maps, axis=0)
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else np.zeros_like(cam)
    # The network saw the bundle's centre crop: the map covers that box, zero outside it.
    top, left, h, w = crop_box(image.shape, bundle.preprocessing.crop)
    resized = Image.fromarray(cam.astype(np.float32), mode="F").resize(
        (w, h), resample=Image.Resampling.BILINEAR
    )
    out = np.zeros(image.shape, dtype=np.float32)
    out[top : top + h, left : left + w] = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    return out


def _member_cam(model: Any, x: Any, task: str) -> npt.NDArray[np.float64]:
    """One network's Grad-CAM at its feature-map resolution, normalised to its peak."""
    import keras
    import tensorflow as tf

    try:
        pool = model.get_layer(POOL_LAYER)
    except ValueError as exc:
        raise ModelError(f"model has no {POOL_LAYER!r} layer; Grad-CAM needs one") from exc
    start = model.layers.index(pool)
    features_model = keras.Model(model.inputs, pool.input)
    with tf.GradientTape() as tape:
        features = features_model(x, training=False)
        tape.watch(features)
        y = features
        for layer in model.layers[start:]:
            if layer.name == "probabilities":
                break
            y = layer(y, training=False)
        score = tf.reduce_logsumexp(y[:, 1:], axis=1) - y[:, 0] if task == "type" else y[:, 0]
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))[0].numpy().astype(np.float64)
    peak = float(cam.max())
    result: npt.NDArray[np.float64] = cam / peak if peak > 0 else np.zeros_like(cam)
    return result


def overlay(image: npt.NDArray[np.uint8], heat: npt.NDArray[np.float32], alpha: float = 0.4) -> Any:
    """RGB ``uint8`` picture: the grey film with the heat map in the jet colour map on top."""
    import matplotlib

    colours = matplotlib.colormaps["jet"](heat)[..., :3]
    grey = np.repeat(image[..., None].astype(np.float32) / 255.0, 3, axis=2)
    mix = (1.0 - alpha * heat[..., None]) * grey + alpha * heat[..., None] * colours
    return np.clip(np.round(mix * 255.0), 0, 255).astype(np.uint8)


def write_heatmap(bundle: Bundle, image: npt.NDArray[np.uint8], path: Path) -> Path:
    """Write the Grad-CAM overlay of one canonical image as a PNG of the same size."""
    picture = overlay(image, gradcam(bundle, image))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture, mode="RGB").save(path, format="PNG")
    return path
