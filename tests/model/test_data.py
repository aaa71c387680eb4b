"""Tests of the training-data listing, patient keys and the patient-level split."""

from __future__ import annotations

from pathlib import Path

import pytest

from screener.training import data


def _samples(n_patients: int, per_patient: int) -> list[data.Sample]:
    out = []
    for p in range(n_patients):
        label = p % 4 != 0  # ~3:1 pneumonia : normal, like the data set
        for k in range(per_patient if p % 3 else 1):
            name = f"person{p}_bacteria_{k}.jpeg" if label else f"IM-{p:04d}-{k:04d}.jpeg"
            folder = "PNEUMONIA" if label else "NORMAL"
            out.append(data.Sample(f"{folder}/{name}", data.patient_of(name), int(label), 0, 10))
    return out


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person12_virus_3.jpeg", "person12"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-0927-0001.jpeg", "NORMAL2-IM-0927"),
    ],
)
def test_patient_of_reads_the_file_name_convention(name: str, patient: str) -> None:
    """Each Kaggle naming family maps to its patient key."""
    assert data.patient_of(name) == patient


def test_split_never_puts_a_patient_on_both_sides() -> None:
    """No patient appears in both the training and the validation part."""
    samples = _samples(200, 3)
    train, val = data.split_by_patient(samples, 0.2, seed=7)
    assert {s.patient for s in train}.isdisjoint({s.patient for s in val})
    assert len(train) + len(val) == len(samples)


def test_split_is_stratified_and_reproducible() -> None:
    """Both labels get about the requested share of patients, the same way for the same seed."""
    samples = _samples(400, 2)
    _, val = data.split_by_patient(samples, 0.25, seed=3)
    for label in (0, 1):
        all_p = {s.patient for s in samples if s.label == label}
        val_p = {s.patient for s in val if s.label == label}
        assert abs(len(val_p) / len(all_p) - 0.25) < 0.01
    again = data.split_by_patient(samples, 0.25, seed=3)[1]
    assert [s.path for s in again] == [s.path for s in val]
    other = data.split_by_patient(samples, 0.25, seed=4)[1]
    assert [s.path for s in other] != [s.path for s in val]


def test_real_split_keeps_patients_apart(chest_train: Path) -> None:
    """On the real folder the split is patient-disjoint and keeps the class balance."""
    samples = data.list_samples(chest_train)
    train, val = data.split_by_patient(samples, 0.2, seed=42)
    assert {s.patient for s in train}.isdisjoint({s.patient for s in val})
    share = sum(s.label for s in val) / len(val)
    assert 0.65 < share < 0.85


def test_fingerprint_depends_on_names_and_sizes_not_order() -> None:
    """The data fingerprint ignores listing order but changes when a file changes size."""
    samples = _samples(10, 2)
    assert data.fingerprint(samples) == data.fingerprint(list(reversed(samples)))
    changed = [*samples[:-1], data.Sample(samples[-1].path, "x", 1, 0, 11)]
    assert data.fingerprint(changed) != data.fingerprint(samples)


def test_type_labels_come_from_the_file_name() -> None:
    """normal / bacterial / viral labels follow the folder and the file name."""
    assert data.kind_of("NORMAL", "IM-0001-0001.jpeg") == 0
    assert data.kind_of("PNEUMONIA", "person1_bacteria_1.jpeg") == 1
    assert data.kind_of("PNEUMONIA", "person1_virus_6.jpeg") == 2
