"""Ensembles and the shift probe: members averaged in one network, a run that resumes after
its last finished member, a probe that scores the family it left out, and a bundle whose
calibration is fitted on the probe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from screener.cli import main

#: trains ensembles: the probe test took 147 s, a fixture 76 s (loaded 2-core host)
pytestmark = pytest.mark.timeout(600)

ARGS = ["--limit", "80", "--epochs", "1", "--input-size", "48", "--val-fraction", "0.3"]


def _train(chest_train: Path, out: Path, *extra: str) -> dict[str, object]:
    argv = ["train", "--data", str(chest_train), "--out", str(out), *ARGS, "--members", "2"]
    assert main([*argv, "--seed", "1", "--split-seed", "42", *extra]) == 0
    return dict(json.loads((out / "model.json").read_text()))


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory, chest_train: Path) -> Path:
    out = tmp_path_factory.mktemp("ensemble") / "probe"
    _train(chest_train, out, "--exclude-family", "NORMAL2-IM")
    return out


def test_ensemble_is_one_network_averaging_its_members(probe: Path) -> None:
    """The bundle's single model.keras averages its two members' logits; assess equals predict."""
    from screener.model import load_bundle
    from screener.model.architectures import members_of
    from screener.model.calibration import sigmoid

    bundle = load_bundle(probe)
    assert [m.name for m in members_of(bundle.model)] == ["member0", "member1"]
    images = np.random.default_rng(0).integers(0, 256, (6, 224, 224), dtype=np.uint8)
    logits = bundle.member_logits(images)
    assert logits.shape == (2, 6)
    raw = bundle.predict_raw(images)
    assert np.abs(raw - sigmoid(logits.mean(axis=0))).max() < 1e-5
    assert np.abs(bundle.assess(images).probabilities - bundle.predict(images)).max() < 1e-6


def test_gradcam_of_an_ensemble(probe: Path) -> None:
    """Grad-CAM of an ensemble is one map in [0, 1] of the film's size (its members' mean)."""
    from screener.model import load_bundle
    from screener.model.gradcam import gradcam

    image = np.random.default_rng(1).integers(0, 256, (224, 224), dtype=np.uint8)
    heat = gradcam(load_bundle(probe), image)
    assert heat.shape == (224, 224) and heat.min() >= 0.0 and heat.max() <= 1.0


def test_probe_scores_the_family_it_left_out(probe: Path, chest_train: Path) -> None:
    """A probe records the shift proxy on every normal film of the left-out family and keeps
    each member's logits for later candidates."""
    meta = json.loads((probe / "model.json").read_text())
    proxy = meta["shift_proxy"]
    family = [p for p in (chest_train / "NORMAL").iterdir() if p.name.startswith("NORMAL2-")]
    assert proxy["family_left_out"] == "NORMAL2-IM" and proxy["unseen_normals"] == len(family)
    assert (
        0.0 <= proxy["specificity_unseen"] <= 1.0 and 0.0 <= proxy["domain_pass_rate_unseen"] <= 1.0
    )
    with np.load(probe / "shift_scores.npz") as scores:
        assert scores["unseen_logits"].shape == (2, len(family))
        assert scores["val_logits"].shape[0] == 2
    assert "Acquisition-shift proxy" in (probe / "MODEL_CARD.md").read_text()


def test_bundle_calibrated_on_its_probe(probe: Path, chest_train: Path, tmp_path: Path) -> None:
    """--probe fits the calibration on the probe's unseen normals and validation pneumonias,
    and records the candidates the probe can judge."""
    meta = _train(chest_train, tmp_path / "bundle", "--probe", str(probe))
    assert meta["calibration"]["fitted_on"].startswith("probe set")  # type: ignore[index]
    selection = meta["model_selection"]
    names = [c["name"] for c in selection["candidates"]]  # type: ignore[index]
    assert names == ["single network (member 0)", "single network (member 1)", "ensemble of 2"]
    assert "ensemble of 2" in selection["choice"]  # type: ignore[index]
    assert (tmp_path / "bundle" / "domain.npz").is_file()


def test_training_resumes_after_the_last_finished_member(
    probe: Path, chest_train: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rerun reuses finished members (same seed and recipe) and trains only what is missing."""
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(probe / "members", out / "members")
    for name in ("member1.keras", "member1.json"):
        (out / "members" / name).unlink()
    before = (out / "members" / "member0.keras").read_bytes()
    meta = _train(chest_train, out, "--exclude-family", "NORMAL2-IM")
    assert (out / "members" / "member0.keras").read_bytes() == before
    assert (out / "members" / "member1.json").is_file()
    assert [m["seed"] for m in meta["training"]["members"]] == [1, 2]  # type: ignore[index]


def test_probe_of_a_diverse_ensemble_judges_the_bundle_it_ships(
    chest_train: Path, tmp_path: Path
) -> None:
    """A probe and a bundle each of one plain member and one joined by --with-members from a
    mixup run: the probe's candidates are named by their recipe, and the bundle is judged as
    the ensemble of both (its own member and the joined one), not its own member alone."""
    base = ["train", "--data", str(chest_train), *ARGS, "--seed", "1", "--split-seed", "42"]
    family = ["--exclude-family", "NORMAL2-IM"]
    runs = tmp_path / "runs"
    assert main([*base, *family, "--mixup", "0.2", "--out", str(runs / "probe-mixup")]) == 0
    probe = ["--with-members", str(runs / "probe-mixup"), "--out", str(runs / "probe")]
    assert main([*base, *family, *probe]) == 0
    assert main([*base, "--mixup", "0.2", "--out", str(runs / "mixup")]) == 0
    bundle = ["--with-members", str(runs / "mixup"), "--probe", str(runs / "probe")]
    assert main([*base, *bundle, "--out", str(runs / "bundle")]) == 0

    selection = json.loads((runs / "bundle" / "model.json").read_text())["model_selection"]
    names = [c["name"] for c in selection["candidates"]]
    assert names == [
        "single network (member 0)",
        "single network (member 1, mixup 0.2)",
        "ensemble of 2",
    ]
    assert "the candidate 'ensemble of 2'" in selection["choice"]
