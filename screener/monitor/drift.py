"""The rolling window against the reference, and the timer in ``screener serve``.

The window is the newest ``monitor.window_films`` results scored by the loaded bundle (one
limited SELECT, newest first by id, never every row). Each signal's statistic
(:mod:`screener.monitor.statistics`) is compared with its threshold: resampled from the
reference for the score signals, ``monitor.input_facts_threshold`` for the input facts. A
signal over its threshold is logged as ``drift_detected`` once per window: it is logged
again only when a window of wholly new films still drifts.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import structlog
from sqlalchemy import select

from screener.config import MonitorSettings
from screener.db import OUTSIDE_DOMAIN, Database, Instance, Result, utcnow
from screener.monitor.reference import INPUT_FACTS, Reference, input_facts
from screener.monitor.statistics import (
    frequencies,
    ks_distance,
    null_thresholds,
    total_variation,
)

log = structlog.get_logger(__name__)

FLAGGED = "pneumonia"
#: Every signal, in the order shown; the first four are the score signals.
SIGNALS = ("probability", "flag_rate", "domain_distance", "outside_share", *INPUT_FACTS)
#: How each signal is measured, for people (status, README).
STATISTICS = {
    "probability": "KS distance",
    "flag_rate": "absolute difference",
    "domain_distance": "KS distance",
    "outside_share": "absolute difference",
    **{fact: "total-variation distance" for fact in INPUT_FACTS},
}


@dataclass(frozen=True)
class WindowFilm:
    """One scored frame of the window: its result and its instance's input facts."""

    result_id: int
    probability: float
    label: str
    domain_score: float | None
    facts: dict[str, str]


@dataclass
class SignalDrift:
    signal: str
    statistic: float
    threshold: float
    window_value: float | None = None  # a rate's value in the window
    reference_value: float | None = None  # and in the reference

    @property
    def drifted(self) -> bool:
        return self.statistic > self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {
            "signal": self.signal,
            "statistic": round(self.statistic, 4),
            "threshold": round(self.threshold, 4),
            "drifted": self.drifted,
            "measure": STATISTICS[self.signal],
            "window_value": self.window_value,
            "reference_value": self.reference_value,
        }


@dataclass
class DriftReport:
    """The latest window's comparison. ``state``: ``drift``, ``ok``, ``collecting`` (fewer
    films than a window) or ``no_reference`` (the bundle has no reference.json)."""

    state: str
    window: int
    films: int
    bundle_uid: str
    at: datetime = field(default_factory=utcnow)
    flag_rate: float | None = None
    signals: list[SignalDrift] = field(default_factory=list)
    oldest_result_id: int | None = None
    newest_result_id: int | None = None

    @property
    def drifted(self) -> list[SignalDrift]:
        return [s for s in self.signals if s.drifted]

    @property
    def line(self) -> str:
        """The report in one line (``screener status``, the web's status page)."""
        if self.state == "no_reference":
            return "not monitored: the model bundle has no reference.json (screener reference)"
        if self.state == "collecting":
            return f"collecting: {self.films} of {self.window} films scored by this bundle"
        if not self.drifted:
            return (
                f"no drift over the last {self.films} films (flag rate {self.flag_rate:.2f}, "
                f"{len(self.signals)} signals within their thresholds)"
            )
        what = ", ".join(f"{s.signal} {s.statistic:.3f} > {s.threshold:.3f}" for s in self.drifted)
        return f"DRIFT over the last {self.films} films: {what} (README: Drift monitoring)"

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "line": self.line,
            "window": self.window,
            "films": self.films,
            "bundle_uid": self.bundle_uid,
            "at": self.at.isoformat(),
            "flag_rate": self.flag_rate,
            "drifted": [s.signal for s in self.drifted],
            "signals": [s.as_dict() for s in self.signals],
        }


def window_films(db: Database, model_uid: str, n: int) -> list[WindowFilm]:
    """The newest ``n`` results of bundle ``model_uid`` with their input facts (one SELECT)."""
    # the bundle's newest n results first, then their instances by primary key, so the
    # planner never weighs joining the whole instances table: over 200,000 results without
    # statistics, PostgreSQL took 273 ms for the plain join and 54 ms for this; 3 ms analysed
    newest = (
        select(Result.id, Result.probability, Result.label, Result.domain_score, Result.instance_id)
        .where(Result.model_uid == model_uid)
        .order_by(Result.id.desc())
        .limit(n)
        .subquery()
    )
    with db.transaction() as session:
        rows = session.execute(
            select(
                newest.c.id,
                newest.c.probability,
                newest.c.label,
                newest.c.domain_score,
                Instance.rows,
                Instance.columns,
                Instance.bits_stored,
                Instance.photometric_interpretation,
                Instance.manufacturer,
            )
            .join(Instance, newest.c.instance_id == Instance.id)
            .order_by(newest.c.id.desc())
        ).all()
    return [
        WindowFilm(
            result_id=r.id,
            probability=float(r.probability),
            label=r.label,
            domain_score=None if r.domain_score is None else float(r.domain_score),
            facts=input_facts(
                r.rows, r.columns, r.bits_stored, r.photometric_interpretation, r.manufacturer
            ),
        )
        for r in rows
    ]


