"""``screener reference``: record a bundle's reference distribution for drift monitoring."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from screener.config import Settings


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "reference",
        help="record a model bundle's reference distribution (reference.json) for drift monitoring",
        description="Score the bundle's own validation split (recomputed from model.json: "
        "patients its networks did not train on) and write reference.json into the bundle: "
        "each film's P and domain distance, the flag rate and outside share at the bundle's "
        "threshold, and the input facts' frequencies. `screener serve` compares its rolling "
        "windows with it (README: Drift monitoring).",
    )
    p.add_argument("--model", default=None, help="bundle folder (default: setting model.bundle)")
    p.add_argument("--data", type=Path, default=None, help="its training folder, if moved")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.model.opening import open_model

    bundle = open_model(settings, args.model)  # before anything imports TensorFlow

    import numpy as np

    from screener.monitor.reference import input_facts, make_reference, write_reference
    from screener.training import data
    from screener.training.guard import bundle_split

    _, val, root = bundle_split(bundle, args.data)
    images = data.load_images(root, val)
    probabilities, scores = [], []
    for start in range(0, len(images), 64):
        assessed = bundle.assess(images[start : start + 64])
        probabilities.append(assessed.probabilities)
        if assessed.domain_scores is not None:
            scores.append(assessed.domain_scores)
    # the data set's films as the model reads them: 8-bit grey rasters, no DICOM header
    rows, columns = images.shape[1:3]
    facts = [input_facts(rows, columns, 8, "MONOCHROME2", None)] * len(images)
    split = bundle.metadata["training"]["split"]
    reference = make_reference(
        bundle.metadata,
        np.concatenate(probabilities),
        np.concatenate(scores) if scores else None,
        facts,
        made={
            "from": f"the bundle's validation split: {len(val)} films of "
            f"{len({s.patient for s in val})} patients, by patient, seed {split['seed']}, "
            f"fraction {split['val_fraction']} (no patient the networks trained on)",
            "data_fingerprint": bundle.metadata["training"].get("data_fingerprint"),
            "input_facts": "the data set's images as screener reads them (8-bit grey, "
            f"{rows} x {columns}, no Manufacturer): a site's DICOM films differ",
            "command": "screener reference --model <bundle>",
        },
    )
    path = write_reference(bundle.path, reference)
    d = reference.as_json()
    print(
        f"reference  {reference.films} validation films: flag rate {d['flag_rate']:.3f}, "
        f"outside the domain {d.get('outside_share', 0.0):.3f}, median P "
        f"{d['probability_quantiles']['q50']:.3f}; written to {path}"
    )
    return 0
