"""Fixtures for the model tests: the shared data folder and one tiny trained bundle."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def data_root() -> Path:
    """``$SCREENER_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("SCREENER_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def chest_train() -> Path:
    """The Kaggle-layout training folder; skips when it is absent."""
    path = data_root() / "chest_xray" / "train"
    if not (path / "NORMAL").is_dir():
        pytest.skip(f"chest X-ray training data not found at {path}")
    return path


@pytest.fixture(scope="session")
def siim_dicoms() -> list[Path]:
    """The SIIM chest CR DICOM files; skips when they are absent."""
    folder = data_root() / "dicom" / "siim_chest_cr"
    files = sorted(folder.glob("*.dcm"))
    if not files:
        pytest.skip(f"SIIM DICOM samples not found at {folder}")
    return files


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, chest_train: Path) -> Path:
    """A bundle trained by `screener train` on 60 images, 1 epoch, 64 px."""
    from screener.cli import main

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    code = main(
        [
            "train",
            "--data",
            str(chest_train),
            "--out",
            str(out),
            "--limit",
            "60",
            "--epochs",
            "1",
            "--input-size",
            "64",
            "--val-fraction",
            "0.3",
        ]
    )
    assert code == 0
    return out
