"""``screener predict``: P(pneumonia) for image files, optionally with Grad-CAM overlays."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from screener.config import Settings


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "predict",
        help="score DICOM / JPEG / PNG files with a model bundle",
        description="Print the calibrated probability of pneumonia and the label at the "
        "bundle's threshold for each file (each frame of a multi-frame DICOM object).",
    )
    p.add_argument(
        "files", nargs="+", type=Path, metavar="FILE", help="DICOM, PNG or JPEG files to score"
    )
    p.add_argument("--model", default=None, help="bundle folder (default: setting model.bundle)")
    p.add_argument(
        "--heatmap",
        type=Path,
        default=None,
        metavar="OUT.png",
        help="write a Grad-CAM overlay; with several images, OUT-<file>[-<frame>].png",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run)


def heatmap_path(base: Path, source: Path, frame: int, n_frames: int, n_files: int) -> Path:
    """Overlay file for one image: ``base`` itself for a single image, else derived names."""
    if n_files == 1 and n_frames == 1:
        return base
    stem = f"{base.stem}-{source.stem}" if n_files > 1 else base.stem
    if n_frames > 1:
        stem = f"{stem}-{frame}"
    return base.with_name(f"{stem}.png")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.model.opening import open_model

    bundle = open_model(settings, args.model)  # before anything imports TensorFlow

    import numpy as np

    from screener.errors import ImageError
    from screener.model.inputs import load_frames

    results: list[dict[str, Any]] = []
    failures = 0
    for path in args.files:
        try:
            frames = load_frames(path)
        except (ImageError, OSError) as exc:
            failures += 1
            reason = getattr(exc, "reason", type(exc).__name__)
            results.append({"file": str(path), "error": str(exc), "reason": reason})
            continue
        assessed = bundle.assess(np.stack(frames))
        for i, (frame, p) in enumerate(zip(frames, assessed.probabilities, strict=True)):
            inside = assessed.in_domain(i) or not settings.population.domain_guard
            entry: dict[str, Any] = {
                "file": str(path),
                "frame": i,
                "probability": round(float(p), 6),
                "label": bundle.label(float(p)) if inside else "outside_domain",
            }
            if assessed.domain_scores is not None:
                entry["domain_score"] = round(float(assessed.domain_scores[i]), 3)
            if args.heatmap is not None:
                from screener.model.gradcam import display_frames, write_heatmap

                out = heatmap_path(args.heatmap, path, i, len(frames), len(args.files))
                written = write_heatmap(
                    bundle,
                    frame,
                    out,
                    display=display_frames(path)[i],
                    probability=float(p),
                    assessed=inside,
                    label=f"frame {i + 1} of {len(frames)}" if len(frames) > 1 else "",
                )
                entry["heatmap"] = str(written)
            results.append(entry)
    model = {"name": bundle.name, "version": bundle.version, "uid": bundle.uid}
    if args.json:
        doc = {"model": {**model, "threshold": bundle.threshold}, "results": results}
        print(json.dumps(doc, indent=2))
    else:
        print(f"model {bundle.name} {bundle.version}, threshold {bundle.threshold:.4f}")
        for r in results:
            if "error" in r:
                print(f"{r['file']}: error ({r['reason']}): {r['error']}")
                continue
            which = f" [frame {r['frame']}]" if r["frame"] else ""
            extra = f"  heatmap {r['heatmap']}" if "heatmap" in r else ""
            if r["label"] == "outside_domain":
                print(
                    f"{r['file']}{which}: NOT ASSESSED, outside the model's domain (score "
                    f"{r['domain_score']:.1f}, threshold {bundle.guard.threshold:.1f}){extra}"  # type: ignore[union-attr]
                )
                continue
            print(f"{r['file']}{which}: P(pneumonia) = {r['probability']:.4f}  {r['label']}{extra}")
    return 1 if failures else 0