def compare(
    reference: Reference,
    thresholds: dict[str, float],
    films: list[WindowFilm],
    window: int,
    facts_threshold: float,
    bundle_uid: str,
) -> DriftReport:
    """The window's statistics against the reference and their thresholds."""
    report = DriftReport(state="collecting", window=window, films=len(films), bundle_uid=bundle_uid)
    if films:
        report.flag_rate = round(float(np.mean([f.label == FLAGGED for f in films])), 4)
        report.oldest_result_id = min(f.result_id for f in films)
        report.newest_result_id = max(f.result_id for f in films)
    if len(films) < window:
        return report
    p = np.array([f.probability for f in films])
    ref_flag = float(reference.flagged.mean())
    signals = [
        SignalDrift(
            "probability", ks_distance(p, reference.probabilities), thresholds["probability"]
        ),
        SignalDrift(
            "flag_rate",
            abs(float(report.flag_rate or 0.0) - ref_flag),
            thresholds["flag_rate"],
            report.flag_rate,
            round(ref_flag, 4),
        ),
    ]
    scores = np.array([f.domain_score for f in films if f.domain_score is not None])
    if reference.domain_scores is not None and "domain_distance" in thresholds:
        outside = float(np.mean([f.label == OUTSIDE_DOMAIN for f in films]))
        ref_outside = float(reference.outside_or_none().mean())
        signals.append(
            SignalDrift(
                "domain_distance",
                ks_distance(scores, reference.domain_scores),
                thresholds["domain_distance"],
            )
        )
        signals.append(
            SignalDrift(
                "outside_share",
                abs(outside - ref_outside),
                thresholds["outside_share"],
                round(outside, 4),
                round(ref_outside, 4),
            )
        )
    for fact in INPUT_FACTS:
        seen = frequencies(f.facts[fact] for f in films)
        signals.append(
            SignalDrift(fact, total_variation(seen, reference.facts.get(fact, {})), facts_threshold)
        )
    report.signals = signals
    report.state = "drift" if report.drifted else "ok"
    return report


class DriftMonitor:
    """Recomputes the window every ``monitor.interval_seconds`` in ``screener serve``; logs
    ``drift_detected`` once per window and signal; :attr:`latest` feeds the heartbeat
    (``screener status``, the web) and the Prometheus gauges."""

    def __init__(
        self,
        db: Database,
        settings: MonitorSettings,
        reference: Reference | None,
        bundle_uid: str,
    ) -> None:
        self.db = db
        self.settings = settings
        self.reference = reference
        self.bundle_uid = bundle_uid
        self.thresholds: dict[str, float] | None = None
        self.latest: DriftReport | None = None
        #: per signal, the newest result id of the window that last raised it
        self._alarmed_through: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="drift-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # stage boundary: monitoring must never take the daemon down
                log.exception("drift_check_error")
            if self._stop.wait(self.settings.interval_seconds):
                break

    def prepare(self) -> dict[str, float] | None:
        """The score signals' thresholds for this window size (resampled once, about 1 s)."""
        ref = self.reference
        if self.thresholds is None and ref is not None:
            self.thresholds = null_thresholds(
                ref.probabilities,
                ref.flagged,
                ref.domain_scores,
                ref.outside,
                self.settings.window_films,
                self.settings.false_alarm_rate,
            )
            log.info(
                "drift_monitor_ready",
                window=self.settings.window_films,
                reference_films=ref.films,
                reference_bundle_uid=ref.bundle.get("uid"),
                bundle_uid=self.bundle_uid,
                thresholds={k: round(v, 4) for k, v in self.thresholds.items()},
                input_facts_threshold=self.settings.input_facts_threshold,
            )
        return self.thresholds

    def check(self) -> DriftReport:
        """Compare the current window; log each newly drifted signal once per window."""
        window = self.settings.window_films
        thresholds = self.prepare()
        if self.reference is None or thresholds is None:
            report = DriftReport("no_reference", window, 0, self.bundle_uid)
            self.latest = report
            return report
        films = window_films(self.db, self.bundle_uid, window)
        report = compare(
            self.reference,
            thresholds,
            films,
            window,
            self.settings.input_facts_threshold,
            self.bundle_uid,
        )
        for s in report.drifted:
            through = self._alarmed_through.get(s.signal)
            assert report.oldest_result_id is not None and report.newest_result_id is not None
            if through is not None and report.oldest_result_id <= through:
                continue  # this window overlaps the one that raised it: once per window
            self._alarmed_through[s.signal] = report.newest_result_id
            log.warning(
                "drift_detected",
                signal=s.signal,
                statistic=round(s.statistic, 4),
                threshold=round(s.threshold, 4),
                measure=STATISTICS[s.signal],
                window=window,
                window_value=s.window_value,
                reference_value=s.reference_value,
                bundle_uid=self.bundle_uid,
            )
        self.latest = report
        return report
