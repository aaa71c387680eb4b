"""The worklist's summary (study_scores) against the computation from every result: kept by
results, rescores, reviews and new images, filled by migration 0007, queried with its filters,
order and limit in SQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert, select
from support import build_dicom

from screener.db import Database, Instance, Job, Result, Review, Study, StudyScoreRow, utcnow
from screener.db import summary as summary_module
from screener.db.engine import as_utc
from screener.db.migrate import upgrade
from screener.ingest.accept import Acceptor
from screener.ingest.spool import Spool
from screener.views.worklist import StudyScore, _scores, record_review, worklist

AGING = 12.0
OLD, NEW = ("m", "1.0", "1.2.3.1"), ("m", "2.0", "1.2.3.2")


def from_scratch(
    db: Database,
    *,
    since: Any = None,
    status: str = "all",
    min_prob: float | None = None,
    limit: int | None = None,
) -> list[StudyScore]:
    """The worklist as it was computed before the summary: every result read, then filtered,
    sorted and cut in Python."""
    with db.transaction() as session:
        rows = _scores(session, AGING)
    if since is not None:
        rows = [r for r in rows if r.received_at >= as_utc(since)]
    if status == "unread":
        rows = [r for r in rows if not r.reviewed]
    elif status == "reviewed":
        rows = [r for r in rows if r.reviewed]
    if min_prob is not None:
        rows = [r for r in rows if r.probability >= min_prob]
    rows.sort(key=lambda r: (not r.flagged, -r.priority, r.received_at))
    return rows[:limit] if limit else rows


def _fields(rows: list[StudyScore]) -> list[dict[str, Any]]:
    """What a worklist row says, less the two figures that move with the clock."""
    out = []
    for r in rows:
        d = r.as_dict()
        assert d.pop("priority") == pytest.approx(r.priority)
        d.pop("age_hours")
        out.append(d)
    return out


def assert_same_worklist(db: Database, **filters: Any) -> list[StudyScore]:
    """worklist() over the summary equals the computation from every result."""
    got = worklist(db, aging_hours=AGING, **{"status": "all", "limit": None, **filters})
    assert _fields(got) == _fields(from_scratch(db, **filters))
    return got


@pytest.fixture
def store(db_url: str, make_settings: Callable[..., Any]) -> Iterator[tuple[Database, Acceptor]]:
    """A migrated database and the real ingest path into it."""
    settings = make_settings(db_url)
    db = Database(db_url)
    upgrade(db)
    yield db, Acceptor(db, Spool(settings.storage.spool_dir, 0), settings)
    db.dispose()


def _image(acceptor: Acceptor, study_uid: str, seed: int = 0) -> str:
    accepted = acceptor.accept(build_dicom(study_instance_uid=study_uid, seed=seed), source="dicom")
    return accepted.sop_instance_uid


def _score(
    db: Database,
    sop_uid: str,
    p: float,
    threshold: float = 0.5,
    model: tuple[str, str, str] = OLD,
    *,
    frame: int = 1,
    outside: bool = False,
    later: float = 0.0,
) -> None:
    """A result for one frame, recorded through the ORM as the worker records it."""
    at = utcnow() + timedelta(seconds=later)
    with db.transaction() as s:
        inst = s.scalars(select(Instance).where(Instance.sop_instance_uid == sop_uid)).one()
        job = s.scalars(select(Job).where(Job.instance_id == inst.id)).one()
        s.add(
            Result(
                job_id=job.id, instance_id=inst.id, frame_number=frame, probability=p,
                label="outside_domain" if outside else ("pneumonia" if p >= threshold else "normal"),
                threshold=threshold, model_name=model[0], model_version=model[1],
                model_uid=model[2], queued_at=at, started_at=at, scored_at=at,
            )
        )  # fmt: skip


def _by_uid(rows: list[StudyScore]) -> dict[str, StudyScore]:
    return {r.study_instance_uid: r for r in rows}


def test_the_summary_follows_results_rescores_reviews_and_new_images(
    store: tuple[Database, Acceptor],
) -> None:
    """After multi-image, multi-frame and outside-domain results, reads, a rescore that flips
    a read flag and a new image, the summary's worklist equals the one from every result."""
    db, acceptor = store
    uids = {k: f"1.2.826.0.1.77.{n}" for n, k in enumerate("ABCDE", start=1)}
    a1, a2 = _image(acceptor, uids["A"], 1), _image(acceptor, uids["A"], 2)
    _score(db, a1, 0.2)
    _score(db, a2, 0.7)  # two images: the second flags the study
    b = _image(acceptor, uids["B"])
    _score(db, b, 0.9, outside=True)  # every image outside the domain: not assessed
    c1, c2 = _image(acceptor, uids["C"], 1), _image(acceptor, uids["C"], 2)
    _score(db, c1, 0.95, outside=True)
    _score(db, c2, 0.3)  # partly assessed: the assessed image's .3 is the score
    d = _image(acceptor, uids["D"])
    _score(db, d, 0.1, frame=1)
    _score(db, d, 0.6, frame=2)  # a multi-frame image: frame 2 flags it
    e = _image(acceptor, uids["E"])
    _score(db, e, 0.4)
    rows = _by_uid(assert_same_worklist(db))
    assert rows[uids["A"]].flagged and rows[uids["A"]].images == 2
    assert rows[uids["A"]].top_sop_instance_uid == a2
    assert rows[uids["B"]].assessment == "outside_domain" and not rows[uids["B"]].flagged
    assert rows[uids["C"]].assessment == "partly_outside_domain"
    assert rows[uids["C"]].probability == pytest.approx(0.3)
    assert rows[uids["D"]].flagged and rows[uids["D"]].probability == pytest.approx(0.6)

    record_review(db, uids["E"], True, None, AGING, reader="dr.a")
    record_review(db, uids["A"], False, None, AGING, reader="dr.b")
    reviewed = _by_uid(assert_same_worklist(db, status="reviewed"))
    assert set(reviewed) == {uids["A"], uids["E"]}
    assert reviewed[uids["A"]].verdict == "disagree" and reviewed[uids["A"]].reader == "dr.b"
    assert uids["E"] not in _by_uid(assert_same_worklist(db, status="unread"))

    _score(db, e, 0.9, model=NEW, later=1)  # a newer model flags E: the read no longer holds
    _score(db, a1, 0.25, model=NEW, later=1)  # A stays flagged by a2: its read holds
    unread = _by_uid(assert_same_worklist(db, status="unread"))
    assert unread[uids["E"]].reopened and unread[uids["E"]].model_version == "2.0"
    assert uids["A"] not in unread
    assert_same_worklist(db, status="reviewed")

    _image(acceptor, uids["A"], 3)  # a third image arrives, not scored yet
    rows = _by_uid(assert_same_worklist(db))
    assert rows[uids["A"]].images == 3


