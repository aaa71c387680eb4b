"""End-to-end tests of `screener train`, `evaluate` and `predict` on a tiny bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from screener.cli import main
from screener.errors import ModelError
from screener.model import load_bundle

#: trains: 37 s before the first test, 28 s for one (loaded 2-core host)
pytestmark = pytest.mark.timeout(300)


def test_train_writes_a_loadable_bundle(tiny_bundle: Path) -> None:
    """A 60-image, one-epoch run writes a bundle whose predict returns probabilities."""
    for name in ("model.keras", "model.json", "MODEL_CARD.md", "roc.png", "confusion.png"):
        assert (tiny_bundle / name).is_file(), name
    assert not (tiny_bundle / "checkpoint.keras").exists()
    bundle = load_bundle(tiny_bundle)
    assert bundle.input_size == 64 and bundle.name == "tiny"
    assert bundle.uid.startswith("1.2.826.0.1.3680043.8.498.")
    probs = bundle.predict(np.random.default_rng(0).integers(0, 255, (3, 224, 224), np.uint8))
    assert probs.shape == (3,) and np.all((probs >= 0) & (probs <= 1))


def test_model_json_records_split_calibration_and_operating_point(tiny_bundle: Path) -> None:
    """model.json holds the split, fingerprint, calibration, threshold and its rule."""
    meta = json.loads((tiny_bundle / "model.json").read_text())
    split = meta["training"]["split"]
    assert split["seed"] == 42 and split["val_fraction"] == 0.3
    assert len(meta["training"]["data_fingerprint"]) == 64
    assert meta["calibration"]["method"] == "platt"
    assert 0.0 <= meta["threshold"] <= 1.0 and "Wilson" in meta["threshold_rule"]
    assert meta["preprocessing"]["normalisation"] == "equalize"
    assert meta["validation_metrics"]["n"] == split["validation"]["images"]
    card = (tiny_bundle / "MODEL_CARD.md").read_text()
    assert "not a diagnosis" in card and "No ImageNet" in card


def test_every_run_gets_a_new_uid(tiny_bundle: Path, chest_train: Path, tmp_path: Path) -> None:
    """Retraining with the same settings writes a bundle with a different UID."""
    out = tmp_path / "again"
    args = ["train", "--data", str(chest_train), "--out", str(out), "--limit", "30"]
    assert main([*args, "--epochs", "1", "--input-size", "48", "--val-fraction", "0.4"]) == 0
    assert load_bundle(out).uid != load_bundle(tiny_bundle).uid


def test_evaluate_validation_split_reproduces_model_json(tiny_bundle: Path, tmp_path: Path) -> None:
    """`evaluate --split validation` recomputes the card's validation metrics exactly."""
    out = tmp_path / "eval"
    assert (
        main(["evaluate", "--model", str(tiny_bundle), "--split", "validation", "--out", str(out)])
        == 0
    )
    report = json.loads((out / "metrics.json").read_text())["metrics"]
    stored = json.loads((tiny_bundle / "model.json").read_text())["validation_metrics"]
    for key in ("n", "auc", "auc_ci95", "sensitivity", "specificity", "brier", "confusion"):
        assert report[key] == pytest.approx(stored[key], abs=1e-9), key
    assert (out / "roc.png").is_file() and (out / "confusion.png").is_file()


def test_evaluate_validation_split_asks_for_a_moved_training_folder(
    tiny_bundle: Path, chest_train: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """model.json records the training folder as given to train (``../shared/...``): run from
    elsewhere, evaluate says so and how to point at it, and --data does."""
    import shutil

    moved = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, moved)
    meta = json.loads((moved / "model.json").read_text())
    meta["training"]["data_dir"] = "../not-here/chest_xray/train"
    (moved / "model.json").write_text(json.dumps(meta))
    assert main(["evaluate", "--model", str(moved), "--split", "validation"]) != 0
    err = capsys.readouterr().err
    assert "'../not-here/chest_xray/train'" in err and "give it with --data" in err
    out = tmp_path / "eval"
    args = ["evaluate", "--model", str(moved), "--split", "validation", "--out", str(out)]
    assert main([*args, "--data", str(chest_train)]) == 0
    assert (out / "metrics.json").is_file()


