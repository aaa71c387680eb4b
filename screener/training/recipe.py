"""The training recipe: everything that defines a run (recorded in model.json), valid by
construction (each range is checked where it is declared, and ``screener train`` takes its
defaults from here), and the data a run selects with it. The orchestration that runs it is
:mod:`screener.training.train`; the guard and the shift probe read recipes without it."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from screener.errors import ModelError

if TYPE_CHECKING:
    from screener.training import data


@dataclass(frozen=True)
class FitParams:
    """Optimisation settings recorded in model.json."""

    epochs: int = 36
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 8
    head_epochs: int = 2
    fine_tune_fraction: float = 0.3
    #: Momentum of an exponential moving average of the weights (Polyak averaging); the
    #: averaged weights are the ones validated, checkpointed and kept. 0 turns it off.
    ema: float = 0.0
    #: Label smoothing of the cross-entropy targets (0 turns it off).
    label_smoothing: float = 0.0
    #: Mixup's Beta(alpha, alpha) (Zhang et al., ICLR 2018); 0 turns it off.
    mixup: float = 0.0

    def __post_init__(self) -> None:
        """Refuse settings that cannot train, naming the option (valid by construction)."""
        from screener.errors import ModelError

        if self.epochs < 1:
            raise ModelError(f"--epochs {self.epochs} must be at least 1")
        if not (self.ema == 0 or 0.9 <= self.ema < 1.0):
            raise ModelError(f"--ema {self.ema} must be 0 (off) or a momentum in [0.9, 1)")
        if not 0 <= self.label_smoothing <= 0.3:
            raise ModelError(f"--label-smoothing {self.label_smoothing} must lie in [0, 0.3]")
        if not 0 <= self.mixup <= 1:
            raise ModelError(f"--mixup {self.mixup} must lie in [0, 1]")

    def recorded(self) -> dict[str, Any]:
        """The settings as a member's recipe records them: ``ema``, ``label_smoothing`` and
        ``mixup`` only when used, so members trained before they existed still match."""
        out = asdict(self)
        for key in ("ema", "label_smoothing", "mixup"):
            if not out[key]:
                del out[key]
        return out


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (recorded in model.json)."""

    data_dir: Path
    out_dir: Path
    backbone: str = "small_cnn"
    weights: str = "none"
    task: str = "binary"
    input_size: int = 224
    #: small_cnn's base width (filters of its first full stage; later stages 2x, 4x, 8x)
    width: int = 32
    normalisation: str = "equalize"
    #: Fraction of each side kept by the centred crop before normalisation (1.0: none).
    crop: float = 1.0
    target_sensitivity: float = 0.95
    seed: int = 42
    val_fraction: float = 0.2
    limit: int | None = None
    exclude_family: str | None = None
    name: str | None = None
    fit: FitParams = field(default_factory=FitParams)
    #: Networks trained with seeds ``seed, seed + 1, ...`` on one split; the bundle averages
    #: their logits (a deep ensemble, Lakshminarayanan et al. 2017).
    members: int = 1
    #: Seed of the patient split (default: ``seed``); members of an ensemble share it.
    split_seed: int | None = None
    #: A probe bundle (the same recipe trained with ``exclude_family``): its shift figures go
    #: into the card, and its scores on the unseen family fit the calibration.
    probe_dir: Path | None = None
    #: The training films' age range in completed years, declared in the bundle for the
    #: population guard (the Kermany films: children one to five years old).
    population_age: tuple[int, int] = (1, 5)
    #: Other runs' folders whose finished members join this run's in the ensemble (a
    #: diverse ensemble: members of another recipe on the same data, split and input).
    with_members: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        """Refuse a recipe that cannot train, naming the option (valid by construction)."""
        if self.members < 1:
            raise ModelError(f"--members {self.members} must be at least 1")
        if not 8 <= self.width <= 256 or self.width % 2:
            raise ModelError(f"--width {self.width} must be an even number from 8 to 256")
        if self.width != 32 and self.backbone != "small_cnn":
            raise ModelError("--width applies to small_cnn only")
        if not 0.5 <= self.target_sensitivity < 1.0:
            raise ModelError(f"--target-sensitivity {self.target_sensitivity} must lie in [0.5, 1)")
        if not 0.0 < self.val_fraction < 1.0:
            raise ModelError(f"--val-fraction {self.val_fraction} must lie in (0, 1)")
        if not 0.5 <= self.crop <= 1.0:
            raise ModelError(f"--crop {self.crop} must lie in [0.5, 1]")
        if self.task != "binary" and (self.fit.label_smoothing or self.fit.mixup):
            what = "--label-smoothing" if self.fit.label_smoothing else "--mixup"
            raise ModelError(f"{what} applies to the binary task only")

    @property
    def data_split_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], data_dir: Path, out_dir: Path) -> TrainConfig:
        """The recipe's data selection and split as a bundle's model.json records them
        (what recomputing its validation split needs)."""
        t = metadata.get("training") or {}
        split = t.get("split") or {}
        if not split:
            raise ModelError(
                f"bundle {metadata.get('name')!r} records no validation split in model.json"
            )
        return cls(
            data_dir=data_dir,
            out_dir=out_dir,
            task=str(metadata.get("task", t.get("task", "binary"))),
            seed=int(split["seed"]),
            val_fraction=float(split["val_fraction"]),
            limit=t.get("limit"),
            exclude_family=t.get("exclude_family"),
        )


def weights_argument(weights: str) -> str | None:
    """``--weights`` as the Keras application constructor wants it (``None`` = random)."""
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights)
    if not path.is_file():
        raise ModelError(f"weights file {weights!r} does not exist (use imagenet, none or a path)")
    return str(path)


def select_samples(cfg: TrainConfig) -> list[data.Sample]:
    """The labelled images a run uses: listing, optional family exclusion, optional limit."""
    from screener.training import data

    samples = data.list_samples(cfg.data_dir, cfg.task)
    if cfg.exclude_family:
        samples = [s for s in samples if not data.in_family(s, cfg.exclude_family)]
    if cfg.limit:
        samples = data.limit_samples(samples, cfg.limit, cfg.seed)
    return samples


def default(name: str) -> Any:
    """A recipe field's default (:class:`TrainConfig`, else :class:`FitParams`): what
    ``screener train`` offers when an option is not given."""
    for cls in (TrainConfig, FitParams):
        for f in fields(cls):
            if f.name == name:
                if f.default is not MISSING:
                    return f.default
                if f.default_factory is not MISSING:
                    return f.default_factory()
    raise KeyError(name)


__all__ = ["FitParams", "TrainConfig", "default", "select_samples", "weights_argument"]
