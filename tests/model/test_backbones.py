"""Tests of the network choices: local weights files, ImageNet, the type task, small_cnn's
width."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from screener.cli import main
from screener.model import load_bundle

#: trains a network per test: up to 62 s each (loaded 2-core host)
pytestmark = pytest.mark.timeout(300)


def test_weights_path_loads_a_local_file(chest_train: Path, tmp_path: Path) -> None:
    """--weights PATH initialises the backbone from the file; frozen early layers keep it."""
    import keras

    app = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    conv1 = keras.ops.convert_to_numpy(app.get_layer("Conv1").kernel)
    weights_file = tmp_path / "mobilenet.weights.h5"
    app.save_weights(weights_file)
    out = tmp_path / "mnv2"
    argv = ["train", "--data", str(chest_train), "--out", str(out), "--backbone", "mobilenetv2"]
    argv += ["--weights", str(weights_file), "--limit", "40", "--epochs", "3", "--input-size", "32"]
    assert main([*argv, "--val-fraction", "0.4"]) == 0
    bundle = load_bundle(out)
    loaded = keras.ops.convert_to_numpy(
        bundle.model.get_layer("backbone").get_layer("Conv1").kernel
    )
    assert np.array_equal(loaded, conv1)
    meta = json.loads((out / "model.json").read_text())
    assert meta["initialisation"]["weights"] == str(weights_file)
    assert meta["training"]["epochs_run"] == 3  # 2 head-only epochs, then 1 of fine-tuning


def test_imagenet_weights_are_requested_from_keras(monkeypatch: pytest.MonkeyPatch) -> None:
    """--weights imagenet passes weights="imagenet" to the application (no network in tests)."""
    import keras

    from screener.model.architectures import build_model
    from screener.training.recipe import weights_argument

    real = keras.applications.MobileNetV2
    seen: list[Any] = []

    def recorder(**kwargs: Any) -> Any:
        seen.append(kwargs["weights"])
        return real(**{**kwargs, "weights": None})

    monkeypatch.setattr(keras.applications, "MobileNetV2", recorder)
    model = build_model("mobilenetv2", 32, "binary", weights_argument("imagenet"))
    assert seen == ["imagenet"]
    assert model.input_shape == (None, 32, 32, 1)
    assert model.get_layer("grey_to_rgb").output.shape[-1] == 3


def test_missing_weights_file_is_a_clear_error(chest_train: Path, tmp_path: Path) -> None:
    """A --weights path that does not exist fails with exit code 1, before any training."""
    argv = ["train", "--data", str(chest_train), "--out", str(tmp_path / "x")]
    assert main([*argv, "--backbone", "vgg16", "--weights", str(tmp_path / "none.h5")]) == 1


def test_type_task_trains_three_classes(chest_train: Path, tmp_path: Path) -> None:
    """--task type trains a 3-way softmax; the bundle still returns P(pneumonia) in [0, 1]."""
    out = tmp_path / "type"
    argv = ["train", "--data", str(chest_train), "--out", str(out), "--task", "type"]
    assert main([*argv, "--limit", "40", "--epochs", "1", "--input-size", "48"]) == 0
    bundle = load_bundle(out)
    assert bundle.model.output_shape == (None, 3)
    assert bundle.metadata["classes"] == ["normal", "bacterial", "viral"]
    probs = bundle.predict(np.full((2, 224, 224), 128, np.uint8))
    assert np.all((probs >= 0) & (probs <= 1))


def test_width_widens_small_cnn_and_is_recorded(chest_train: Path, tmp_path: Path) -> None:
    """--width 16 builds small_cnn with half the filters of the default (a quarter or so of
    the parameters), records the width in model.json and in the card's reproduce command;
    a width on another backbone, or an odd one, is refused before any training."""
    from screener.model.architectures import build_small_cnn, members_of

    out = tmp_path / "narrow"
    argv = ["train", "--data", str(chest_train), "--out", str(out)]
    assert (
        main([*argv, "--width", "16", "--limit", "40", "--epochs", "1", "--input-size", "48"]) == 0
    )
    bundle = load_bundle(out)
    assert bundle.metadata["width"] == 16
    assert "--width 16" in (out / "MODEL_CARD.md").read_text()
    network = members_of(bundle.model)[0]
    assert network.get_layer("features_relu").output.shape[-1] == 16 * 8
    assert bundle.metadata["parameters"] < build_small_cnn(48, "binary").count_params() / 2
    assert main([*argv, "--backbone", "vgg16", "--width", "48"]) == 1
    assert main([*argv, "--width", "7"]) == 1


def test_ema_ships_the_averaged_weights(chest_train: Path, tmp_path: Path) -> None:
    """--ema keeps an exponential moving average of the weights and ships it: with momentum
    0.999 over a few steps the averaged trainable weights have barely left their first
    step's values (Keras starts the average there), while the same run without it has moved
    them further; both options are recorded in model.json and the card."""
    import keras

    from screener.model.architectures import build_model, members_of

    keras.utils.set_random_seed(42)  # what train does before building its first member
    initial = [
        keras.ops.convert_to_numpy(w)
        for w in build_model("small_cnn", 48, "binary", None, width=16).trainable_weights
    ]

    def moved(out: Path) -> float:
        network = members_of(load_bundle(out).model)[0]
        weights = [keras.ops.convert_to_numpy(w) for w in network.trainable_weights]
        return float(sum(np.abs(w - w0).sum() for w, w0 in zip(weights, initial, strict=True)))

    argv = ["train", "--data", str(chest_train), "--width", "16", "--limit", "80"]
    argv += ["--epochs", "2", "--input-size", "48", "--batch-size", "8", "--seed", "42"]
    plain, averaged = tmp_path / "plain", tmp_path / "ema"
    assert main([*argv, "--out", str(plain)]) == 0
    assert main([*argv, "--out", str(averaged), "--ema", "0.999", "--label-smoothing", "0.1"]) == 0
    assert moved(averaged) < 0.3 * moved(plain)
    optimiser = json.loads((averaged / "model.json").read_text())["training"]["optimiser"]
    assert optimiser["ema"] == 0.999 and optimiser["label_smoothing"] == 0.1
    assert "ema" not in json.loads((plain / "model.json").read_text())["training"]["optimiser"]
    card = (averaged / "MODEL_CARD.md").read_text()
    assert "--ema 0.999" in card and "--label-smoothing 0.1" in card
    assert main([*argv, "--out", str(tmp_path / "x"), "--ema", "0.5"]) == 1
    assert (
        main([*argv, "--out", str(tmp_path / "x"), "--label-smoothing", "0.1", "--task", "type"])
        == 1
    )


def test_with_members_joins_another_runs_members(chest_train: Path, tmp_path: Path) -> None:
    """--with-members DIR adds another run's finished members (another recipe: mixup) to
    this run's ensemble: the bundle's member logits are this run's network's and then the
    other run's, each member's recipe is recorded and the card says how to make both runs;
    a run on another split or input size is refused before any training."""
    from screener.training.train import member_path

    argv = ["train", "--data", str(chest_train), "--width", "16", "--limit", "40"]
    argv += ["--epochs", "1", "--input-size", "48", "--val-fraction", "0.4"]
    other, joined = tmp_path / "mixup", tmp_path / "joined"
    assert main([*argv, "--out", str(other), "--mixup", "0.2"]) == 0
    assert main([*argv, "--out", str(joined), "--with-members", str(other)]) == 0

    films = np.stack([np.full((224, 224), v, np.uint8) for v in (40, 120, 200)])
    films[:, 60:160, 60:160] = 90
    both = load_bundle(joined).member_logits(films)
    assert both.shape == (2, 3)
    assert np.allclose(both[1], load_bundle(other).member_logits(films)[0], atol=1e-5)
    assert member_path(joined, 1).exists() is False  # joined members stay in their own run
    members = json.loads((joined / "model.json").read_text())["training"]["members"]
    assert [m.get("variant", "") for m in members] == ["", "mixup 0.2"]
    assert members[1]["from"] == str(other)
    card = (joined / "MODEL_CARD.md").read_text()
    assert "--with-members <run 1>" in card and "--mixup 0.2" in card
    assert "seeds 42, 42 (mixup 0.2)" in card

    refused = tmp_path / "refused"
    assert (
        main([*argv, "--out", str(refused), "--with-members", str(other), "--split-seed", "7"]) == 1
    )
    assert main([*argv, "--out", str(refused), "--with-members", str(tmp_path / "none")]) == 1
    assert not (refused / "members").exists()  # refused before training
