"""The domain guard: is a film like the films the network was trained on?

The network's own confidence is no guard (adult films score P ~ 1.0). Following Lee et al.
(NeurIPS 2018, "A simple unified framework for detecting out-of-distribution samples") and
Anthony & Kamnitsas (arXiv 2309.01488), each member's feature maps at the last stages are
average-pooled; for each (member, stage) a Mahalanobis distance to the nearest class mean
is taken under a shared, shrunk covariance fitted on the training films; each distance is
z-normalised by its training distribution and the z's are summed. The threshold is the
99.5th percentile of the validation films' scores (see VALIDATION_PASS).

Stored in the bundle as ``domain.npz`` and described in ``model.json`` (``domain_guard``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from screener.errors import ModelError

if TYPE_CHECKING:
    import keras

DOMAIN_FILE = "domain.npz"
#: Pooled feature maps the guard reads in each small_cnn member: the last three stages.
SMALL_CNN_LAYERS = ("s4_conv2_relu", "s5_conv1_relu", "features_relu")
#: What the guard reads in a Keras application: the input of the head's pooling layer (the
#: backbone's last feature map, as the outer graph sees it).
APPLICATION_LAYERS = ("pool",)
#: Weight of the identity in the covariance (shrinkage towards a scaled identity).
SHRINKAGE = 0.1
#: Share of validation films that pass: the issue asks for at least 99 %. At the 99th
#: percentile the probe's unseen batch of in-population normals passed 97.6 %; at the 99.5th,
#: 98.7 % (and every rotated, inverted and non-chest check film still failed), so 99.5.
VALIDATION_PASS = 0.995

Floats = npt.NDArray[np.float64]


def guard_layers(backbone: str) -> tuple[str, ...]:
    """The feature maps the guard reads for a backbone."""
    return SMALL_CNN_LAYERS if backbone == "small_cnn" else APPLICATION_LAYERS


def feature_model(member: keras.Model, layers: tuple[str, ...] = SMALL_CNN_LAYERS) -> keras.Model:
    """``member`` with its logit and the feature maps of ``layers`` as outputs."""
    import keras

    try:
        maps = [
            member.get_layer(name).input if name == "pool" else member.get_layer(name).output
            for name in layers
        ]
    except ValueError as exc:
        raise ModelError(f"the domain guard needs a small_cnn member: {exc}") from exc
    return keras.Model(member.input, [member.output, *maps])


@dataclass
class DomainGuard:
    """Class means and precision per (member, stage), training z-scores, the threshold."""

    layers: tuple[str, ...]
    means: list[Floats]  # each (classes, d)
    precisions: list[Floats]  # each (d, d)
    z_mean: Floats  # (components,)
    z_std: Floats
    threshold: float

    def distances(self, features: list[Floats]) -> Floats:
        """``(N, components)`` Mahalanobis distances to the nearest class mean."""
        out = np.empty((len(features[0]), len(features)), dtype=np.float64)
        for c, (x, means, precision) in enumerate(
            zip(features, self.means, self.precisions, strict=True)
        ):
            best = np.full(len(x), np.inf)
            for mu in means:
                d = x - mu
                # d P d^T row by row, as one matrix product (BLAS), not einsum's loop
                best = np.minimum(best, ((d @ precision) * d).sum(axis=1))
            out[:, c] = np.sqrt(np.maximum(best, 0.0))
        return out

    def score(self, features: list[Floats]) -> Floats:
        """The summed z-scores: higher is further from the training films."""
        z = (self.distances(features) - self.z_mean) / self.z_std
        result: Floats = z.sum(axis=1)
        return result

    def save(self, folder: Path) -> None:
        arrays: dict[str, Any] = {
            "z_mean": self.z_mean,
            "z_std": self.z_std,
            "threshold": np.array(self.threshold),
            "layers": np.array(self.layers),
        }
        for c, (m, p) in enumerate(zip(self.means, self.precisions, strict=True)):
            arrays[f"mean_{c}"] = m.astype(np.float32)
            arrays[f"precision_{c}"] = p.astype(np.float32)
        np.savez_compressed(folder / DOMAIN_FILE, **arrays)

    @classmethod
    def load(cls, folder: Path) -> DomainGuard:
        try:
            with np.load(folder / DOMAIN_FILE) as npz:
                n = len(npz["z_mean"])
                return cls(
                    layers=tuple(str(name) for name in npz["layers"]),
                    means=[npz[f"mean_{c}"].astype(np.float64) for c in range(n)],
                    precisions=[npz[f"precision_{c}"].astype(np.float64) for c in range(n)],
                    z_mean=npz["z_mean"].astype(np.float64),
                    z_std=npz["z_std"].astype(np.float64),
                    threshold=float(npz["threshold"]),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"cannot read the domain guard in {str(folder)!r}: {exc}") from exc


def shrunk_precision(centred: Floats, shrinkage: float = SHRINKAGE) -> Floats:
    """Inverse of ``(1 - s) S + s (tr S / d) I`` for the pooled within-class covariance S."""
    n, d = centred.shape
    cov = centred.T @ centred / max(n - 1, 1)
    target = np.trace(cov) / d
    shrunk = (1.0 - shrinkage) * cov + shrinkage * target * np.eye(d)
    result: Floats = np.linalg.inv(shrunk)
    return result


def fit_guard(
    train_features: list[Floats],
    train_labels: npt.NDArray[np.int64],
    val_features: list[Floats],
    layers: tuple[str, ...] = SMALL_CNN_LAYERS,
) -> tuple[DomainGuard, Floats]:
    """Fit the guard on training features; threshold from validation. Returns the guard and
    the validation scores."""
    classes = np.unique(train_labels)
    means, precisions = [], []
    for x in train_features:
        mu = np.stack([x[train_labels == k].mean(axis=0) for k in classes])
        centred = x - mu[np.searchsorted(classes, train_labels)]
        # kept as saved (float32), so the threshold is exact for the guard that is loaded
        means.append(mu.astype(np.float32).astype(np.float64))
        precisions.append(shrunk_precision(centred).astype(np.float32).astype(np.float64))
    guard = DomainGuard(layers, means, precisions, np.zeros(len(means)), np.ones(len(means)), 0.0)
    train_d = guard.distances(train_features)
    guard.z_mean = train_d.mean(axis=0)
    guard.z_std = np.maximum(train_d.std(axis=0), 1e-9)
    val_scores = guard.score(val_features)
    guard.threshold = float(np.quantile(val_scores, VALIDATION_PASS, method="higher"))
    return guard, val_scores


def pooled(maps: list[Any]) -> list[Floats]:
    """Global average pooling of ``(N, h, w, c)`` feature maps."""
    return [np.asarray(m, dtype=np.float64).mean(axis=(1, 2)) for m in maps]
