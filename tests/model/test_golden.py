"""Golden values: the shipped bundle's probabilities and the canonical images of fixed real films.

The numbers were recorded from the serving pipeline (``screener.imaging.load_image``, then
``Bundle.predict``, as ``screener.work.scoring`` and ``screener predict`` do) with the shipped
``models/screener-default``. A change to decoding, VOI / MONOCHROME1 handling, the resize,
the bundle's preprocessing or the model makes them fail. If such a change is intended,
re-record the numbers in the same commit and say why.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pytest
from support import data_root

if TYPE_CHECKING:
    from screener.model import Bundle

SIIM = "dicom/siim_chest_cr"

#: (file under the shared data folder, calibrated P(pneumonia)). Chosen with probabilities away
#: from 0 and 1, where the calibrated sigmoid is not saturated and a changed input shows.
GOLDEN_PROBABILITIES = [
    (f"{SIIM}/1.2.276.0.7230010.3.1.4.8323329.1000.1517875165.878027.dcm", 0.052159),
    (f"{SIIM}/1.2.276.0.7230010.3.1.4.8323329.1314.1517875167.222290.dcm", 0.039987),
    ("chest_xray/train/NORMAL/IM-0164-0001.jpeg", 0.079756),
    ("chest_xray/train/PNEUMONIA/person1006_bacteria_2937.jpeg", 0.780744),
]

#: The domain guard's score of the same films (an adult SIIM film beyond the threshold, the
#: training films inside it), recorded with the bundle of 2026-11-28 16:25 (width 48).
GOLDEN_DOMAIN_SCORES = [23.306, 13.342, 9.319, 10.171]

#: float32 CPU kernels (oneDNN / Eigen, chosen by CPU features and thread count) may differ
#: in the last bits across machines; 1e-3 on a probability absorbs that and still catches
#: any real change of the input or the weights.
PROBABILITY_TOLERANCE = 1e-3

#: (file, mean, std, sha256) of the 224 x 224 uint8 canonical image. The SIIM film is an
#: 8-bit JPEG Baseline MONOCHROME2 CR (decoded at 1/2 scale, then resized); RG3_RLE is a
#: 10-bit MONOCHROME1 CR with a window (VOI and inversion, lossless, no reduced decode).
GOLDEN_CANONICAL = [
    (
        f"{SIIM}/1.2.276.0.7230010.3.1.4.8323329.1000.1517875165.878027.dcm",
        169.981,
        52.8341,
        "6115dfd83b72bd1ee65ad55efcce643db72f400b611e4050ea05c23aebd70800",
    ),
    (
        "dicom/wg04_nonchest/RG3_RLE.dcm",
        177.4991,
        91.6802,
        "b774ab2831a62ac32b15cf730037dc3c27dc19900a5b9fdb77c82e033ba3d7ad",
    ),
]

#: Mean and std of the network input (the bundle's "equalize" preprocessing) of the SIIM film.
GOLDEN_NETWORK_INPUT = (GOLDEN_CANONICAL[0][0], 0.51449, 0.30177)


def _file(relative: str) -> Path:
    path = data_root() / relative
    if not path.is_file():
        pytest.skip(f"golden film not found at {path} (set SCREENER_DATA)")
    return path


def _canonical(relative: str) -> npt.NDArray[np.uint8]:
    from screener.imaging import load_image

    (image,) = load_image(_file(relative))
    return image


@pytest.fixture(scope="module")
def shipped(model_bundle: Path) -> Bundle:
    """The shipped bundle, loaded once for this module."""
    from screener.model import load_bundle

    return load_bundle(model_bundle)


def test_shipped_bundle_golden_probabilities(shipped: Bundle) -> None:
    """The shipped bundle gives the recorded P(pneumonia) for four fixed real films, to 1e-3,
    and the recorded domain-guard scores, to 0.05."""
    images = np.stack([_canonical(name) for name, _ in GOLDEN_PROBABILITIES])
    probabilities = shipped.predict(images)
    got = {
        name: round(float(p), 6)
        for (name, _), p in zip(GOLDEN_PROBABILITIES, probabilities, strict=True)
    }
    for name, expected in GOLDEN_PROBABILITIES:
        assert got[name] == pytest.approx(expected, abs=PROBABILITY_TOLERANCE), got
    scores = shipped.assess(images).domain_scores
    assert scores is not None
    assert np.round(scores, 3).tolist() == pytest.approx(GOLDEN_DOMAIN_SCORES, abs=0.05)


@pytest.mark.parametrize(
    ("relative", "mean", "std", "sha256"),
    GOLDEN_CANONICAL,
    ids=[Path(name).name for name, *_ in GOLDEN_CANONICAL],
)
def test_canonical_image_golden(relative: str, mean: float, std: float, sha256: str) -> None:
    """load_image turns a fixed DICOM film into the recorded 224x224 uint8 image (mean, std, sha256)."""
    image = _canonical(relative)
    assert image.shape == (224, 224) and image.dtype == np.uint8
    assert float(image.mean()) == pytest.approx(mean, abs=1e-2)
    assert float(image.std()) == pytest.approx(std, abs=1e-2)
    # Exact on one machine and across machines with the same decoders (integer JPEG IDCT,
    # lossless RLE, Pillow's fixed-point resize). If only a Pillow / libjpeg upgrade moved it
    # while mean and std still match, look at the difference, then re-record.
    assert hashlib.sha256(image.tobytes()).hexdigest() == sha256


def test_network_input_golden(shipped: Bundle) -> None:
    """The bundle's preprocessing of the fixed SIIM film has the recorded mean and std."""
    relative, mean, std = GOLDEN_NETWORK_INPUT
    x = shipped.network_input(_canonical(relative)[None])
    assert x.shape == (1, shipped.input_size, shipped.input_size, 1)
    assert float(x.mean()) == pytest.approx(mean, abs=1e-3)
    assert float(x.std()) == pytest.approx(std, abs=1e-3)
