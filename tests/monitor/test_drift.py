"""Drift monitoring's parts: the statistics on arrays, the reference file, the window read
from a real database (SQLite and PostgreSQL), and the monitor's once-per-window alarm."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs
from support import build_dicom, record_result

from screener.config import MonitorSettings
from screener.db import Database
from screener.db.migrate import upgrade
from screener.errors import ModelError
from screener.ingest.accept import Acceptor
from screener.ingest.spool import Spool
from screener.monitor.drift import DriftMonitor, window_films
from screener.monitor.reference import (
    REFERENCE_FILE,
    input_facts,
    make_reference,
    read_reference,
    size_class,
    write_reference,
)
from screener.monitor.statistics import (
    frequencies,
    ks_distance,
    null_thresholds,
    total_variation,
)

MODEL = ("screener-default", "test", "1.2.3.4")
BUNDLE = {
    "name": MODEL[0],
    "version": MODEL[1],
    "uid": MODEL[2],
    "threshold": 0.5,
    "domain_guard": {"threshold": 2.0},
}


def _reference(n: int = 600, seed: int = 0) -> Any:
    """A reference of ``n`` films: P uniform, domain scores standard normal, 224 px 8-bit."""
    rng = np.random.default_rng(seed)
    facts = [input_facts(224, 224, 8, "MONOCHROME2", None)] * n
    return make_reference(BUNDLE, rng.uniform(size=n), rng.normal(size=n), facts, made={})


def test_ks_distance_matches_known_values() -> None:
    """KS is 0 for equal samples, 1 for disjoint ones, and the largest CDF gap otherwise."""
    a = np.array([0.1, 0.2, 0.3, 0.4])
    assert ks_distance(a, a) == 0.0
    assert ks_distance(a, a + 1.0) == 1.0
    assert ks_distance(a, np.array([0.25, 0.35, 0.45, 0.55])) == pytest.approx(0.5)
    assert ks_distance([], a) == 0.0


def test_total_variation_is_half_the_summed_differences() -> None:
    """TV between frequency tables: 0 for equal, 1 for disjoint, the moved share otherwise."""
    ref = {"8": 1.0}
    assert total_variation(ref, ref) == 0.0
    assert total_variation({"12": 1.0}, ref) == 1.0
    assert total_variation(frequencies(["8"] * 7 + ["12"] * 3), ref) == pytest.approx(0.3)


def test_size_classes_and_missing_facts() -> None:
    """Film sizes fall into long-side classes; missing header values are 'unknown'."""
    assert size_class(224, 224) == "<=256 px"
    assert size_class(2500, 2048) == ">2048 px"
    assert size_class(1024, 800) == "<=1024 px"
    assert input_facts(None, None, None, " ", None) == {
        "size": "unknown",
        "bits_stored": "unknown",
        "photometric_interpretation": "unknown",
        "manufacturer": "unknown",
    }


def test_null_thresholds_keep_windows_of_the_reference_quiet_and_catch_a_shift() -> None:
    """Thresholds resampled from the reference: fresh windows from the same distribution trip
    a signal in about the chosen share or fewer; a shifted window trips P and flag rate."""
    ref = _reference()
    th = null_thresholds(
        ref.probabilities, ref.flagged, ref.domain_scores, ref.outside, 50, 0.04, draws=1000
    )
    assert set(th) == {"probability", "flag_rate", "domain_distance", "outside_share"}
    rng = np.random.default_rng(1)
    fired = 0
    for _ in range(400):
        p = rng.uniform(size=50)
        d = rng.normal(size=50)
        fired += (
            ks_distance(p, ref.probabilities) > th["probability"]
            or abs((p >= 0.5).mean() - ref.flagged.mean()) > th["flag_rate"]
            or ks_distance(d, ref.domain_scores) > th["domain_distance"]
        )
    assert fired / 400 <= 0.08  # 0.04 chosen; the draws are noisy
    shifted = rng.uniform(size=50) * 0.5  # a site whose films score lower: no flags
    assert ks_distance(shifted, ref.probabilities) > th["probability"]
    assert abs((shifted >= 0.5).mean() - ref.flagged.mean()) > th["flag_rate"]


def test_reference_round_trip_and_malformed_file(tmp_path: Path) -> None:
    """reference.json written and read gives the same films; a mangled one is a ModelError."""
    ref = _reference(100)
    write_reference(tmp_path, ref)
    back = read_reference(tmp_path)
    assert back is not None and back.films == 100
    assert np.allclose(back.probabilities, ref.probabilities, atol=1e-6)
    assert back.facts["bits_stored"] == {"8": 1.0}
    assert back.flagged.sum() == ref.flagged.sum()
    assert read_reference(tmp_path / "nowhere") is None
    (tmp_path / REFERENCE_FILE).write_text(json.dumps({"format": "screener-reference/1"}))
    with pytest.raises(ModelError, match="drift reference"):
        read_reference(tmp_path)


def test_shipped_bundle_has_its_reference(model_bundle: Path) -> None:
    """The shipped bundle carries a reference from its 1,036 validation films, for its UID,
    whose flag rate and outside share are those the card records for its validation films
    through both the threshold and the domain guard (738 flagged, 5 outside)."""
    ref = read_reference(model_bundle)
    assert ref is not None
    meta = json.loads((model_bundle / "model.json").read_text())
    assert ref.bundle["uid"] == meta["uid"] and ref.films == 1036
    assert ref.threshold == meta["threshold"]
    check = meta["domain_guard"]["checks"][0]  # "pediatric validation films (in population)"
    assert check["n"] == 1036
    assert ref.outside is not None
    # give or take the film on the guard's threshold (float kernels differ in the last bits)
    assert abs(ref.flagged.sum() - round(check["flagged"] * 1036)) <= 1
    assert abs(ref.outside.sum() - round(check["outside"] * 1036)) <= 1


def _accepted(db_url: str, make_settings: Callable[..., Any], n: int, **dicom: Any) -> list[str]:
    settings = make_settings(db_url)
    db = Database(db_url)
    acceptor = Acceptor(db, Spool(settings.storage.spool_dir, 0), settings)
    uids = [
        acceptor.accept(build_dicom(seed=i, **dicom), source="dicom").sop_instance_uid
        for i in range(n)
    ]
    db.dispose()
    return uids


def test_window_reads_the_newest_results_of_the_bundle_with_input_facts(
    db_url: str, make_settings: Callable[..., Any]
) -> None:
    """The window holds the newest N results of the loaded bundle only, newest first, with
    the instances' input facts recorded at ingest (rows, columns, bits stored, photometric)."""
    db = Database(db_url)
    upgrade(db)
    uids = _accepted(db_url, make_settings, 8, rows=64, columns=96)
    for i, uid in enumerate(uids):
        model = MODEL if i != 6 else ("other", "1", "9.9")
        record_result(db, uid, i / 10, 0.5, model, domain_score=float(i))
    films = window_films(db, MODEL[2], 5)
    assert [f.probability for f in films] == pytest.approx([0.7, 0.5, 0.4, 0.3, 0.2])
    assert films[0].facts["size"] == "<=256 px"
    assert films[0].facts["photometric_interpretation"] == "MONOCHROME2"
    assert films[0].facts["bits_stored"] != "unknown"
    db.dispose()


