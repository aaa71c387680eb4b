"""``screener guard``: fit (or refit) a model bundle's domain guard."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from screener.config import Settings


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "guard",
        help="fit a model bundle's domain guard on its training films",
        description="Fit the domain guard (Mahalanobis distance on the network's features) "
        "on the bundle's own training split and set its threshold so that 99%% of its "
        "validation films pass; the split is recomputed from model.json. `screener train` "
        "does this itself; use this for a bundle trained without it.",
    )
    p.add_argument("--model", default=None, help="bundle folder (default: setting model.bundle)")
    p.add_argument("--data", type=Path, default=None, help="its training folder, if moved")
    p.add_argument(
        "--check",
        type=Path,
        default=None,
        metavar="DATA",
        help="also record what the guard does with the development data's foreign films "
        "(DATA/dicom: adult chest, hip, tibia) and with inverted, rotated, constant and noise "
        "images; shown in the card",
    )
    p.add_argument("--keep", action="store_true", help="keep the fitted guard, only --check")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.model.opening import open_model

    bundle = open_model(settings, args.model, with_guard=args.keep)  # before TensorFlow

    import numpy as np

    from screener.errors import ModelError
    from screener.training import data
    from screener.training.card import write_card
    from screener.training.guard import bundle_split, fit_bundle_guard

    train, val, root = bundle_split(bundle, args.data)
    val_images = data.load_images(root, val)
    if args.keep:
        if bundle.guard is None:
            raise ModelError(f"bundle {bundle.name!r} has no domain guard to keep")
        record = bundle.metadata["domain_guard"]
    else:
        labels = np.array([s.label for s in train], dtype=np.int64)
        record = fit_bundle_guard(bundle, data.load_images(root, train), labels, val_images)
    if args.check is not None:
        from screener.model.bundle import write_metadata
        from screener.training.guard import foreign_checks

        record["checks"] = foreign_checks(bundle, args.check, val_images)
        bundle.metadata["domain_guard"] = record
        write_metadata(bundle.path, bundle.metadata)
        for c in record["checks"]:
            print(
                f"{c['what']:<48} n={c['n']:<5} outside {100 * c['outside']:5.1f}%  "
                f"flagged {100 * c['flagged']:5.1f}%"
            )
    write_card(bundle.path, bundle.metadata)
    print(
        f"domain guard  {record['components']} components, threshold {record['threshold']:.3f}, "
        f"{record['validation_pass_rate']:.1%} of {len(val)} validation films pass"
    )
    return 0
