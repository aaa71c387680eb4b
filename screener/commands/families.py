"""``screener families``: leave-one-family-out model selection over fold bundles."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from screener.config import Settings


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "families",
        help="judge recipes on folds that each left one file-name family out",
        description="Leave-one-family-out model selection. Each --fold is a bundle trained "
        "with --exclude-family (IM, NORMAL2-IM, bacteria or virus); it is judged on that "
        "family's films, all unseen, with its own validation films of the other class. "
        "Prints per fold the AUC (bootstrap 95%% CI), the best specificity with sensitivity "
        ">= 0.95 and the sensitivity and specificity at its own threshold, then per recipe "
        "the means over its folds (the criterion), and over the families all recipes have.",
    )
    p.add_argument(
        "--fold",
        action="append",
        required=True,
        metavar="DIR[@K]",
        help="a fold bundle folder (repeatable); DIR@K takes member K of a multi-member run",
    )
    p.add_argument(
        "--tta",
        action="store_true",
        help="also judge test-time augmentation (view sets of small zooms and shifts) on "
        "every fold that keeps its network; each view's logits are kept in the fold's "
        "tta_scores.npz, so a rerun does not run the networks again",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the training folder, for --tta (default: the one recorded in model.json)",
    )
    p.add_argument(
        "--boot", type=int, default=1000, help="bootstrap resamples of the AUC (default 1000)"
    )
    p.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    p.add_argument(
        "--record",
        type=Path,
        default=None,
        metavar="BUNDLE",
        help="keep the tables in this bundle's model.json (model_selection.lofo) and render "
        "its MODEL_CARD.md again; the network, calibration and threshold are not touched",
    )
    p.add_argument(
        "--conclusion",
        default="",
        help="with --record: the paragraph under the tables (what was chosen, and why)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.model.runtime import configure_inference

    configure_inference(settings.worker)  # before TensorFlow is imported

    from screener.training import families

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    folds = [families.load_fold(spec) for spec in args.fold]
    rows = families.evaluate(folds, args.tta, args.data, args.boot, progress)
    summary = families.summarise(rows)
    print(families.fold_table(rows))
    print()
    print(families.summary_table(summary))
    if args.record is not None:
        families.record(args.record, rows, args.conclusion)
        print(f"\nrecorded in {args.record / 'model.json'} and its MODEL_CARD.md", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "criterion": "mean over folds of the best specificity with sensitivity "
                    ">= 0.95 (and of the AUC)",
                    "folds": [r.__dict__ for r in rows],
                    "candidates": summary,
                },
                indent=1,
            )
            + "\n"
        )
    return 0
