"""The training folder: file listing, labels, patients, the patient-level split, loading.

Layout is Kaggle's: ``DIR/NORMAL/*.jpeg`` and ``DIR/PNEUMONIA/*.jpeg``; a pneumonia file name
says ``bacteria`` or ``virus``. Several images share a patient, so the validation split is
drawn by patient (stratified on the patient's label), never by image.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from screener.errors import ScreenerError

#: Class folders, in label order for the binary task (0 = normal, 1 = pneumonia).
CLASS_DIRS = ("NORMAL", "PNEUMONIA")
#: Class names of the three-way task, in output order.
TYPE_CLASSES = ("normal", "bacterial", "viral")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")

_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_IM = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE)


class DataError(ScreenerError):
    """The training or evaluation folder is not usable."""


@dataclass(frozen=True)
class Sample:
    """One labelled image: path relative to the data root, patient, binary and type labels."""

    path: str
    patient: str
    label: int
    kind: int
    size: int


def patient_of(name: str) -> str:
    """Patient key of a Kaggle file name (``person12_virus_3.jpeg`` -> ``person12``)."""
    match = _PERSON.match(name) or _IM.match(name)
    if match is None:
        # Unknown naming: the file is its own patient (the safe side for leakage is not known).
        return Path(name).stem
    return match.group(1)


def kind_of(folder: str, name: str) -> int:
    """Three-way label: 0 normal, 1 bacterial, 2 viral (from the folder and the file name)."""
    if folder == "NORMAL":
        return 0
    lower = name.lower()
    if "virus" in lower:
        return 2
    if "bacteria" in lower:
        return 1
    raise DataError(f"pneumonia file {name!r} says neither 'bacteria' nor 'virus'")


def family_of(name: str) -> str:
    """File-name family (``person``, ``IM``, ``NORMAL2-IM``): a proxy for acquisition batch."""
    if name.upper().startswith("NORMAL2-"):
        return "NORMAL2-IM"
    if name.upper().startswith("IM-"):
        return "IM"
    return "person" if _PERSON.match(name) else "other"


#: The training folder's four file-name families and the class of their films: normals
#: ``IM`` and ``NORMAL2-IM``, pneumonias ``bacteria`` and ``virus`` (``personN_bacteria_M``,
#: ``personN_virus_M``). Each is a proxy for an acquisition batch; leave-one-family-out model
#: selection trains without one and judges the model on its films.
FAMILIES: dict[str, int] = {"IM": 0, "NORMAL2-IM": 0, "bacteria": 1, "virus": 1}


def film_family(name: str) -> str:
    """One of :data:`FAMILIES` for a Kaggle file name (``other`` for unknown naming).

    Unlike :func:`family_of`, the pneumonia films are told apart by their cause.
    """
    family = family_of(name)
    if family != "person":
        return family
    lower = name.lower()
    if "_bacteria" in lower:
        return "bacteria"
    if "_virus" in lower:
        return "virus"
    return "other"


def in_family(sample: Sample, family: str) -> bool:
    """Whether a sample is a film of ``family`` (of its class: a normal film for ``IM``)."""
    return sample.label == FAMILIES[family] and film_family(Path(sample.path).name) == family


def list_samples(root: Path, task: str = "binary") -> list[Sample]:
    """List a Kaggle-layout folder, sorted by path (so every listing is reproducible)."""
    if not root.is_dir():
        raise DataError(f"data folder {str(root)!r} does not exist")
    samples: list[Sample] = []
    for label, folder in enumerate(CLASS_DIRS):
        sub = root / folder
        if not sub.is_dir():
            raise DataError(f"data folder {str(root)!r} has no {folder}/ sub-folder")
        for path in sorted(sub.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            kind = kind_of(folder, path.name) if task == "type" else label
            samples.append(
                Sample(
                    path=f"{folder}/{path.name}",
                    patient=patient_of(path.name),
                    label=label,
                    kind=kind,
                    size=path.stat().st_size,
                )
            )
    if not samples:
        raise DataError(f"data folder {str(root)!r} holds no JPEG/PNG images")
    return samples


def limit_samples(samples: Sequence[Sample], limit: int, seed: int) -> list[Sample]:
    """A class-stratified random subset of ``limit`` samples (for quick runs and tests)."""
    if limit >= len(samples):
        return list(samples)
    rng = np.random.default_rng(seed)
    labels = np.array([s.label for s in samples])
    chosen: list[int] = []
    for label in (0, 1):
        idx = np.flatnonzero(labels == label)
        take = max(2, round(limit * len(idx) / len(samples)))
        chosen.extend(rng.choice(idx, size=min(take, len(idx)), replace=False).tolist())
    return [samples[i] for i in sorted(chosen)]


def fingerprint(samples: Sequence[Sample]) -> str:
    """sha256 over the sorted ``path<TAB>size`` lines: names the exact training data."""
    digest = hashlib.sha256()
    for line in sorted(f"{s.path}\t{s.size}" for s in samples):
        digest.update(line.encode() + b"\n")
    return digest.hexdigest()


def split_by_patient(
    samples: Sequence[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split into (train, validation) by patient, stratified on the patient's label.

    A patient's label is its images' binary label (every patient in this data set has one).
    Within each label the sorted patient keys are shuffled with ``seed`` and the first
    ``round(val_fraction * n)`` go to validation.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"validation fraction {val_fraction} must lie strictly between 0 and 1")
    by_patient: dict[str, int] = {}
    for s in samples:
        by_patient[s.patient] = max(by_patient.get(s.patient, 0), s.label)
    rng = np.random.default_rng(seed)
    val_patients: set[str] = set()
    for label in (0, 1):
        keys = sorted(p for p, lab in by_patient.items() if lab == label)
        order = rng.permutation(len(keys))
        n_val = max(1, round(val_fraction * len(keys))) if len(keys) > 1 else 0
        val_patients.update(keys[i] for i in order[:n_val])
    train = [s for s in samples if s.patient not in val_patients]
    val = [s for s in samples if s.patient in val_patients]
    return train, val


def split_description(
    train: Sequence[Sample], val: Sequence[Sample], val_fraction: float, seed: int
) -> dict[str, Any]:
    """What model.json records about the split, enough to recompute it."""

    def counts(part: Sequence[Sample]) -> dict[str, int]:
        return {
            "images": len(part),
            "patients": len({s.patient for s in part}),
            "normal": sum(1 for s in part if s.label == 0),
            "pneumonia": sum(1 for s in part if s.label == 1),
        }

    return {
        "method": "by patient, stratified on label, numpy default_rng(seed) permutation",
        "seed": seed,
        "val_fraction": val_fraction,
        "train": counts(train),
        "validation": counts(val),
    }


def load_images(root: Path, samples: Sequence[Sample]) -> npt.NDArray[np.uint8]:
    """Read the samples' images into one ``(N, 224, 224)`` uint8 array of canonical images."""
    from tqdm import tqdm

    from screener.imaging import CANONICAL_SIZE, load_raster

    out = np.empty((len(samples), CANONICAL_SIZE, CANONICAL_SIZE), dtype=np.uint8)
    for i, s in enumerate(tqdm(samples, desc="loading images", unit="img", leave=False)):
        out[i] = load_raster(root / s.path)
    return out
