"""Audit reads against verification bias: a seeded draw recorded when a study is first
scored, audit studies listed after the flagged ones, and stats weighted by 1 / the chance a
study was read (Horvitz-Thompson), on SQLite and PostgreSQL and through a real serve."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from support import (
    ServeProcess,
    build_dicom,
    data_root,
    film_dicom,
    free_port,
    record_result,
    serve_env,
    wait_for,
)

from screener.cli import main
from screener.db import Database, Study, utcnow
from screener.db.migrate import upgrade
from screener.db.models import AuditDraw
from screener.ingest.accept import Acceptor
from screener.ingest.spool import Spool
from screener.site.audit import draw_u, read_weight
from screener.views.worklist import record_read, review_stats, worklist

MODEL = ("m", "1.0", "1.2.3.1")


def test_the_draw_is_seeded_uniform_and_keyed() -> None:
    """The same seed and UID give the same draw; another seed another; 2,000 UIDs spread
    evenly over [0, 1) (each tenth holds 10 % +- 3 %)."""
    assert draw_u("site-a", "1.2.3") == draw_u("site-a", "1.2.3")
    assert draw_u("site-a", "1.2.3") != draw_u("site-b", "1.2.3")
    draws = np.array([draw_u("seed", f"1.2.826.0.1.{i}") for i in range(2000)])
    counts, _ = np.histogram(draws, bins=10, range=(0.0, 1.0))
    assert counts.min() >= 140 and counts.max() <= 260


def test_a_reads_weight() -> None:
    """Flagged: 1; drawn for an audit: 1 / share; unflagged and not drawn: 0."""
    drawn = AuditDraw(study_id=1, u=0.01, share=0.05, drawn_at=utcnow())
    missed = AuditDraw(study_id=2, u=0.50, share=0.05, drawn_at=utcnow())
    assert read_weight(True, missed) == 1.0
    assert read_weight(False, drawn) == pytest.approx(20.0)
    assert read_weight(False, missed) == 0.0 and read_weight(False, None) == 0.0


@pytest.fixture
def site(db_url: str, make_settings: Callable[..., Any]) -> Iterator[Database]:
    """Six scored studies (threshold .5): F1 p=.9 and F2 p=.8 flagged; A1, A2 p=.2 drawn for
    an audit at share .25; U1 p=.1 and U2 p=.3 not drawn."""
    settings = make_settings(db_url)
    db = Database(db_url)
    upgrade(db)
    acceptor = Acceptor(db, Spool(settings.storage.spool_dir, 0), settings)
    specs = {"F1": (0.9, 0.9), "F2": (0.8, 0.9), "A1": (0.2, 0.1), "A2": (0.2, 0.2),
             "U1": (0.1, 0.9), "U2": (0.3, 0.6)}  # fmt: skip
    for i, (accession, (p, u)) in enumerate(specs.items()):
        accepted = acceptor.accept(build_dicom(seed=i + 50), source="dicom")
        with db.transaction() as s:
            study_id = s.scalars(
                select(Study.id).where(Study.study_instance_uid == accepted.study_instance_uid)
            ).one()
            s.add(AuditDraw(study_id=study_id, u=u, share=0.25, drawn_at=utcnow()))
        record_result(db, accepted.sop_instance_uid, p, 0.5, MODEL, accession=accession)
    yield db
    db.dispose()


def test_audit_studies_come_after_the_flagged(site: Database) -> None:
    """Unread: the flagged first, then the studies drawn for an audit, then the rest."""
    rows = worklist(site, aging_hours=12.0, status="unread")
    order = [r.accession_number for r in rows]
    assert order[:2] == ["F1", "F2"] and set(order[2:4]) == {"A1", "A2"}
    assert [r.audit for r in rows] == [False, False, True, True, False, False]
    from screener.commands.worklist import flag_text

    assert flag_text(rows[2]) == "AUDIT READ"


def test_stats_are_weighted_against_verification_bias(site: Database) -> None:
    """Reads: F1 pneumonia (TP), F2 normal (FP), A1 pneumonia (FN, audit), A2 normal (TN,
    audit), U1 normal (TN, not drawn). Unweighted sensitivity 1/2; weighted by 1/share = 4
    for the audit reads, 1 / (1 + 4) = 0.2. Specificity: unweighted 2/3; weighted 4 / (1 + 4)
    = 0.8, U1 left out."""
    for accession, finding in (("F1", "pneumonia"), ("F2", "no_pneumonia"),
                               ("A1", "pneumonia"), ("A2", "no_pneumonia"),
                               ("U1", "no_pneumonia")):  # fmt: skip
        record_read(site, accession, finding, None, 12.0, "carol")
    (stats,) = review_stats(site)
    assert stats.sensitivity == pytest.approx(0.5)
    assert stats.specificity == pytest.approx(2 / 3)
    sens, sens_ci, _ = stats.weighted["sensitivity"]
    spec, _, _ = stats.weighted["specificity"]
    assert sens == pytest.approx(0.2) and spec == pytest.approx(0.8)
    assert sens_ci is not None and sens_ci[0] < 0.2 < sens_ci[1]
    assert (stats.audit_reads, stats.undrawn_reads) == (2, 1)


def test_stats_command_says_what_the_weights_rest_on(
    site: Database, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`screener stats` prints the weighted figures and how many audit reads they rest on."""
    record_read(site, "A1", "pneumonia", None, 12.0, "carol")
    record_read(site, "F1", "pneumonia", None, 12.0, "carol")
    assert main(["--set", f"database.url={db_url}", "stats"]) == 0
    out = capsys.readouterr().out
    assert "weighted for verification bias (1 audit read(s)" in out


def test_serve_draws_each_study_once_when_scored(tmp_path: Path) -> None:
    """A real serve with site.audit_share 1: every study scored gets one recorded draw with
    that share, and an unflagged one is listed as AUDIT READ by `screener worklist`."""
    folder = data_root() / "chest_xray" / "train" / "NORMAL"
    if not folder.is_dir():
        pytest.skip(f"the chest X-ray training films are not at {folder} (set SCREENER_DATA)")
    db_url = f"sqlite:///{tmp_path / 'screener.db'}"
    env = serve_env(tmp_path, db_url, free_port(), screener_site_audit_share="1.0",
                    screener_population_max_age_years="-1")  # fmt: skip
    serve = ServeProcess(tmp_path, env).start()
    try:
        incoming = tmp_path / "incoming"
        incoming.mkdir(exist_ok=True)
        for i, jpeg in enumerate(sorted(folder.glob("*.jpeg"))[:2]):
            pixels = np.asarray(Image.open(jpeg).convert("L"))
            (incoming / f"f{i}.dcm").write_bytes(
                film_dicom(pixels, patient_age="005Y", accession=f"AU{i}")
            )
        db = Database(db_url)
        try:

            def scored() -> bool:
                with db.transaction() as s:
                    return len(s.scalars(select(AuditDraw)).all()) >= 2

            wait_for(scored, 180)
            with db.transaction() as s:
                draws = s.scalars(select(AuditDraw)).all()
                assert len(draws) == 2 and {d.share for d in draws} == {1.0}
            rows = worklist(db, aging_hours=12.0, status="all")
            assert all(r.audit == (not r.flagged) for r in rows)
        finally:
            db.dispose()
    finally:
        serve.terminate()
    out = serve.log()
    assert "Traceback" not in out, out[-3000:]