def test_evaluate_labels_csv(tiny_bundle: Path, chest_train: Path, tmp_path: Path) -> None:
    """A path,label CSV is scored; an unreadable file is skipped and reported, not fatal."""
    normals = sorted((chest_train / "NORMAL").iterdir())[:3]
    sick = sorted((chest_train / "PNEUMONIA").iterdir())[:3]
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows = ["path,label", *(f"{p},normal" for p in normals), *(f"{p},1" for p in sick)]
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("\n".join([*rows, "broken.png,0"]) + "\n")
    out = tmp_path / "eval"
    assert (
        main(
            ["evaluate", "--model", str(tiny_bundle), "--labels", str(csv_path), "--out", str(out)]
        )
        == 0
    )
    report = json.loads((out / "metrics.json").read_text())
    assert report["metrics"]["n"] == 6 and report["metrics"]["n_pneumonia"] == 3
    assert [Path(s["path"]).name for s in report["skipped"]] == ["broken.png"]
    assert report["skipped"][0]["reason"]
    for key in ("auc", "auc_ci95", "ppv", "npv", "f1", "brier", "accuracy"):
        assert key in report["metrics"]


def test_predict_prints_probability_and_writes_heatmap(
    tiny_bundle: Path, chest_train: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """predict --json reports a probability and label; --heatmap writes the film at 1024 px on
    its long side with a colour scale and the score beside it; a missing folder is refused."""
    from PIL import Image

    image = sorted((chest_train / "PNEUMONIA").iterdir())[0]
    heat = tmp_path / "cam.png"
    argv = ["predict", str(image), "--model", str(tiny_bundle), "--json", "--heatmap", str(heat)]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert 0.0 <= result["probability"] <= 1.0
    assert result["label"] in ("normal", "pneumonia")
    with Image.open(heat) as im:
        assert max(im.size) >= 1024 and im.mode in ("RGB", "RGBA")
        picture = np.asarray(im.convert("RGB"))
    # the jet colour scale's dark red and dark blue ends are both drawn
    assert np.any(np.all(np.abs(picture.astype(int) - (127, 0, 0)) < 20, axis=-1))
    assert np.any(np.all(np.abs(picture.astype(int) - (0, 0, 127)) < 20, axis=-1))
    missing = tmp_path / "no" / "cam.png"
    argv = ["predict", str(image), "--model", str(tiny_bundle), "--heatmap", str(missing)]
    assert main(argv) == 1 and not missing.parent.exists()
    assert "does not exist" in capsys.readouterr().err


def test_load_bundle_refuses_a_missing_folder(tmp_path: Path) -> None:
    """A missing bundle raises ModelError naming the folder."""
    with pytest.raises(ModelError, match="does not exist"):
        load_bundle(tmp_path / "nope")


def test_bundle_predict_refuses_wrong_dtype(tiny_bundle: Path) -> None:
    """predict takes uint8 canonical images only."""
    with pytest.raises(ModelError, match="uint8"):
        load_bundle(tiny_bundle).predict(np.zeros((1, 224, 224), dtype=np.float32))


def test_heatmap_names_are_derived_for_several_images() -> None:
    """One image writes OUT.png itself; several files or frames get derived names."""
    from screener.commands.predict import heatmap_path

    base = Path("/out/cam.png")
    assert heatmap_path(base, Path("a.dcm"), 0, 1, 1) == base
    assert heatmap_path(base, Path("/x/a.dcm"), 0, 1, 2) == Path("/out/cam-a.png")
    assert heatmap_path(base, Path("a.dcm"), 2, 3, 1) == Path("/out/cam-2.png")
    assert heatmap_path(base, Path("b.dcm"), 1, 2, 3) == Path("/out/cam-b-1.png")
