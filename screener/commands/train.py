"""``screener train``: train a model bundle on a Kaggle-layout folder of chest X-rays."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from screener.config import Settings

BACKBONE_CHOICES = (
    "small_cnn",
    "inceptionv3",
    "vgg16",
    "densenet121",
    "mobilenetv2",
    "efficientnetb0",
)


def register(subparsers: Any) -> None:
    from screener.training.recipe import default

    p: argparse.ArgumentParser = subparsers.add_parser(
        "train",
        help="train a model bundle",
        description="Train a model bundle on DIR/NORMAL and DIR/PNEUMONIA; validation is a "
        "patient-level split of DIR.",
    )
    p.add_argument("--data", required=True, type=Path, help="Kaggle-layout training folder")
    p.add_argument("--out", required=True, type=Path, help="bundle folder to write")
    p.add_argument(
        "--backbone",
        default=default("backbone"),
        choices=BACKBONE_CHOICES,
        help="network: small_cnn (default, from scratch) or a Keras application for transfer learning",
    )
    p.add_argument(
        "--weights",
        default=default("weights"),
        help="imagenet (Keras downloads them), PATH to a local weights file, or none (default)",
    )
    p.add_argument(
        "--task",
        default=default("task"),
        choices=("binary", "type"),
        help="binary: normal vs pneumonia (default); type: normal, bacterial, viral",
    )
    p.add_argument(
        "--epochs", type=int, default=default("epochs"), help="most epochs per member (default 36)"
    )
    p.add_argument(
        "--batch-size", type=int, default=default("batch_size"), help="images per step (default 32)"
    )
    p.add_argument(
        "--learning-rate",
        type=float,
        default=default("learning_rate"),
        help="peak AdamW learning rate (default 1e-3)",
    )
    p.add_argument(
        "--patience", type=int, default=default("patience"), help="early-stopping patience (epochs)"
    )
    p.add_argument(
        "--ema",
        type=float,
        default=default("ema"),
        metavar="MOMENTUM",
        help="keep an exponential moving average of the weights with this momentum "
        "(e.g. 0.998) and validate, checkpoint and ship the averaged weights (default 0: off)",
    )
    p.add_argument(
        "--label-smoothing",
        type=float,
        default=default("label_smoothing"),
        metavar="EPS",
        help="smooth the binary targets towards 0.5 by EPS (e.g. 0.1; default 0: off)",
    )
    p.add_argument(
        "--mixup",
        type=float,
        default=default("mixup"),
        metavar="ALPHA",
        help="mixup: blend each training image and its target with another's, "
        "lambda ~ Beta(ALPHA, ALPHA) (e.g. 0.2; default 0: off)",
    )
    p.add_argument(
        "--input-size",
        type=int,
        default=default("input_size"),
        metavar="PX",
        help="network input side (default 224)",
    )
    p.add_argument(
        "--width",
        type=int,
        default=default("width"),
        metavar="N",
        help="small_cnn's base width: filters of its first stage, later stages 2x, 4x, 8x "
        "(default 32, about 0.3 M parameters; 48 about 0.6 M)",
    )
    p.add_argument(
        "--normalisation",
        default=default("normalisation"),
        choices=("equalize", "minmax", "none"),
        help="per-image intensity normalisation: histogram equalisation (default), "
        "1st-99th percentile stretch, or none",
    )
    p.add_argument(
        "--crop",
        type=float,
        default=default("crop"),
        metavar="FRACTION",
        help="keep the centred square of this fraction of each side before normalisation "
        "(0.5-1.0; 1.0 keeps the whole film)",
    )
    p.add_argument(
        "--target-sensitivity",
        type=float,
        default=default("target_sensitivity"),
        help="the operating point: threshold for this sensitivity on validation (default 0.95)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=default("seed"),
        help="seed of the first member (the next get seed+1, ...)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=default("val_fraction"),
        help="share of patients held out for validation (default 0.2)",
    )
    p.add_argument("--limit", type=int, default=None, help="use a stratified sample of N images")
    p.add_argument(
        "--exclude-family",
        choices=("IM", "NORMAL2-IM", "bacteria", "virus"),
        default=None,
        help="leave out the films of this file-name family: the normals IM or NORMAL2-IM, the "
        "pneumonias bacteria (personN_bacteria_M) or virus (personN_virus_M); the bundle then "
        "scores them, unseen, with its validation films of the other class (a fold of "
        "leave-one-family-out model selection, see screener families)",
    )
    p.add_argument(
        "--members",
        type=int,
        default=default("members"),
        help="train N networks (seeds SEED..SEED+N-1) on one split and average their logits; "
        "a rerun resumes after the last finished member",
    )
    p.add_argument(
        "--split-seed", type=int, default=None, help="seed of the patient split (default: --seed)"
    )
    p.add_argument(
        "--probe",
        type=Path,
        default=None,
        metavar="DIR",
        help="a probe bundle of the same recipe (trained with --exclude-family): its figures go "
        "into the card and the calibration is fitted on its unseen-family scores",
    )
    p.add_argument(
        "--with-members",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="add the finished ensemble members of another run (same data, split, input size, "
        "normalisation and task; another optimisation, augmentation or width) to this run's: "
        "a diverse ensemble (repeatable)",
    )
    p.add_argument(
        "--population-age",
        type=int,
        nargs=2,
        default=(1, 5),
        metavar=("MIN", "MAX"),
        help="the training films' age range in years, declared for the population guard "
        "(default 1 5: the Kermany films)",
    )
    p.add_argument("--name", default=None, help="bundle name (default: the --out folder name)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.training.recipe import FitParams, TrainConfig
    from screener.training.train import remove_stale, train

    # the recipe checks its own ranges (screener.training.recipe): a bad option is refused
    # here, naming it, before anything is trained

    cfg = TrainConfig(
        data_dir=args.data,
        out_dir=args.out,
        backbone=args.backbone,
        weights=args.weights,
        task=args.task,
        input_size=args.input_size,
        width=args.width,
        normalisation=args.normalisation,
        crop=args.crop,
        target_sensitivity=args.target_sensitivity,
        seed=args.seed,
        val_fraction=args.val_fraction,
        limit=args.limit,
        exclude_family=args.exclude_family,
        name=args.name,
        members=args.members,
        split_seed=args.split_seed,
        probe_dir=args.probe,
        population_age=(args.population_age[0], args.population_age[1]),
        with_members=tuple(args.with_members),
        fit=FitParams(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            patience=args.patience,
            ema=args.ema,
            label_smoothing=args.label_smoothing,
            mixup=args.mixup,
        ),
    )
    remove_stale(cfg.out_dir)
    bundle = train(cfg)
    m = bundle.metadata["validation_metrics"]
    split = bundle.metadata["training"]["split"]
    print(f"bundle      {bundle.path}  ({bundle.name} {bundle.version})")
    print(f"uid         {bundle.uid}")
    print(
        f"split       by patient, seed {split['seed']}, val fraction {split['val_fraction']}: "
        f"train {split['train']['images']} images / {split['train']['patients']} patients, "
        f"validation {split['validation']['images']} / {split['validation']['patients']}"
    )
    print(f"val AUC     {m['auc']:.4f} (95% CI {m['auc_ci95'][0]:.4f}-{m['auc_ci95'][1]:.4f})")
    print(
        f"threshold   {bundle.threshold:.4f}: sensitivity {m['sensitivity']:.4f}, "
        f"specificity {m['specificity']:.4f} (validation; flatters)"
    )
    return 0
