"""The bundle's reference distribution (``reference.json`` beside ``model.json``).

Made by ``screener reference`` from the bundle's own validation split (recomputed from
model.json, patients the networks did not train on), scored by the bundle itself: each
film's calibrated P and domain distance, the flag rate and outside share at the bundle's
threshold, and the input facts' frequencies. Thresholds are not stored: they depend on the
window size and are resampled from these films when the monitor starts
(:func:`screener.monitor.statistics.null_thresholds`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from screener.errors import ModelError
from screener.monitor.statistics import FloatArray, frequencies

REFERENCE_FILE = "reference.json"
FORMAT = "screener-reference/1"
#: The categorical input facts compared, in the order they are shown.
INPUT_FACTS = ("size", "bits_stored", "photometric_interpretation", "manufacturer")
UNKNOWN = "unknown"
#: Long side of a film (pixels) by class: a site's films vary by a few pixels, never by these.
SIZE_CLASSES = ((256, "<=256 px"), (512, "<=512 px"), (1024, "<=1024 px"), (2048, "<=2048 px"))


def size_class(rows: int | None, columns: int | None) -> str:
    """A film's size as its long side's class (``<=256 px`` ... ``>2048 px``)."""
    if not rows or not columns:
        return UNKNOWN
    long_side = max(rows, columns)
    for limit, name in SIZE_CLASSES:
        if long_side <= limit:
            return name
    return ">2048 px"


def input_facts(
    rows: int | None,
    columns: int | None,
    bits_stored: int | None,
    photometric_interpretation: str | None,
    manufacturer: str | None,
) -> dict[str, str]:
    """One film's input facts as the categories compared (PS3.3 C.7.6.3 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.7.6.3> Image Pixel,
    C.7.5.1 General Equipment); missing values are ``unknown``."""
    return {
        "size": size_class(rows, columns),
        "bits_stored": str(bits_stored) if bits_stored else UNKNOWN,
        "photometric_interpretation": (photometric_interpretation or "").strip() or UNKNOWN,
        "manufacturer": (manufacturer or "").strip() or UNKNOWN,
    }


@dataclass(frozen=True)
class Reference:
    """A bundle's reference films' scores and facts (see the module docstring)."""

    bundle: dict[str, str]
    threshold: float
    probabilities: FloatArray
    domain_scores: FloatArray | None
    domain_threshold: float | None
    facts: dict[str, dict[str, float]]
    made: dict[str, Any] = field(default_factory=dict)

    @property
    def films(self) -> int:
        return int(self.probabilities.size)

    @property
    def flagged(self) -> npt.NDArray[np.bool_]:
        """Flagged as the worker flags: P at or above the threshold, and inside the domain."""
        return (self.probabilities >= self.threshold) & ~self.outside_or_none()

    def outside_or_none(self) -> npt.NDArray[np.bool_]:
        if self.domain_scores is None or self.domain_threshold is None:
            return np.zeros(self.films, dtype=bool)
        return self.domain_scores > self.domain_threshold

    @property
    def outside(self) -> npt.NDArray[np.bool_] | None:
        return None if self.domain_scores is None else self.outside_or_none()

    def as_json(self) -> dict[str, Any]:
        def quantiles(x: FloatArray) -> dict[str, float]:
            return {
                f"q{int(q * 100):02d}": round(float(np.quantile(x, q)), 6)
                for q in (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
            }

        d: dict[str, Any] = {
            "format": FORMAT,
            "bundle": self.bundle,
            "made": self.made,
            "films": self.films,
            "threshold": self.threshold,
            "flag_rate": round(float(self.flagged.mean()), 6),
            "probability_quantiles": quantiles(self.probabilities),
            "domain_threshold": self.domain_threshold,
        }
        if self.domain_scores is not None:
            d["outside_share"] = round(float(self.outside_or_none().mean()), 6)
            d["domain_score_quantiles"] = quantiles(self.domain_scores)
        d["input_facts"] = self.facts
        # per film, in the split's order: what the thresholds are resampled from
        d["probability"] = [round(float(p), 6) for p in self.probabilities]
        if self.domain_scores is not None:
            d["domain_score"] = [round(float(s), 4) for s in self.domain_scores]
        return d


def make_reference(
    bundle: dict[str, Any],
    probabilities: npt.ArrayLike,
    domain_scores: npt.ArrayLike | None,
    facts: list[dict[str, str]],
    made: dict[str, Any],
) -> Reference:
    """A reference from scored films; ``bundle`` is the bundle's model.json."""
    guard = bundle.get("domain_guard") or {}
    return Reference(
        bundle={k: str(bundle[k]) for k in ("name", "version", "uid")},
        threshold=float(bundle["threshold"]),
        probabilities=np.asarray(probabilities, dtype=np.float64),
        domain_scores=None if domain_scores is None else np.asarray(domain_scores, np.float64),
        domain_threshold=float(guard["threshold"]) if "threshold" in guard else None,
        facts={name: frequencies(f[name] for f in facts) for name in INPUT_FACTS},
        made=made,
    )


def write_reference(bundle_path: str | Path, reference: Reference) -> Path:
    path = Path(bundle_path) / REFERENCE_FILE
    path.write_text(json.dumps(reference.as_json(), indent=1) + "\n")
    return path


def read_reference(bundle_path: str | Path) -> Reference | None:
    """The bundle's reference, or None when it has none; a malformed one raises ModelError."""
    path = Path(bundle_path) / REFERENCE_FILE
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"drift reference {str(path)!r} is not readable JSON: {exc}") from exc
    try:
        if d.get("format") != FORMAT:
            raise ModelError(f"drift reference {str(path)!r} is not in format {FORMAT}")
        scores = d.get("domain_score")
        return Reference(
            bundle={k: str(v) for k, v in d["bundle"].items()},
            threshold=float(d["threshold"]),
            probabilities=np.asarray(d["probability"], dtype=np.float64),
            domain_scores=None if scores is None else np.asarray(scores, dtype=np.float64),
            domain_threshold=None
            if d.get("domain_threshold") is None
            else float(d["domain_threshold"]),
            facts={k: {c: float(v) for c, v in f.items()} for k, f in d["input_facts"].items()},
            made=dict(d.get("made") or {}),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(f"drift reference {str(path)!r} lacks or mangles {exc}") from exc