def test_filters_order_and_limit_run_in_one_select(
    store: tuple[Database, Acceptor],
) -> None:
    """since, min_prob, status and limit give the rows the Python filters gave, from one
    SELECT on the summary that carries the LIMIT and reads no result."""
    db, acceptor = store
    for n in range(24):
        sop = _image(acceptor, f"1.2.826.0.1.78.{n}")
        _score(db, sop, (n * 37 % 100) / 100, threshold=0.5 if n % 2 else 0.9)
        with db.transaction() as s:  # waits of 0 to 46 hours
            inst = s.scalars(select(Instance).where(Instance.sop_instance_uid == sop)).one()
            inst.received_at = utcnow() - timedelta(hours=2 * n)
    for n in range(0, 24, 5):
        record_review(db, f"1.2.826.0.1.78.{n}", n % 2 == 0, None, AGING)

    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        statements.append(sql)

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        got = assert_same_worklist(db, status="unread", limit=5)
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)
    assert len(got) == 5
    (query,) = [q for q in statements if "study_scores" in q]
    assert "LIMIT" in query.upper() and "results" not in query
    since = utcnow() - timedelta(hours=11)
    assert len(assert_same_worklist(db, since=since)) == 6  # received 0-10 h ago
    assert len(assert_same_worklist(db, min_prob=0.6)) == 8
    assert assert_same_worklist(db, since=since, min_prob=0.3, status="unread", limit=3)
    assert len(assert_same_worklist(db, status="reviewed")) == 5


