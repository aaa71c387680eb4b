"""Tests of the bundle preprocessing and the training augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from screener.errors import ModelError
from screener.model.preprocess import PreprocessParams, equalize, preprocess
from screener.training.augment import AugmentParams, augment_batch


def _film(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:224, 0:224]
    base = 120 + 60 * np.sin(xx / 20.0) * np.cos(yy / 30.0) + rng.normal(0, 5, (224, 224))
    film: np.ndarray = np.clip(base, 0, 255).astype(np.uint8)
    return film


def test_equalize_removes_exposure_and_gamma_differences() -> None:
    """A darker, flatter (gamma-changed) copy of a film equalises to nearly the same image."""
    film = _film()
    altered = np.clip(255 * ((film / 255.0) ** 1.8) * 0.7 + 10, 0, 255).astype(np.uint8)
    before = np.mean(np.abs(film.astype(int) - altered.astype(int)))
    after = np.mean(np.abs(equalize(film).astype(int) - equalize(altered).astype(int)))
    assert after < before / 5


def test_preprocess_shape_and_range() -> None:
    """preprocess returns (N, size, size, 1) float32 in [0, 1]."""
    batch = np.stack([_film(0), _film(1)])
    out = preprocess(batch, PreprocessParams(input_size=96))
    assert out.shape == (2, 96, 96, 1) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_preprocess_rejects_non_uint8() -> None:
    """A float batch is refused with a ModelError naming the dtype."""
    with pytest.raises(ModelError, match="float"):
        preprocess(np.zeros((1, 224, 224), dtype=np.float32), PreprocessParams())


def test_augmentation_is_seeded_and_keeps_the_film_upright() -> None:
    """Same seed, same batch; the top and bottom halves are not swapped (no vertical flip)."""
    film = np.zeros((224, 224), dtype=np.uint8)
    film[:112] = 200  # bright top half
    film[112:] = 40
    params, aug = PreprocessParams(input_size=64, normalisation="none"), AugmentParams()
    a = augment_batch(film[None].repeat(8, 0), params, aug, np.random.default_rng(5))
    b = augment_batch(film[None].repeat(8, 0), params, aug, np.random.default_rng(5))
    assert np.array_equal(a, b)
    assert np.all(a[:, 8:24].mean(axis=(1, 2, 3)) > a[:, 40:56].mean(axis=(1, 2, 3)))


def test_centre_crop_drops_the_borders() -> None:
    """With crop 0.5 the network sees only the film's centre: a bright frame is gone, and the
    parameters survive a round trip through model.json (old bundles read as crop 1.0)."""
    film = np.full((224, 224), 250, dtype=np.uint8)
    film[56:168, 56:168] = 20  # the central half of each side is dark
    whole = preprocess(film[None], PreprocessParams(input_size=64, normalisation="none"))
    params = PreprocessParams(input_size=64, normalisation="none", crop=0.5)
    cropped = preprocess(film[None], params)
    assert whole.max() > 0.9 and cropped.max() < 0.1
    assert PreprocessParams.from_json(params.to_json()) == params
    legacy = {"input_size": 64, "normalisation": "none"}
    assert PreprocessParams.from_json(legacy).crop == 1.0
    with pytest.raises(ModelError, match="crop"):
        PreprocessParams(crop=0.3)


def test_mixup_blends_images_targets_and_weights_alike() -> None:
    """With --mixup a batch's images are blends of two films, each mostly itself: its target
    and class weight are the same blend, so a normal film mixed with a pneumonia gets a
    target below 0.5 and a weight between the two classes'; the stream stays seeded, and
    without mixup the batch is the augmented films alone."""
    from screener.training.fit import Batches

    dark, bright = np.full((224, 224), 30, np.uint8), np.full((224, 224), 220, np.uint8)
    images = np.stack([dark, bright] * 8)
    targets = np.array([0, 1] * 8, dtype=np.int64)
    params = PreprocessParams(input_size=32, normalisation="none")
    aug = AugmentParams(noise_p=0.0, blur_p=0.0, brightness=0.0)
    weights = {0: 3.0, 1: 1.0}
    plain = Batches(images, targets, weights, params, aug, 16, seed=3)
    mixed = Batches(images, targets, weights, params, aug, 16, seed=3, mixup=0.4)
    x0, y0, w0 = plain.batch(0, 0)
    x, y, w = mixed.batch(0, 0)
    assert set(y0.tolist()) == {0.0, 1.0} and set(w0.tolist()) == {1.0, 3.0}
    blended = (y > 0) & (y < 1)
    assert blended.sum() >= 4  # half of the partners have the other label
    assert np.all(np.round(y) == y0)  # lambda >= 0.5: each film stays mostly itself
    assert np.allclose(w[blended], 3.0 - 2.0 * y[blended])  # the weight blended as the target
    # each blended image's mean is lam * its own film's + (1 - lam) * a film of the other class
    lam = 1.0 - np.abs(y - y0)
    means, own = x.mean(axis=(1, 2, 3)), x0.mean(axis=(1, 2, 3))
    partner = (means - lam * own)[blended] / (1.0 - lam[blended])
    for p, label in zip(partner, y0[blended], strict=True):
        others = own[y0 != label]
        assert others.min() - 1e-4 <= p <= others.max() + 1e-4
    again = Batches(images, targets, weights, params, aug, 16, seed=3, mixup=0.4).batch(0, 0)
    assert all(np.array_equal(a, b) for a, b in zip((x, y, w), again, strict=True))
