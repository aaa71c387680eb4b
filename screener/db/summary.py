"""The worklist's summary (``study_scores``): one row per scored study, kept in the same
transaction that adds a result, a review or an image.

Its semantics are those of :func:`screener.views.worklist._score`, written once more as one SQL
statement that both databases run: a study's score is the highest probability among the
latest result of each (instance, frame), outside_domain results left out unless every one
is; flagged when any assessed latest result reaches its threshold; a read holds while the
flag it read holds. The tests keep the two equal.

Every ORM flush that adds or removes a :class:`Result` or :class:`Review`, adds an
:class:`Instance` or moves an instance's ``received_at`` refreshes the summary of the
studies it touched (:func:`_after_flush`), so the worker's results, a radiologist's read and
any later writer keep it without a call of their own. The ingest path writes with Core
statements and calls :func:`count_new_image` itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Table,
    TextClause,
    bindparam,
    case,
    delete,
    event,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from screener.db.models import Instance, Result, Review, Study, StudyScoreRow

_SCORES = cast(Table, StudyScoreRow.__table__)
_STUDIES = cast(Table, Study.__table__)
_INSTANCES = cast(Table, Instance.__table__)

#: Studies refreshed per statement (bounds the IN list).
CHUNK = 500

#: Seconds since 1970-01-01 UTC of a stored ``received_at``, per dialect (SQLite keeps
#: datetimes as ISO text, read by julianday(); PostgreSQL as timestamptz).
EPOCH_SQL = {
    "sqlite": "(julianday({col}) - 2440587.5) * 86400.0",
    "postgresql": "EXTRACT(EPOCH FROM {col})",
}

# Migration 0007 holds a frozen copy of this statement for its backfill.
REFRESH_SQL = """
WITH keyed AS (
    SELECT r.id, r.probability, r.threshold, r.label, r.model_name, r.model_version,
           r.model_uid, i.study_id, i.sop_instance_uid,
           ROW_NUMBER() OVER (PARTITION BY r.instance_id, r.frame_number
                              ORDER BY r.scored_at DESC, r.id DESC) AS newest,
           MIN(r.scored_at) OVER (PARTITION BY r.instance_id, r.frame_number) AS first_at,
           MIN(r.id) OVER (PARTITION BY r.instance_id, r.frame_number) AS first_id
    FROM results r JOIN instances i ON i.id = r.instance_id
    {where_instance}
),
latest AS (
    SELECT k.*,
           COUNT(*) OVER (PARTITION BY k.study_id) AS frames,
           SUM(CASE WHEN k.label <> 'outside_domain' THEN 1 ELSE 0 END)
               OVER (PARTITION BY k.study_id) AS assessed,
           MAX(CASE WHEN k.label <> 'outside_domain' AND k.probability >= k.threshold
                    THEN 1 ELSE 0 END) OVER (PARTITION BY k.study_id) AS any_flag
    FROM keyed k
    WHERE k.newest = 1
),
ranked AS (
    SELECT l.*,
           ROW_NUMBER() OVER (PARTITION BY l.study_id ORDER BY
               CASE WHEN l.assessed > 0 AND l.label = 'outside_domain' THEN 1 ELSE 0 END,
               l.probability DESC, l.first_at, l.first_id) AS place
    FROM latest l
),
chosen AS (
    -- per-study lookups on ix_instances_study_id and ix_reviews_study_id: SQLite scans a
    -- joined CTE once per row
    SELECT t.*,
           (SELECT MIN(x.received_at) FROM instances x
            WHERE x.study_id = t.study_id) AS received_at,
           (SELECT COUNT(*) FROM instances x WHERE x.study_id = t.study_id) AS images,
           (SELECT v.id FROM reviews v WHERE v.study_id = t.study_id
            ORDER BY v.created_at DESC, v.id DESC LIMIT 1) AS review_id
    FROM ranked t
    WHERE t.place = 1
)
INSERT INTO study_scores (
    study_id, probability, flagged, threshold, model_name, model_version, model_uid,
    assessment, images, top_sop_instance_uid, received_at, received_epoch, reviewed,
    reopened, verdict, reader, read_at, audit
)
SELECT t.study_id, t.probability, t.any_flag = 1, t.threshold, t.model_name,
       t.model_version, t.model_uid,
       CASE WHEN t.assessed = t.frames THEN 'assessed'
            WHEN t.assessed > 0 THEN 'partly_outside_domain'
            ELSE 'outside_domain' END,
       t.images, t.sop_instance_uid, t.received_at, {epoch},
       rd.study_id IS NOT NULL AND rd.model_positive = (t.any_flag = 1),
       rd.study_id IS NOT NULL AND rd.model_positive <> (t.any_flag = 1),
       rd.verdict, rd.reader, rd.created_at,
       t.any_flag = 0 AND t.assessed > 0 AND ad.u IS NOT NULL AND ad.u < ad.share
