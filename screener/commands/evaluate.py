"""``screener evaluate``: a bundle's metrics on a labelled set, at the bundle's threshold."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from screener.config import Settings


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "evaluate",
        help="measure a model bundle on labelled images",
        description="AUC (bootstrap 95% CI), sensitivity, specificity, PPV, NPV, F1, Brier "
        "and the confusion matrix at the bundle's threshold. DIR is a Kaggle-layout folder "
        "(NORMAL/, PNEUMONIA/), or any folder with --labels CSV (path,label) for DICOM files.",
    )
    p.add_argument("--model", default=None, help="bundle folder (default: setting model.bundle)")
    p.add_argument("--data", type=Path, default=None, help="labelled data folder")
    p.add_argument("--labels", type=Path, default=None, help="CSV with columns path,label")
    p.add_argument(
        "--split",
        choices=("all", "validation"),
        default="all",
        help="validation: recompute the bundle's own patient-level validation split from "
        "model.json (DIR defaults to the training folder) and score only that",
    )
    p.add_argument("--out", type=Path, default=None, help="folder for metrics.json and figures")
    p.set_defaults(func=run)


def _validation_items(bundle: Any, data_dir: Path | None) -> tuple[Any, Any, str]:
    """Labels and images of the bundle's own validation split, recomputed from model.json."""
    import numpy as np

    from screener.training import data
    from screener.training.guard import bundle_split

    _, val, root = bundle_split(bundle, data_dir)
    labels = np.array([s.label for s in val], dtype=np.int64)
    return labels, data.load_images(root, val), f"validation split of {root}"


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.model.opening import open_model

    bundle = open_model(settings, args.model)  # before anything imports TensorFlow

    import numpy as np
    import structlog

    from screener.errors import ModelError
    from screener.model.evaluation import (
        Item,
        describe,
        read_labels_csv,
        score_arrays,
        score_files,
    )
    from screener.model.metrics import summary
    from screener.training import data
    from screener.training.train import write_figures

    log = structlog.get_logger()
    skipped: list[dict[str, str]] = []
    if args.split == "validation":
        labels, images, what = _validation_items(bundle, args.data)
        probs = score_arrays(bundle, images)
    elif args.labels is not None:
        items = read_labels_csv(args.labels, args.data)
        labels, probs, skipped = score_files(bundle, items)
        what = str(args.labels)
    elif args.data is not None:
        samples = data.list_samples(args.data)
        items = [Item(args.data / s.path, s.label) for s in samples]
        labels, probs, skipped = score_files(bundle, items)
        what = str(args.data)
    else:
        raise ModelError("give --data DIR (Kaggle layout), --labels CSV, or --split validation")
    if len(labels) == 0:
        raise ModelError(f"nothing could be scored in {what}")
    metrics = summary(labels, probs, bundle.threshold)
    report = {"model": describe(bundle), "data": what, "metrics": metrics, "skipped": skipped}
    log.info("evaluate_done", n=metrics["n"], auc=round(metrics["auc"], 4), skipped=len(skipped))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        np.savetxt(
            args.out / "scores.csv",
            np.column_stack([labels, probs]),
            delimiter=",",
            header="label,probability",
            comments="",
            fmt=["%d", "%.6f"],
        )
        write_figures(args.out, labels, probs, metrics, what if len(what) < 40 else "evaluation")
    _print_report(metrics, what, bundle.threshold, len(skipped))
    return 0


def _print_report(m: dict[str, Any], what: str, threshold: float, skipped: int) -> None:
    c = m["confusion"]
    print(f"data         {what}: {m['n']} images ({m['n_pneumonia']} pneumonia), {skipped} skipped")
    print(f"AUC          {m['auc']:.4f} (95% CI {m['auc_ci95'][0]:.4f}-{m['auc_ci95'][1]:.4f})")
    print(f"threshold    {threshold:.4f}")
    for key in ("sensitivity", "specificity", "ppv", "npv", "accuracy", "f1", "brier"):
        print(f"{key:<12} {m[key]:.4f}")
    print(f"confusion    TP {c['tp']}  FP {c['fp']}  TN {c['tn']}  FN {c['fn']}")
