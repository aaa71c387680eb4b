"""Tests of the shipped default bundle on real DICOM files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from screener.cli import main

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "screener-default"


def test_shipped_bundle_scores_a_siim_dicom(
    siim_dicoms: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """predict on a SIIM chest CR DICOM with the shipped bundle prints a probability."""
    assert (SHIPPED / "model.json").is_file(), f"no shipped bundle at {SHIPPED}"
    assert main(["predict", str(siim_dicoms[0]), "--model", str(SHIPPED), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert 0.0 <= result["probability"] <= 1.0
    assert result["label"] in ("normal", "pneumonia", "outside_domain")
    assert isinstance(result["domain_score"], float) and math.isfinite(result["domain_score"])


def test_shipped_bundle_is_small_and_complete() -> None:
    """The shipped bundle has every file and stays under 20 MB."""
    assert (SHIPPED / "model.json").is_file(), f"no shipped bundle at {SHIPPED}"
    names = {p.name for p in SHIPPED.iterdir()}
    assert {"model.keras", "model.json", "MODEL_CARD.md", "roc.png", "confusion.png"} <= names
    assert "domain.npz" in names
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) < 20 * 1024 * 1024


def test_shipped_card_is_rendered_from_its_model_json() -> None:
    """MODEL_CARD.md is what model.json renders (no hand edits), and it gives the probe's
    specificity with its interval: 713 of 744 unseen normals unflagged is 0.958 (Wilson
    0.941-0.970), 265 of 265 validation normals 1.000 (0.986-1.000)."""
    assert (SHIPPED / "model.json").is_file(), f"no shipped bundle at {SHIPPED}"
    from screener.training.card import render_card

    card = (SHIPPED / "MODEL_CARD.md").read_text()
    assert card == render_card(json.loads((SHIPPED / "model.json").read_text()))
    assert "| 1.000 (0.986-1.000) | 0.958 (0.941-0.970) |" in card
    assert "is 0.941-0.970 (about 11 films either way)" in card
