"""Reads in the radiologist's own words: pneumonia / no pneumonia / cannot tell, the agreement
with the model derived; "cannot tell" counted in no statistic and no calibration; what the
worklist says of a read (words, who, when); its other orders and its search; the study
description kept from the header."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import build_dicom, record_result

from screener.cli import main
from screener.db import Database, Review, Study
from screener.db.migrate import upgrade
from screener.ingest.accept import Acceptor
from screener.ingest.spool import Spool
from screener.views.worklist import (
    MAX_NOTE,
    NotReadable,
    record_read,
    review_stats,
    reviewed_reads,
    worklist,
)

MODEL = ("m", "1.0", "1.2.3.1")


@pytest.fixture
def studies(db_url: str, make_settings: Callable[..., Any]) -> Iterator[tuple[Any, Database]]:
    """Three scored studies (threshold .5): F1 p=.9 flagged, N1 p=.2 and N2 p=.3 unflagged;
    F1's header has a Study Description."""
    settings = make_settings(db_url)
    db = Database(db_url)
    upgrade(db)
    acceptor = Acceptor(db, Spool(settings.storage.spool_dir, 0), settings)
    for i, (accession, p) in enumerate((("F1", 0.9), ("N1", 0.2), ("N2", 0.3))):
        ds_bytes = build_dicom(
            study_instance_uid=f"1.2.826.0.1.7.{i + 1}", seed=i, study_description="CHEST PA"
        )
        accepted = acceptor.accept(ds_bytes, source="dicom")
        record_result(db, accepted.sop_instance_uid, p, 0.5, MODEL, accession=accession)
    yield settings, db
    db.dispose()


def test_a_read_in_words_derives_its_agreement(studies: tuple[Any, Database]) -> None:
    """'pneumonia' on an unflagged study is a disagreement (a missed pneumonia: a false
    negative), 'no pneumonia' on it an agreement; the finding is kept as said."""
    _settings, db = studies
    missed = record_read(db, "N1", "pneumonia", "RLL consolidation", 12.0, "alice").review
    assert (missed.verdict, missed.finding, missed.radiologist_positive) == (
        "disagree", "pneumonia", True,
    )  # fmt: skip
    agreed = record_read(db, "N2", "no_pneumonia", None, 12.0, "alice").review
    assert (agreed.verdict, agreed.finding) == ("agree", "no_pneumonia")
    (stats,) = review_stats(db)
    assert (stats.false_negative, stats.true_negative, stats.reviewed) == (1, 1, 2)


def test_cannot_tell_is_a_read_but_no_label(studies: tuple[Any, Database]) -> None:
    """'cannot tell' takes the study off the unread list but counts in no agreement figure
    and in no calibration read; an unknown finding or an over-long note is refused."""
    _settings, db = studies
    read = record_read(db, "F1", "cannot_tell", None, 12.0, "bob").review
    assert (read.verdict, read.radiologist_positive) == ("indeterminate", None)
    record_read(db, "N1", "no_pneumonia", None, 12.0, "bob")
    (stats,) = review_stats(db)
    assert (stats.reviewed, stats.cannot_tell) == (2, 1)
    assert stats.true_positive + stats.false_positive == 0 and stats.true_negative == 1
    assert [r.finding for r in reviewed_reads(db, {MODEL[2]}, 12.0)] == ["no_pneumonia"]
    unread = worklist(db, aging_hours=12.0, status="unread")
    assert [r.accession_number for r in unread] == ["N2"]
    with pytest.raises(NotReadable, match="one of"):
        record_read(db, "N2", "agree", None, 12.0)
    with pytest.raises(NotReadable, match=str(MAX_NOTE)):
        record_read(db, "N2", "pneumonia", "x" * (MAX_NOTE + 1), 12.0)
    with db.transaction() as s:
        assert s.query(Review).count() == 2  # nothing recorded by the refused ones


def test_the_worklist_says_the_read_who_and_when(studies: tuple[Any, Database]) -> None:
    """A reviewed row carries the finding, the reader and the time of the read; the CLI's
    status column says it in words with the agreement."""
    _settings, db = studies
    record_read(db, "N1", "pneumonia", None, 12.0, "alice")
    (row,) = worklist(db, aging_hours=12.0, status="reviewed")
    assert (row.finding, row.reader, row.verdict) == ("pneumonia", "alice", "disagree")
    assert row.read_at is not None and row.study_description == "CHEST PA"
    from screener.commands.worklist import status_text

    assert status_text(row) == "pneumonia (disagrees)"


def test_other_orders_and_search(studies: tuple[Any, Database]) -> None:
    """Sorted by P or accession in the database; a search finds a study by accession number
    or by the end of its Study Instance UID, and a short UID part matches nothing."""
    _settings, db = studies

    def listed(**kw: Any) -> list[str | None]:
        return [r.accession_number for r in worklist(db, aging_hours=12.0, status="all", **kw)]

    assert listed(sort="probability") == ["F1", "N2", "N1"]
    assert listed(sort="accession") == ["F1", "N1", "N2"]
    assert listed(search="N2") == ["N2"]
    assert listed(search="826.0.1.7.3") == ["N2"]
    assert listed(search="1.2.826.0.1.7.1") == ["F1"]
    assert listed(search="7.3") == []


def test_review_command_takes_the_readers_words(
    studies: tuple[Any, Database], capsys: pytest.CaptureFixture[str]
) -> None:
    """`screener review N1 --pneumonia` records a disagreement with the unflagged study and
    says so in words."""
    settings, db = studies
    assert main(["--set", f"database.url={settings.database.url}", "review", "N1",
                 "--pneumonia", "--reader", "carol"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "read as pneumonia by carol" in out and "not flagged" in out and "disagrees" in out
    with db.transaction() as s:
        assert s.query(Study).filter(Study.accession_number == "N1").one().study_description
