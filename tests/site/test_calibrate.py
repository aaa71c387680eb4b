"""Site calibration: `screener calibrate --from-reviews` fits a new operating point on the
site's reviewed reads, writes it as a new bundle with a new UID, refuses with too few
positives; `screener stats` shows before and after; studies outside the domain don't count."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from support import build_dicom, record_result, scoring_site

from screener.cli import main
from screener.db import OUTSIDE_DOMAIN, Study, utcnow
from screener.db.models import AuditDraw
from screener.model.bundle import read_metadata
from screener.model.metrics import wilson_lower
from screener.views.worklist import NotReadable, record_review


def _site(
    tmp_path: Path,
    db_url: str,
    make_settings: Callable[..., Any],
    model_bundle: Path,
    positives: int,
    negatives: int,
    audit_share: float = 1.0,
) -> tuple[Any, Path, list[float], list[int]]:
    """A copy of the shipped bundle, and reviewed studies it scored: the first ``positives``
    read as pneumonia (scores spread around the threshold, as a new site's are), then
    ``negatives`` read as normal, then one outside the domain read as pneumonia."""
    bundle, meta, settings, db, acceptor = scoring_site(
        tmp_path, db_url, make_settings, model_bundle
    )
    rng = np.random.default_rng(7)
    probs = list(np.clip(rng.beta(6, 1.5, positives), 0.01, 0.999)) + list(
        np.clip(rng.beta(1.5, 3, negatives), 0.001, 0.99)
    )
    reads = [1] * positives + [0] * negatives
    threshold = float(meta["threshold"])
    cases = [(p, r, "scored") for p, r in zip(probs, reads, strict=True)] + [(0.999, 1, "outside")]
    for i, (p, read, kind) in enumerate(cases):
        accepted = acceptor.accept(build_dicom(seed=i), source="dicom")
        outside = kind == "outside"
        record_result(
            db, accepted.sop_instance_uid, float(p), threshold,
            (meta["name"], meta["version"], meta["uid"]),
            label=OUTSIDE_DOMAIN if outside else None, domain_score=50.0 if outside else 1.0,
        )  # fmt: skip
        flagged = kind == "scored" and p >= threshold
        if outside:  # the model made no call on it: there is nothing to read against
            with pytest.raises(NotReadable, match="not assessed"):
                record_review(db, accepted.study_instance_uid, True, None, 12.0)
            continue
        record_review(db, accepted.study_instance_uid, bool(read) == flagged, None, 12.0)
    # each study drawn as scoring draws it (screener.site.audit): with share 1 every unflagged
    # study is an audit study (weight 1), with share 0 none is
    with db.transaction() as s:
        for study_id in s.scalars(select(Study.id)):
            s.add(AuditDraw(study_id=study_id, u=0.5, share=audit_share, drawn_at=utcnow()))
    db.dispose()
    return settings, bundle, [float(p) for p in probs], reads


def _calibrate(settings: Any, bundle: Path, out: Path, *extra: str) -> int:
    """`screener calibrate --from-reviews` on the settings' database."""
    db = ["--set", f"database.url={settings.database.url}"]
    return main(
        [*db, "calibrate", "--from-reviews", "--model", str(bundle), "--out", str(out), *extra]
    )


def test_calibrate_from_reviews_writes_a_new_operating_point(
    tmp_path: Path,
    db_url: str,
    make_settings: Callable[..., Any],
    model_bundle: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """90 reads (60 pneumonia, 30 normal, every unflagged study an audit study): the new threshold is the highest whose Wilson lower bound of
    site sensitivity reaches 0.95, the bundle gets a new UID that names its parent, and
    `screener stats` shows the operating point before and after."""
    settings, bundle, probs, reads = _site(tmp_path, db_url, make_settings, model_bundle, 60, 30)
    out = tmp_path / "site-bundle"
    db_flag = ["--set", f"database.url={settings.database.url}"]
    assert _calibrate(settings, bundle, out) == 0
    printed = capsys.readouterr().out
    old, new = read_metadata(bundle), read_metadata(out)
    assert new["uid"] != old["uid"] and new["derived_from"]["uid"] == old["uid"]
    assert (out / "model.keras").is_file() and "Site calibration" in (
        out / "MODEL_CARD.md"
    ).read_text()
    site = new["site_calibration"]
    assert site["reviewed_studies"] == 90  # the study outside the domain is not a read to fit on
    assert (site["read_as_pneumonia"], site["read_as_normal"]) == (60, 30)
    pos = np.sort(np.array([p for p, r in zip(probs, reads, strict=True) if r]))[::-1]
    caught = int(np.sum(pos >= new["threshold"]))
    assert wilson_lower(caught, 60) >= 0.95 > wilson_lower(caught - 1, 60)
    assert site["after"]["sensitivity"] == pytest.approx(caught / 60)
    assert f"threshold {new['threshold']:.4f}" in printed
    # the site's stats, with the new bundle configured, show before and after
    main([*db_flag, "--set", f"model.bundle={out}", "stats"])
    stats = capsys.readouterr().out
    assert "site calibration of" in stats
    assert f"{old['threshold']:.4f}" in stats and f"{new['threshold']:.4f}" in stats


def test_calibrate_refuses_with_too_few_positives(
    tmp_path: Path,
    sqlite_url: str,
    make_settings: Callable[..., Any],
    model_bundle: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """20 reads as pneumonia cannot show a 0.95 sensitivity: refused, nothing written."""
    settings, bundle, _, _ = _site(tmp_path, sqlite_url, make_settings, model_bundle, 20, 20)
    out = tmp_path / "site-bundle"
    code = _calibrate(settings, bundle, out)
    assert code != 0
    err = capsys.readouterr().err
    assert "only 20 reviewed studies were read as pneumonia" in err and "at least 52" in err
    assert not out.exists()


def test_refit_calibration_composes_with_the_shipped_one(
    tmp_path: Path,
    sqlite_url: str,
    make_settings: Callable[..., Any],
    model_bundle: Path,
) -> None:
    """With --refit-calibration the new Platt map is the site's fit applied after the shipped one."""
    settings, bundle, _, _ = _site(tmp_path, sqlite_url, make_settings, model_bundle, 60, 40)
    out = tmp_path / "site-bundle"
    assert _calibrate(settings, bundle, out, "--refit-calibration") == 0
    new = json.loads((out / "model.json").read_text())
    assert new["site_calibration"]["calibration_refitted"] is True
    assert new["calibration"]["a"] != read_metadata(bundle)["calibration"]["a"]


def test_calibrate_refuses_without_audit_reads(
    tmp_path: Path,
    sqlite_url: str,
    make_settings: Callable[..., Any],
    model_bundle: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Reads of unflagged studies that were not drawn for an audit stand for no one: with
    none drawn, calibrate refuses and names how many audit reads read as normal it needs."""
    settings, bundle, _, _ = _site(
        tmp_path, sqlite_url, make_settings, model_bundle, 60, 20, audit_share=0.0
    )
    out = tmp_path / "site-bundle"
    assert _calibrate(settings, bundle, out) != 0
    captured = capsys.readouterr()
    assert "0 audit reads" in captured.err and "20 more" in captured.err
    assert "reads of unflagged studies not drawn left out" in captured.out
    assert not out.exists()