def test_monitor_logs_a_drift_once_per_window(
    sqlite_url: str, make_settings: Callable[..., Any]
) -> None:
    """A drifting window logs drift_detected once per signal; the same films checked again
    log nothing; a window of wholly new drifting films logs again."""
    db = Database(sqlite_url)
    upgrade(db)
    ref = _reference()
    monitor = DriftMonitor(db, MonitorSettings(window_films=10), ref, MODEL[2])
    uids = _accepted(sqlite_url, make_settings, 25)

    def score(batch: list[str]) -> None:
        for uid in batch:  # all scored low, inside the domain: no flags
            record_result(db, uid, 0.01, 0.5, MODEL, domain_score=0.0)

    score(uids[:5])
    assert monitor.check().state == "collecting"
    with capture_logs() as first:
        score(uids[5:12])
        report = monitor.check()
        again = monitor.check()
    assert report.state == "drift" and {"probability", "flag_rate"} <= {
        s.signal for s in report.drifted
    }
    events = [e for e in first if e["event"] == "drift_detected"]
    assert {e["signal"] for e in events} == {s.signal for s in report.drifted}
    assert len(events) == len(report.drifted)  # not again for the same window
    assert again.state == "drift"
    with capture_logs() as overlapping:
        score(uids[12:18])  # the window still holds films of the alarmed one
        monitor.check()
    assert not [e for e in overlapping if e["event"] == "drift_detected"]
    with capture_logs() as fresh:
        score(uids[18:25])  # 10 newest are all after the alarmed window
        monitor.check()
    assert {e["signal"] for e in fresh if e["event"] == "drift_detected"} >= {"probability"}
    assert "DRIFT over the last 10 films: probability" in monitor.latest.line  # type: ignore[union-attr]
    db.dispose()


def test_input_facts_drift_when_the_films_change_format() -> None:
    """A window of 12-bit 2,500 px films from a named manufacturer drifts on size, bits
    stored and manufacturer (total-variation 1 > 0.1), not on photometric interpretation."""
    from screener.monitor.drift import WindowFilm, compare

    ref = _reference()
    th = {"probability": 1.0, "flag_rate": 1.0, "domain_distance": 1.0, "outside_share": 1.0}
    facts = input_facts(2500, 2048, 12, "MONOCHROME2", "ACME Radiography")
    films = [WindowFilm(i, 0.4, "normal", 0.0, facts) for i in range(20)]
    report = compare(ref, th, films, 20, 0.1, MODEL[2])
    assert {s.signal for s in report.drifted} == {"size", "bits_stored", "manufacturer"}
    same = [
        WindowFilm(i, 0.4, "normal", 0.0, ref_facts)
        for i, ref_facts in enumerate([input_facts(224, 224, 8, "MONOCHROME2", None)] * 20)
    ]
    assert compare(ref, th, same, 20, 0.1, MODEL[2]).state == "ok"
