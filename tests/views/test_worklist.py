"""The radiologists' side: worklist order and filters, show, review and stats, through the CLI."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from support import build_dicom, record_result

from screener.cli import main
from screener.db import Database, Export, Instance, Result, utcnow
from screener.db.migrate import upgrade
from screener.ingest.accept import Acceptor
from screener.ingest.spool import Spool

OLD, NEW = ("m", "1.0", "1.2.3.1"), ("m", "2.0", "1.2.3.2")


@pytest.fixture
def scored(db_url: str, make_settings: Callable[..., Any]) -> Any:
    """Four studies with results: A p=.95 fresh, B p=.60 waited 30 h, C p=.30 fresh, D p=.80 fresh (flag at .5/.9)."""
    settings = make_settings(db_url)
    db = Database(db_url)
    upgrade(db)
    acceptor = Acceptor(db, Spool(settings.storage.spool_dir, 0), settings)
    specs = {"A": (0.95, 0.5, 0), "B": (0.60, 0.9, 30), "C": (0.30, 0.5, 0), "D": (0.80, 0.9, 0)}
    uids = {}
    for accession, (p, threshold, hours_ago) in specs.items():
        data = build_dicom(study_instance_uid=f"1.2.826.0.1.9.{ord(accession)}")
        accepted = acceptor.accept(data, source="dicom")
        uids[accession] = accepted.study_instance_uid
        record_result(
            db, accepted.sop_instance_uid, p, threshold, OLD,
            received_hours_ago=hours_ago, accession=accession,
        )  # fmt: skip
    yield settings, db, uids
    db.dispose()


def _cli(settings: Any, *args: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["--set", f"database.url={settings.database.url}", *args]) == 0
    return capsys.readouterr().out


def test_flagged_first_then_priority_with_aging(
    scored: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Flagged studies lead; within a group a long wait lifts a lower score (B .60 + 30h/12h beats A .95)."""
    settings, _db, _ = scored
    rows = json.loads(_cli(settings, "worklist", "--format", "json", capsys=capsys))
    assert [r["accession_number"] for r in rows] == ["A", "B", "D", "C"]
    flagged = [r["accession_number"] for r in rows if r["flagged"]]
    unflagged = [r["accession_number"] for r in rows if not r["flagged"]]
    assert flagged == ["A"]  # only A clears its threshold
    assert unflagged == ["B", "D", "C"]  # B waited 30 h: .60 + 2.5 outranks D .80 fresh
    assert rows[1]["priority"] == pytest.approx(0.60 + 30 / 12, abs=0.01)