def _at_0006(db: Database) -> list[int]:
    """Studies with results and reviews written at revision 0006, before the summary existed:
    a two-image study, a two-frame image, an outside-domain study, a rescored read study."""
    now = utcnow()
    tables: dict[Any, Any] = {m: m.__table__ for m in (Study, Instance, Job, Result, Review)}
    study_ids = []
    with db.engine.begin() as conn:

        def add(model: Any, **values: Any) -> int:
            key = conn.execute(insert(tables[model]).values(**values)).inserted_primary_key
            assert key is not None
            return int(key[0])

        for n, results in enumerate(
            [
                [(1, 0.2, "normal", 0), (2, 0.8, "pneumonia", 0)],  # image, p, label, rescored
                [(1, 0.1, "normal", 0), (1, 0.7, "pneumonia", 0)],
                [(1, 0.9, "outside_domain", 0)],
                [(1, 0.3, "normal", 0), (1, 0.95, "pneumonia", 1)],
            ]
        ):
            at = now - timedelta(hours=5 * n)
            sid = add(Study, study_instance_uid=f"1.2.826.0.1.79.{n}", accession_number=f"X{n}",
                      created_at=at, updated_at=at)  # fmt: skip
            study_ids.append(sid)
            instances: dict[int, tuple[int, int]] = {}
            for frame, (image, p, label, rescored) in enumerate(results, start=1):
                if image not in instances:
                    iid = add(Instance, study_id=sid, series_instance_uid="1.2.3",
                              sop_instance_uid=f"1.2.826.0.1.79.{n}.{image}",
                              sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                              transfer_syntax_uid="1.2.840.10008.1.2.1", number_of_frames=2,
                              spool_path="/x", content_sha256="0" * 64, size_bytes=1,
                              source="dicom", receive_count=1,
                              received_at=at + timedelta(minutes=image), updated_at=at)  # fmt: skip
                    jid = add(Job, instance_id=iid, state="done", priority=0, attempts=1,
                              created_at=at, updated_at=at)  # fmt: skip
                    instances[image] = (iid, jid)
                iid, jid = instances[image]
                scored = at + timedelta(seconds=frame + 60 * rescored)
                add(Result, job_id=jid, instance_id=iid,
                    frame_number=1 if rescored or n != 1 else frame,
                    probability=p, label=label, threshold=0.5,
                    model_name="m", model_version=f"{1 + rescored}.0", model_uid=f"1.2.{rescored}",
                    queued_at=at, started_at=at, scored_at=scored)  # fmt: skip
        for sid, positive in ((study_ids[0], True), (study_ids[3], False)):
            add(Review, study_id=sid, verdict="agree", model_positive=positive,
                radiologist_positive=positive, probability=0.5, model_name="m",
                model_version="1.0", model_uid="1.2.0", created_at=now, reader="dr.c")  # fmt: skip
    return study_ids


def test_upgrade_to_0007_fills_the_summary_from_existing_rows(db_url: str) -> None:
    """A database with results and reviews from before 0007 shows, once upgraded, the same
    worklist as the computation from every result, and the same rows a refresh would make."""
    db = Database(db_url)
    try:
        upgrade(db, "0006")
        study_ids = _at_0006(db)
        upgrade(db)
        rows = _by_uid(assert_same_worklist(db))
        assert len(rows) == 4
        assert rows["1.2.826.0.1.79.0"].images == 2 and rows["1.2.826.0.1.79.0"].reviewed
        assert rows["1.2.826.0.1.79.1"].probability == pytest.approx(0.7)
        assert rows["1.2.826.0.1.79.2"].assessment == "outside_domain"
        assert rows["1.2.826.0.1.79.3"].reopened
        assert_same_worklist(db, status="unread")
        assert_same_worklist(db, status="reviewed")

        def table() -> list[tuple[Any, ...]]:
            with db.engine.connect() as conn:
                return [
                    tuple(r)
                    for r in conn.execute(
                        select(StudyScoreRow.__table__).order_by(StudyScoreRow.study_id)
                    )
                ]

        backfilled = table()
        with db.transaction() as s:  # the priority's arithmetic reads the epoch
            for row in s.scalars(select(StudyScoreRow)):
                epoch = as_utc(row.received_at).timestamp()
                assert row.received_epoch == pytest.approx(epoch, abs=0.01)
        with db.engine.begin() as conn:
            summary_module.refresh(conn, study_ids)
        assert table() == backfilled
    finally:
        db.dispose()
