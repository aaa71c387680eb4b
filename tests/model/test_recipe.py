"""The training recipe is valid by construction and is the one source of `screener train`'s
defaults; a bundle's recorded recipe gives back its data selection and split."""

from __future__ import annotations

import pytest

from screener.cli import build_parser
from screener.errors import ModelError
from screener.training.recipe import FitParams, TrainConfig, default


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"width": 7}, "--width"),
        ({"width": 48, "backbone": "vgg16"}, "--width applies to small_cnn"),
        ({"members": 0}, "--members"),
        ({"target_sensitivity": 1.0}, "--target-sensitivity"),
        ({"val_fraction": 0.0}, "--val-fraction"),
        ({"crop": 0.2}, "--crop"),
        ({"task": "type", "fit": FitParams(mixup=0.2)}, "--mixup applies to the binary task"),
    ],
)
def test_a_recipe_that_cannot_train_is_refused_naming_the_option(
    kwargs: dict[str, object], named: str
) -> None:
    """Each range is checked where it is declared, and the refusal names the option."""
    with pytest.raises(ModelError, match=named):
        TrainConfig(data_dir=".", out_dir=".", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"epochs": 0}, "--epochs"), ({"ema": 0.5}, "--ema"), ({"mixup": 2.0}, "--mixup")],
)
def test_fit_settings_out_of_range_are_refused(kwargs: dict[str, float], named: str) -> None:
    """The optimisation settings check their own ranges too."""
    with pytest.raises(ModelError, match=named):
        FitParams(**kwargs)  # type: ignore[arg-type]


def test_the_command_takes_its_defaults_from_the_recipe() -> None:
    """`screener train` with only --data and --out parses to the recipe's own defaults."""
    args = build_parser().parse_args(["train", "--data", "d", "--out", "o"])
    for option in ("backbone", "weights", "task", "input_size", "width", "normalisation",
                   "crop", "target_sensitivity", "seed", "val_fraction", "members", "epochs",
                   "batch_size", "learning_rate", "patience", "ema", "label_smoothing", "mixup"):  # fmt: skip
        assert getattr(args, option) == default(option), option


def test_a_recorded_recipe_gives_back_its_split() -> None:
    """from_metadata reads the split seed, fraction, limit and family out of model.json."""
    meta = {
        "name": "b",
        "task": "binary",
        "training": {"split": {"seed": 7, "val_fraction": 0.25}, "limit": 40,
                     "exclude_family": "IM"},
    }  # fmt: skip
    cfg = TrainConfig.from_metadata(meta, data_dir=".", out_dir=".")  # type: ignore[arg-type]
    assert (cfg.seed, cfg.val_fraction, cfg.limit, cfg.exclude_family) == (7, 0.25, 40, "IM")
    with pytest.raises(ModelError, match="records no validation split"):
        TrainConfig.from_metadata({"name": "b"}, data_dir=".", out_dir=".")  # type: ignore[arg-type]