def test_filters_and_formats(scored: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """--min-prob, --limit, --since and the csv/table formats show the right studies and no PHI."""
    settings, _db, _ = scored
    rows = json.loads(
        _cli(settings, "worklist", "--format", "json", "--min-prob", "0.7", capsys=capsys)
    )
    assert sorted(r["accession_number"] for r in rows) == ["A", "D"]
    rows = json.loads(_cli(settings, "worklist", "--format", "json", "--limit", "1", capsys=capsys))
    assert [r["accession_number"] for r in rows] == ["A"]
    rows = json.loads(
        _cli(settings, "worklist", "--format", "json", "--since", "24h", capsys=capsys)
    )
    assert "B" not in {r["accession_number"] for r in rows}
    text = _cli(settings, "worklist", "--format", "csv", capsys=capsys)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert parsed[0]["accession"] == "A" and parsed[0]["flag"] == "SECOND READ"
    table = _cli(settings, "worklist", capsys=capsys)
    assert "SECOND READ" in table and "30h" in table
    for phi in ("Doe^Jane", "PHI-12345", "19700101"):
        assert phi not in text + table


def test_a_rescore_replaces_the_older_result(
    scored: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """When an image is scored again by a newer model, the worklist shows the newer result."""
    settings, db, uids = scored
    with db.transaction() as s:
        old = s.scalars(
            select(Result).join(Instance).where(Instance.study.has(study_instance_uid=uids["C"]))
        ).one()
        later = utcnow() + timedelta(seconds=1)
        s.add(
            Result(
                job_id=old.job_id,
                instance_id=old.instance_id,
                frame_number=1,
                probability=0.99,
                label="pneumonia",
                threshold=0.5,
                model_name=NEW[0],
                model_version=NEW[1],
                model_uid=NEW[2],
                queued_at=later,
                started_at=later,
                scored_at=later,
            )
        )
    rows = json.loads(_cli(settings, "worklist", "--format", "json", capsys=capsys))
    c = next(r for r in rows if r["accession_number"] == "C")
    assert c["probability"] == pytest.approx(0.99) and c["model_version"] == "2.0" and c["flagged"]


def test_review_and_stats(scored: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Reads move studies off the unread list, and stats count TP/FP/TN/FN against them per model."""
    settings, _db, uids = scored
    _cli(settings, "review", "A", "--agree", capsys=capsys)  # flagged, agreed: TP
    _cli(settings, "review", uids["C"], "--agree", capsys=capsys)  # unflagged, agreed: TN
    out = _cli(
        settings, "review", "D", "--disagree", "--note", "consolidation RLL", capsys=capsys
    )  # FN
    assert "read as pneumonia" in out
    unread = json.loads(_cli(settings, "worklist", "--format", "json", capsys=capsys))
    assert [r["accession_number"] for r in unread] == ["B"]
    reviewed = json.loads(
        _cli(settings, "worklist", "--status", "reviewed", "--format", "json", capsys=capsys)
    )
    assert len(reviewed) == 3
    (stats,) = json.loads(_cli(settings, "stats", "--json", capsys=capsys))
    assert (
        stats["true_positive"],
        stats["false_positive"],
        stats["true_negative"],
        stats["false_negative"],
    ) == (1, 0, 1, 1)
    assert stats["sensitivity"] == pytest.approx(0.5) and stats["specificity"] == pytest.approx(1.0)
    assert stats["agreement"] == pytest.approx(2 / 3) and stats["model_version"] == "1.0"
    assert stats["npv"] == pytest.approx(0.5) and stats["ppv"] == pytest.approx(1.0)
    # 1 of 2 read as pneumonia were flagged: Wilson 95 % interval 0.095-0.905
    assert stats["intervals"]["sensitivity"] == pytest.approx([0.0945, 0.9055], abs=1e-3)
    assert "too few reads" in stats["caution"]
    text = _cli(settings, "stats", capsys=capsys)
    assert "50.0% (9-91)" in text and "NPV" in text and "too few reads to mean much" in text


def test_wilson_interval_matches_the_published_values() -> None:
    """8 of 10: 0.490-0.943 (Brown, Cai & DasGupta 2001, Wilson); 0 of 2 stays within [0, 1]."""
    from screener.model.metrics import wilson_interval

    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    low, high = wilson_interval(0, 2) or (-1.0, -1.0)
    assert low == 0.0 and 0.65 < high < 0.66
    assert wilson_interval(0, 0) is None


def test_show_lists_results_and_deliveries(scored: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """`screener show` gives the study's score, each image's result and the SR delivery state."""
    settings, db, uids = scored
    with db.transaction() as s:
        result = s.scalars(
            select(Result).join(Instance).where(Instance.study.has(study_instance_uid=uids["A"]))
        ).one()
        s.add(
            Export(
                result_id=result.id,
                destination="PACS@127.0.0.1:104",
                state="dead",
                attempts=8,
                last_error="connection refused",
                created_at=utcnow(),
            )
        )
    text = _cli(settings, "show", "A", capsys=capsys)
    assert "SECOND READ RECOMMENDED" in text and "p=0.950" in text
    assert (
        "SR to PACS@127.0.0.1:104: dead after 8 attempt(s) last error: connection refused" in text
    )
    detail = json.loads(_cli(settings, "show", uids["A"], "--json", capsys=capsys))
    assert detail["score"]["accession_number"] == "A"
    assert main(["--set", f"database.url={settings.database.url}", "show", "nope"]) == 1


def test_show_heatmap_is_a_readable_picture(
    scored: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The study's top image with its map at >= 1024 px, and no folder made up for it."""
    from PIL import Image

    settings, _db, _ = scored
    out = tmp_path / "a.png"
    assert "heatmap" in _cli(settings, "show", "A", "--heatmap", str(out), capsys=capsys)
    with Image.open(out) as im:
        assert max(im.size) >= 1024
    missing = tmp_path / "none" / "a.png"
    assert main(["--set", f"database.url={settings.database.url}", "show", "A", "--heatmap",
                 str(missing)]) == 1  # fmt: skip
    assert "does not exist" in capsys.readouterr().err and not missing.parent.exists()


def _add_image(settings: Any, db: Database, study_uid: str, p: float, threshold: float) -> str:
    """A new image in an existing study, with its result (as a worker would record it)."""
    acceptor = Acceptor(db, Spool(settings.storage.spool_dir, 0), settings)
    accepted = acceptor.accept(build_dicom(study_instance_uid=study_uid, seed=7), source="dicom")
    record_result(db, accepted.sop_instance_uid, p, threshold, OLD)
    return accepted.sop_instance_uid


def test_a_new_result_that_changes_the_flag_reopens_a_read_study(
    scored: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """C (p .30, not flagged) is read; a new image that is not flagged leaves it read; one
    that flags the study puts it back on the unread worklist as REOPENED."""
    settings, db, uids = scored
    _cli(settings, "review", "C", "--agree", "--reader", "dr.a", capsys=capsys)

    def unread() -> list[dict[str, Any]]:
        rows = json.loads(_cli(settings, "worklist", "--format", "json", capsys=capsys))
        return [r for r in rows if r["study_instance_uid"] == uids["C"]]

    assert unread() == []
    _add_image(settings, db, uids["C"], 0.35, 0.5)  # still not flagged
    assert unread() == []
    top = _add_image(settings, db, uids["C"], 0.85, 0.5)  # flags the study
    (c,) = unread()
    assert c["flagged"] and c["reopened"] and c["images"] == 3
    assert c["top_sop_instance_uid"] == top
    assert "REOPENED" in _cli(settings, "worklist", capsys=capsys)
    shown = _cli(settings, "show", uids["C"], capsys=capsys)  # the new image's accession: ACC1
    assert "REOPENED" in shown and "images 3" in shown
    assert f"{top} CR PA job=done <- sets the study's score" in shown


def test_reads_keep_the_reader_and_a_second_read_is_said(
    scored: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each read keeps its reader, and a second read of the same result is recorded with a note
    naming the first reader."""
    settings, _db, _ = scored
    _cli(settings, "review", "A", "--agree", "--reader", "dr.a", capsys=capsys)
    assert capsys.readouterr().err == ""
    assert main(["--set", f"database.url={settings.database.url}", "review", "A", "--disagree",
                 "--reader", "dr.b"]) == 0  # fmt: skip
    out = capsys.readouterr()
    assert "already read for this result by dr.a" in out.err and "by dr.b" in out.out
    detail = json.loads(_cli(settings, "show", "A", "--json", capsys=capsys))
    assert [(r["verdict"], r["reader"]) for r in detail["reviews"]] == [
        ("agree", "dr.a"),
        ("disagree", "dr.b"),
    ]
    rows = json.loads(_cli(settings, "worklist", "--status", "reviewed", "--format", "json",
                           capsys=capsys))  # fmt: skip
    assert [(r["accession_number"], r["verdict"], r["reader"]) for r in rows] == [
        ("A", "disagree", "dr.b")
    ]


def test_a_study_is_found_by_short_id_or_uid_part(
    scored: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table gives #N and the UID's end; show and review take either, and refuse what is
    ambiguous; rows stay under 120 characters."""
    settings, _db, uids = scored
    table = _cli(settings, "worklist", capsys=capsys)
    assert max(len(line) for line in table.splitlines()) < 120
    rows = json.loads(_cli(settings, "worklist", "--format", "json", capsys=capsys))
    a = next(r for r in rows if r["accession_number"] == "A")
    for key in (
        f"#{a['study_id']}",
        str(a["study_id"]),
        uids["A"][:-1] + "" if False else uids["A"],
    ):
        assert f"#{a['study_id']}  {uids['A']}" in _cli(settings, "show", key, capsys=capsys)
    assert uids["A"] in _cli(settings, "show", "…" + uids["A"][-6:], capsys=capsys)
    assert main(["--set", f"database.url={settings.database.url}", "show", "1.2.826.0.1.9"]) == 1
    assert "matches 4 Study Instance UIDs" in capsys.readouterr().err
