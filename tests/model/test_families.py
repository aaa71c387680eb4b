"""Leave-one-family-out model selection: folds that leave a normal or a pneumonia family out,
`screener families` judging them (with test-time augmentation kept per fold), the figures'
orientation and the TTA views' geometry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from screener.cli import main
from screener.errors import ModelError
from screener.training import data, families

#: its fixtures train: 34 s before the first test (loaded 2-core host)
pytestmark = pytest.mark.timeout(300)

PER_FAMILY = 10
NAMES = {
    "IM": ("NORMAL", "IM-{:04d}-0001.jpeg"),
    "NORMAL2-IM": ("NORMAL", "NORMAL2-IM-{:04d}-0001.jpeg"),
    "bacteria": ("PNEUMONIA", "person{:d}_bacteria_1.jpeg"),
    "virus": ("PNEUMONIA", "person{:d}_virus_2.jpeg"),
}
TRAIN = ["--epochs", "1", "--input-size", "48", "--width", "8", "--val-fraction", "0.3"]


def _film(rng: np.random.Generator, pneumonia: bool) -> Image.Image:
    """A 224 px grey film: a gradient with noise, and a bright patch for pneumonia."""
    x = np.tile(np.linspace(40, 160, 224), (224, 1)) + rng.normal(0, 12, (224, 224))
    if pneumonia:
        x[70:150, 40:110] += 70
    return Image.fromarray(np.clip(x, 0, 255).astype(np.uint8), mode="L").convert("RGB")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Kaggle-layout folder with PER_FAMILY films of each of the four families."""
    root = tmp_path_factory.mktemp("families") / "train"
    rng = np.random.default_rng(0)
    for f, (cls, pattern) in enumerate(NAMES.values()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(PER_FAMILY):
            name = pattern.format(100 * f + i + 1)
            _film(rng, cls == "PNEUMONIA").save(root / cls / name, quality=95)
    return root


def _fold(folder: Path, out: Path, family: str) -> Path:
    argv = ["train", "--data", str(folder), "--out", str(out), *TRAIN, "--seed", "1"]
    assert main([*argv, "--split-seed", "42", "--exclude-family", family]) == 0
    return out


@pytest.fixture(scope="module")
def virus_fold(folder: Path) -> Path:
    """A fold trained without the virus pneumonias."""
    return _fold(folder, folder.parent / "virus-fold", "virus")


@pytest.fixture(scope="module")
def im_fold(folder: Path) -> Path:
    """A fold trained without the IM normals."""
    return _fold(folder, folder.parent / "im-fold", "IM")


def test_film_family_tells_the_four_families_apart() -> None:
    """film_family names each family; family_of still says person for both pneumonias."""
    assert data.film_family("IM-0115-0001.jpeg") == "IM"
    assert data.film_family("NORMAL2-IM-0588-0001.jpeg") == "NORMAL2-IM"
    assert data.film_family("person1_bacteria_1.jpeg") == "bacteria"
    assert data.film_family("person1000_virus_1681.jpeg") == "virus"
    assert data.film_family("scan.png") == "other"
    assert data.family_of("person1_bacteria_1.jpeg") == data.family_of("person3_virus_2.jpeg")
    assert data.family_of("person1_bacteria_1.jpeg") == "person"


def test_pneumonia_fold_trains_without_its_family_and_scores_it(virus_fold: Path) -> None:
    """A virus fold trains on the other 30 films and keeps logits for all 10 virus films,
    labelled pneumonia, with its validation films."""
    meta = json.loads((virus_fold / "model.json").read_text())
    assert meta["training"]["images"] == 3 * PER_FAMILY
    assert meta["training"]["exclude_family"] == "virus"
    assert meta["shift_proxy"]["unseen_pneumonias"] == PER_FAMILY
    assert 0.0 <= meta["shift_proxy"]["sensitivity_unseen"] <= 1.0
    with np.load(virus_fold / "shift_scores.npz") as npz:
        assert int(npz["unseen_label"]) == 1 and str(npz["family"]) == "virus"
        assert npz["unseen_logits"].shape == (1, PER_FAMILY)
        assert all("_virus_" in str(name) for name in npz["unseen_files"])
        assert npz["val_logits"].shape[1] == len(npz["val_labels"])
    assert (
        "without the 10 pneumonia films of the\n`virus`"
        in (virus_fold / "MODEL_CARD.md").read_text()
    )


def test_normal_fold_leaves_out_only_its_normals(im_fold: Path) -> None:
    """An IM fold drops the IM normals only and records the normal-family figures as before."""
    meta = json.loads((im_fold / "model.json").read_text())
    assert meta["training"]["images"] == 3 * PER_FAMILY
    sp = meta["shift_proxy"]
    assert sp["unseen_normals"] == PER_FAMILY
    assert {"specificity_unseen", "flagged_unseen", "specificity_at_sensitivity_0_95"} <= set(sp)
    with np.load(im_fold / "shift_scores.npz") as npz:
        assert int(npz["unseen_label"]) == 0
        assert all(str(name).startswith("IM-") for name in npz["unseen_files"])


def test_families_command_judges_folds_and_keeps_tta_logits(
    virus_fold: Path, im_fold: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`screener families --tta` judges each fold as its recipe and each TTA view set, keeps
    every view's logits in the fold, and a rerun from those logits alone gives the same table."""
    report = tmp_path / "lofo.json"
    argv = ["families", "--fold", str(virus_fold), "--fold", str(im_fold), "--tta", "--boot", "50"]
    assert main([*argv, "--json", str(report)]) == 0
    first = json.loads(report.read_text())
    out = capsys.readouterr().out
    assert "| virus | 10 |" in out and "| IM | 10 |" in out
    assert len(first["folds"]) == 2 * (1 + len(families.VIEW_SETS))
    recipe = next(c for c in first["candidates"] if "TTA" not in c["candidate"])
    assert recipe["families"] == ["IM", "virus"]
    per_fold = [
        f["figures"][families.KEY] for f in first["folds"] if f["candidate"] == recipe["candidate"]
    ]
    assert recipe["mean_spec_at_sens_0_95"] == pytest.approx(np.mean(per_fold))
    tta = next(c for c in first["candidates"] if "TTA 5" in c["candidate"])
    assert tta["reference"] == recipe["candidate"] and tta["paired_families"] == ["IM", "virus"]
    tta_fold = [f["figures"]["auc"] for f in first["folds"] if f["candidate"] == tta["candidate"]]
    ref_fold = [
        f["figures"]["auc"] for f in first["folds"] if f["candidate"] == recipe["candidate"]
    ]
    assert tta["paired_delta_auc"] == pytest.approx(np.mean(tta_fold) - np.mean(ref_fold))
    with np.load(virus_fold / families.TTA_FILE) as npz:
        assert list(npz["views"]) == list(families.VIEWS)
        assert npz["unseen_logits"].shape == (len(families.VIEWS), 1, PER_FAMILY)
    # the kept logits suffice: a copy without its network gives the same figures
    copy = tmp_path / "virus-copy"
    shutil.copytree(virus_fold, copy)
    (copy / "model.keras").unlink()
    assert (
        main(["families", "--fold", str(copy), "--tta", "--boot", "50", "--json", str(report)]) == 0
    )
    again = json.loads(report.read_text())
    mine = [f for f in first["folds"] if f["family"] == "virus"]
    # compared as JSON text, so that a NaN figure (a degenerate tiny model) equals itself
    assert json.dumps([f["figures"] for f in again["folds"]]) == json.dumps(
        [f["figures"] for f in mine]
    )


def test_fold_member_spec(virus_fold: Path) -> None:
    """DIR@K takes member K of a run; a member the run does not have is refused."""
    assert families.parse_fold("runs/probe@1") == (Path("runs/probe"), 1)
    assert families.parse_fold("runs/a@b") == (Path("runs/a@b"), None)
    assert families.load_fold(f"{virus_fold}@0").val_logits.shape[0] == 1
    with pytest.raises(ModelError, match="no member 3"):
        families.load_fold(f"{virus_fold}@3")


def test_judge_puts_unseen_pneumonias_on_the_positive_side() -> None:
    """For a pneumonia fold the unseen films are the positives: missing them lowers the
    sensitivity and the criterion, while validation normals fix the specificity."""
    rng = np.random.default_rng(3)
    val_labels = np.r_[np.zeros(60), np.ones(60)].astype(np.int64)
    val = np.r_[rng.normal(-3, 1, 60), rng.normal(3, 1, 60)][None, :]
    found = judge_pneumonia(val, val_labels, rng.normal(3, 1, 200))
    missed = judge_pneumonia(val, val_labels, rng.normal(-3, 1, 200))
    assert found["auc"] > 0.98 and found["sensitivity"] > 0.9
    assert found[families.KEY] > 0.9
    assert missed["auc"] < 0.6 and missed["sensitivity"] < 0.2
    assert missed[families.KEY] < 0.2
    assert found["unseen"] == 200 and found["other"] == 60


def judge_pneumonia(val: np.ndarray, labels: np.ndarray, unseen: np.ndarray) -> dict[str, float]:
    return families.judge(val, labels, unseen[None, :], unseen_label=1, n_boot=50)


def test_views_zoom_and_shift_without_flipping() -> None:
    """Zoom-in enlarges a centred square by its factor squared, a right shift moves it right by
    4% of the side, the plain view is the film itself, and no view mirrors the film."""
    films = np.zeros((1, 224, 224), dtype=np.uint8)
    films[0, 82:142, 82:142] = 255
    films[0, 10:20, 10:20] = 255  # a marker at the top left
    plain = families.view_images(films, *families.VIEWS["identity"])
    assert np.array_equal(plain, films)
    zoomed = families.view_images(films, *families.VIEWS["zoom_in"])
    centre = (zoomed[0, 40:184, 40:184] > 127).sum() / (films[0, 40:184, 40:184] > 127).sum()
    assert centre == pytest.approx(1.06**2, rel=0.05)
    right = families.view_images(films, *families.VIEWS["right"])
    columns = np.flatnonzero((right[0, 82:142] > 127).any(axis=0))
    assert columns.min() == pytest.approx(82 + 0.04 * 224, abs=1.5)
    for name, view in families.VIEWS.items():
        marker = np.argwhere(families.view_images(films, *view)[0, :40] > 127)
        assert len(marker) and marker[:, 1].max() < 40, name  # still at the top left


def test_record_puts_the_tables_in_a_bundles_card(virus_fold: Path, tmp_path: Path) -> None:
    """--record keeps the LOFO tables in model.json and the card renders them, leaving the
    threshold and the UID as they were."""
    bundle = tmp_path / "bundle"
    shutil.copytree(virus_fold, bundle)
    before = json.loads((bundle / "model.json").read_text())
    argv = ["families", "--fold", str(virus_fold), "--boot", "20", "--record", str(bundle)]
    assert main([*argv, "--conclusion", "Nothing shipped."]) == 0
    after = json.loads((bundle / "model.json").read_text())
    lofo = after["model_selection"]["lofo"]
    assert [f["family"] for f in lofo["folds"]] == ["virus"]
    assert (after["threshold"], after["uid"]) == (before["threshold"], before["uid"])
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "## Leave-one-family-out model selection" in card
    assert "| virus | 10 | small_cnn width 8, 48 px, 1 epochs |" in card
    assert "Nothing shipped." in card
    from screener.training.card import render_card

    assert card == render_card(after)
