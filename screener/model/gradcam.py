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


def heat_at(heat: npt.NDArray[np.float32], shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
    """The heat map resized (bilinear) to a picture of ``shape`` (rows, columns), in [0, 1]."""
    if heat.shape != shape[:2]:
        heat = np.asarray(
            Image.fromarray(heat, mode="F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
        )
    return np.clip(heat, 0.0, 1.0)


def overlay(image: npt.NDArray[np.uint8], heat: npt.NDArray[np.float32], alpha: float = 0.4) -> Any:
    """RGB ``uint8`` picture: the grey film with the heat map in the jet colour map on top."""
    import matplotlib

    colours = matplotlib.colormaps["jet"](heat)[..., :3]
    grey = np.repeat(image[..., None].astype(np.float32) / 255.0, 3, axis=2)
    mix = (1.0 - alpha * heat[..., None]) * grey + alpha * heat[..., None] * colours
    return np.clip(np.round(mix * 255.0), 0, 255).astype(np.uint8)


#: The long side of the heat-map picture's film, in pixels.
DISPLAY_LONG_SIDE = 1024


def display_frames(source: str | Path | bytes, long_side: int = DISPLAY_LONG_SIDE) -> list[Any]:
    """The film's frames through screener's pixel pipeline at a readable size, in the film's
    own proportions (the model's input is square; the picture is not). ``source`` is a file
    or the file's bytes."""
    from screener.imaging import load_image

    frames = load_image(source if isinstance(source, bytes) else str(source), size=long_side,
                        fast=False)  # fmt: skip
    rows, columns = _proportions(source, frames[0].shape)
    scale = long_side / max(rows, columns)
    size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    return [
        np.asarray(Image.fromarray(f, mode="L").resize(size, Image.Resampling.BILINEAR))
        for f in frames
    ]


def _proportions(source: str | Path | bytes, fallback: tuple[int, ...]) -> tuple[int, int]:
    import io

    def readable() -> Any:
        return io.BytesIO(source) if isinstance(source, bytes) else str(source)

    try:
        import pydicom

        ds = pydicom.dcmread(readable(), stop_before_pixels=True)
        return int(ds.Rows), int(ds.Columns)
    except Exception:  # a JPEG or PNG: its own size
        try:
            with Image.open(readable()) as im:
                return im.height, im.width
        except Exception:
            return fallback[0], fallback[1]


def write_heatmap(
    bundle: Bundle,
    image: npt.NDArray[np.uint8],
    path: Path,
    *,
    display: npt.NDArray[np.uint8] | None = None,
    probability: float | None = None,
    threshold: float | None = None,
    assessed: bool = True,
    label: str = "",
) -> Path:
    """Write the Grad-CAM picture of one film: the film (``display``, else the canonical
    image) with the map on top, a colour scale, and the probability against the bundle's
    threshold with the model's name and version. The folder must exist."""
    if not path.parent.is_dir():
        raise ModelError(
            f"cannot write the heatmap: the folder {str(path.parent)!r} does not exist"
        )
    heat = gradcam(bundle, image)
    film = image if display is None else display
    heat = heat_at(heat, film.shape)
    from screener.model.plots import _figure

    h, w = film.shape
    dpi = 100
    fig = _figure(w / dpi + 1.6, h / dpi + 0.9)
    ax = fig.add_axes((0.2 / (w / dpi + 1.6), 0.15 / (h / dpi + 0.9), w / dpi / (w / dpi + 1.6),
                       h / dpi / (h / dpi + 0.9)))  # fmt: skip
    ax.imshow(film, cmap="gray", vmin=0, vmax=255)
    shown = ax.imshow(heat, cmap="jet", vmin=0.0, vmax=1.0, alpha=0.4 * heat)
    ax.set_axis_off()
    bar = fig.add_axes((1 - 1.1 / (w / dpi + 1.6), 0.2, 0.25 / (w / dpi + 1.6), 0.6))
    colours = fig.colorbar(shown, cax=bar)
    if colours.solids is not None:
        colours.solids.set_alpha(1.0)
    colours.set_label("Grad-CAM: share of the evidence (relative, per film)")
    verdict = ""
    cut = bundle.threshold if threshold is None else threshold
    if not assessed:
        verdict = (
            "NOT ASSESSED: outside the model's domain (no score; the map shows where it looked)   "
        )
    elif probability is not None:
        over = probability >= cut
        verdict = (
            f"P(pneumonia) {probability:.3f} {'>=' if over else '<'} threshold "
            f"{cut:.3f}: {'SECOND READ' if over else 'not flagged'}   "
        )
    fig.text(0.01, 1 - 0.35 / (h / dpi + 0.9), f"{verdict}{label}", fontsize=11)
    fig.text(
        0.01,
        1 - 0.65 / (h / dpi + 0.9),
        f"model {bundle.name} {bundle.version}. Where the model looked, not a localisation "
        "of disease.",
        fontsize=9,
    )
    fig.savefig(path, format="png")
    return path
