"""Scoring a labelled set with a bundle: the figures of `screener evaluate` and the card."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from screener.errors import ModelError, ScreenerError
from screener.model.bundle import Bundle
from screener.model.inputs import load_frames

log = structlog.get_logger()

#: Label spellings accepted in a labels CSV.
LABEL_WORDS = {"0": 0, "normal": 0, "1": 1, "pneumonia": 1}


@dataclass(frozen=True)
class Item:
    """One labelled file to score."""

    path: Path
    label: int


def read_labels_csv(csv_path: Path, base: Path | None = None) -> list[Item]:
    """Read a ``path,label`` CSV (label 0/1 or normal/pneumonia); paths relative to ``base``
    (default: the CSV's folder)."""
    root = base or csv_path.parent
    items: list[Item] = []
    try:
        with csv_path.open(newline="") as fh:
            for row_no, row in enumerate(csv.DictReader(fh), start=2):
                raw = (row.get("label") or "").strip().lower()
                if raw not in LABEL_WORDS or not row.get("path"):
                    raise ModelError(
                        f"{csv_path.name} line {row_no}: need path and label "
                        f"(0/1/normal/pneumonia), got {row!r}"
                    )
                path = Path(row["path"].strip())
                items.append(Item(path if path.is_absolute() else root / path, LABEL_WORDS[raw]))
    except FileNotFoundError as exc:
        raise ModelError(f"labels file {str(csv_path)!r} does not exist") from exc
    return items


def score_files(
    bundle: Bundle, items: Sequence[Item], batch: int = 32
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], list[dict[str, str]]]:
    """Score files (a multi-frame file scores its most suspicious frame).

    Returns (labels, probabilities, skipped) where ``skipped`` lists unreadable files and why.
    """
    from tqdm import tqdm

    labels: list[int] = []
    probs: list[float] = []
    skipped: list[dict[str, str]] = []
    pending: list[tuple[int, npt.NDArray[np.uint8]]] = []

    def flush() -> None:
        if not pending:
            return
        scores = bundle.predict(np.stack([img for _, img in pending]))
        for (slot, _), p in zip(pending, scores, strict=True):
            probs[slot] = max(probs[slot], float(p))
        pending.clear()

    for item in tqdm(items, desc="scoring", unit="file"):
        try:
            frames = load_frames(item.path)
        except (ScreenerError, OSError) as exc:  # ImageError and kin: skip, report why
            reason = getattr(exc, "reason", type(exc).__name__)
            skipped.append({"path": str(item.path), "reason": str(reason), "message": str(exc)})
            log.warning("evaluate_file_skipped", file=item.path.name, reason=reason)
            continue
        labels.append(item.label)
        probs.append(0.0)
        pending.extend((len(probs) - 1, frame) for frame in frames)
        if len(pending) >= batch:
            flush()
    flush()
    return np.array(labels, dtype=np.int64), np.array(probs, dtype=np.float64), skipped


def score_arrays(
    bundle: Bundle, images: npt.NDArray[np.uint8], batch: int = 256
) -> npt.NDArray[np.float64]:
    """Score an in-memory ``(N, 224, 224)`` batch with a progress bar."""
    from tqdm import tqdm

    out = [
        bundle.predict(images[i : i + batch])
        for i in tqdm(range(0, len(images), batch), desc="scoring", unit="batch")
    ]
    return np.concatenate(out) if out else np.zeros(0)


def describe(bundle: Bundle) -> dict[str, Any]:
    return {
        "name": bundle.name,
        "version": bundle.version,
        "uid": bundle.uid,
        "threshold": bundle.threshold,
    }