FROM chosen t
LEFT JOIN reviews rd ON rd.id = t.review_id
LEFT JOIN audit_draws ad ON ad.study_id = t.study_id
"""


@cache
def refresh_statement(dialect: str) -> TextClause:
    """The INSERT ... SELECT that summarises the studies whose ids are bound as ``ids``."""
    sql = REFRESH_SQL.format(
        where_instance="WHERE i.study_id IN :ids",
        epoch=EPOCH_SQL[dialect].format(col="t.received_at"),
    )
    return text(sql).bindparams(bindparam("ids", expanding=True))


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), CHUNK):
        yield list(ids[start : start + CHUNK])


def refresh(conn: Connection, study_ids: Iterable[int]) -> None:
    """Recompute the summary rows of ``study_ids`` from their results, instances and reviews
    (a study without a result has none)."""
    ids = sorted(set(study_ids))
    statement = refresh_statement(conn.dialect.name)
    for chunk in _chunks(ids):
        # PostgreSQL: two transactions refreshing one study queue on its row, so the second
        # computes from what the first committed (READ COMMITTED takes a snapshot per
        # statement). SQLite's BEGIN IMMEDIATE already serialises writers.
        conn.execute(
            select(_STUDIES.c.id)
            .where(_STUDIES.c.id.in_(chunk))
            .order_by(_STUDIES.c.id)
            .with_for_update()
        )
        conn.execute(delete(_SCORES).where(_SCORES.c.study_id.in_(chunk)))
        conn.execute(statement, {"ids": chunk})


_COUNT_IMAGE = (
    update(_SCORES)
    .where(_SCORES.c.study_id == bindparam("sid"))
    .values(
        images=_SCORES.c.images + 1,
        received_at=case(
            (_SCORES.c.received_at > bindparam("at"), bindparam("at")),
            else_=_SCORES.c.received_at,
        ),
        received_epoch=case(
            (_SCORES.c.received_epoch > bindparam("epoch"), bindparam("epoch")),
            else_=_SCORES.c.received_epoch,
        ),
    )
)


def count_new_image(conn: Connection, study_id: int, received_at: datetime) -> None:
    """A new instance joined an existing study: one more image, and the study's first
    arrival if a clock put it earlier. The caller holds the study's row (it updated it)."""
    conn.execute(
        _COUNT_IMAGE,
        {"sid": study_id, "at": received_at, "epoch": epoch_seconds(received_at)},
    )


def epoch_seconds(at: datetime) -> float:
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def _touched(session: Session) -> tuple[set[int], set[int]]:
    """(study ids, instance ids) whose summary this flush may change."""
    studies: set[int] = set()
    instances: set[int] = set()
    for obj in (*session.new, *session.deleted):
        if isinstance(obj, Result):
            instances.add(obj.instance_id)
        elif isinstance(obj, Review | Instance):
            studies.add(obj.study_id)
    for obj in session.dirty:
        if isinstance(obj, Instance) and inspect(obj).attrs.received_at.history.has_changes():
            studies.add(obj.study_id)
    return studies, instances


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _context: Any) -> None:
    studies, instances = _touched(session)
    if not studies and not instances:
        return
    conn = session.connection()
    for chunk in _chunks(sorted(instances)):
        studies.update(
            conn.execute(select(_INSTANCES.c.study_id).where(_INSTANCES.c.id.in_(chunk))).scalars()
        )
    refresh(conn, studies)
