"""The radiologists' view: the worklist, one study's details, reviews and agreement statistics.

A study's score is the highest probability among the latest results of its images (a
rescore by a newer model replaces an image's older result). Studies flagged for a second
read come first; within each group the order is by priority = probability + hours waited /
``worklist.aging_hours``, so a lower score that has waited long is not starved.

:func:`_score` computes one study from its results; the worklist itself reads the same
figures from the per-study summary that :mod:`screener.db.summary` keeps (``study_scores``),
so that its filters, order and limit run in the database (a year's 200,000 studies:
benchmarks/bench_worklist.py).

Only what a radiologist's worklist already shows: accession number, study date, modality,
and the Study Instance UID to act on. No patient name, ID or birth date (screener does not
store them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, false, func, literal_column, select, text, true
from sqlalchemy.orm import Session, aliased

from screener.config import Settings
from screener.db import (
    OUTSIDE_DOMAIN,
    Database,
    Export,
    Instance,
    Job,
    Result,
    Review,
    Study,
    StudyScoreRow,
    utcnow,
)
from screener.db.engine import as_utc
from screener.db.models import AuditDraw
from screener.errors import ScreenerError


class StudyNotFound(ScreenerError):
    """No study with that Study Instance UID or accession number."""


class NotReadable(ScreenerError):
    """A read that cannot be recorded: an unknown finding, a note too long, a study the
    model did not assess."""


#: A radiologist's read in their own words; the agreement with the model's flag follows.
FINDINGS = {
    "pneumonia": "pneumonia",
    "no_pneumonia": "no pneumonia",
    "cannot_tell": "cannot tell",
}
#: Review.verdict of a read that could not tell (counted in no agreement statistic).
INDETERMINATE = "indeterminate"
#: The longest note kept with a read (a longer one is refused, never cut).
MAX_NOTE = 2000


def finding_of(verdict: str | None, model_positive: bool) -> str | None:
    """The finding a read recorded, from its verdict and the flag it read."""
    if verdict is None:
        return None
    if verdict == INDETERMINATE:
        return "cannot_tell"
    return "pneumonia" if (verdict == "agree") == model_positive else "no_pneumonia"


@dataclass
class StudyScore:
    study_id: int
    study_instance_uid: str
    accession_number: str | None
    study_date: str | None
    modality: str | None
    probability: float
    flagged: bool
    threshold: float
    model_name: str
    model_version: str
    model_uid: str
    received_at: datetime
    age_hours: float
    priority: float
    reviewed: bool
    verdict: str | None
    #: "assessed"; "outside_domain" when the domain guard found every image unlike the
    #: model's training films (no score, never flagged); "partly_outside_domain"
    assessment: str = "assessed"
    #: images (instances) received in the study, and the one whose result set the score
    images: int = 0
    top_sop_instance_uid: str | None = None
    #: read before, but a newer result changed the flag: back on the unread worklist
    reopened: bool = False
    reader: str | None = None
    #: the read in the reader's words (see FINDINGS), and when it was recorded
    finding: str | None = None
    read_at: datetime | None = None
    study_time: str | None = None
    study_description: str | None = None
    #: not flagged, but drawn at random for an audit read (screener.site.audit)
    audit: bool = False

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["received_at"] = self.received_at.isoformat()
        d["read_at"] = self.read_at.isoformat() if self.read_at else None
        return d


def _latest_results(
    session: Session, study_ids: list[int] | None = None
) -> dict[int, list[Result]]:
    """Study id -> the latest result of each (instance, frame)."""
    q = (
        select(Result, Instance.study_id)
        .join(Instance, Result.instance_id == Instance.id)
        .order_by(Result.scored_at, Result.id)
    )
    if study_ids is not None:
        q = q.where(Instance.study_id.in_(study_ids))
    latest: dict[tuple[int, int], tuple[int, Result]] = {}
    for result, study_id in session.execute(q):
        latest[(result.instance_id, result.frame_number)] = (study_id, result)
    by_study: dict[int, list[Result]] = {}
    for study_id, result in latest.values():
        by_study.setdefault(study_id, []).append(result)
    return by_study


def _score(
    study: Study,
    results: list[Result],
    received_at: datetime,
    review: Review | None,
    aging_hours: float,
    images: int,
    sop_uids: dict[int, str],
) -> StudyScore:
    assessed = [r for r in results if r.label != OUTSIDE_DOMAIN]
    top = max(assessed or results, key=lambda r: r.probability)
    age_hours = max(0.0, (utcnow() - received_at).total_seconds() / 3600)
    if len(assessed) == len(results):
        assessment = "assessed"
    else:
        assessment = "partly_outside_domain" if assessed else OUTSIDE_DOMAIN
    flagged = any(r.probability >= r.threshold for r in assessed)
    # A read holds while the flag it read holds: a newer result that flips it reopens the study.
    still_read = review is not None and review.model_positive == flagged
    return StudyScore(
        study_id=study.id,
        study_instance_uid=study.study_instance_uid,
        accession_number=study.accession_number,
        study_date=study.study_date,
        modality=study.modality,
        probability=top.probability,
        flagged=flagged,
        threshold=top.threshold,
        model_name=top.model_name,
        model_version=top.model_version,
        model_uid=top.model_uid,
        received_at=received_at,
        age_hours=age_hours,
        priority=(top.probability if assessed else 0.0) + age_hours / aging_hours,
        reviewed=still_read,
        verdict=review.verdict if still_read and review else None,
        assessment=assessment,
        images=images,
        top_sop_instance_uid=sop_uids.get(top.instance_id),
        reopened=review is not None and not still_read,
        reader=review.reader if review else None,
        finding=finding_of(review.verdict, review.model_positive)
        if still_read and review
        else None,
        read_at=as_utc(review.created_at) if still_read and review else None,
        study_time=study.study_time,
        study_description=study.study_description,
    )


def _scores(
    session: Session, aging_hours: float, study_ids: list[int] | None = None
) -> list[StudyScore]:
    by_study = _latest_results(session, study_ids)
    if not by_study:
        return []
    studies = {s.id: s for s in session.scalars(select(Study).where(Study.id.in_(by_study)))}
    received: dict[int, datetime] = {}
    counts: dict[int, int] = {}
    sop_uids: dict[int, str] = {}
    for instance_id, sop_uid, study_id, at in session.execute(
        select(
            Instance.id, Instance.sop_instance_uid, Instance.study_id, Instance.received_at
        ).where(Instance.study_id.in_(by_study))
    ):
        at = as_utc(at)
        received[study_id] = min(received.get(study_id, at), at)
        counts[study_id] = counts.get(study_id, 0) + 1
        sop_uids[instance_id] = sop_uid
    reviews: dict[int, Review] = {}
    for review in session.scalars(
        select(Review).where(Review.study_id.in_(by_study)).order_by(Review.created_at, Review.id)
    ):
        reviews[review.study_id] = review  # the latest read counts
    return [
        _score(
            studies[sid],
            results,
            received[sid],
            reviews.get(sid),
            aging_hours,
            counts[sid],
            sop_uids,
        )
        for sid, results in by_study.items()
    ]


#: The worklist's orders: flag and priority (the default), newest first, highest P first,
#: accession number.
SORTS = ("priority", "received", "probability", "accession")


def worklist(
    db: Database,
    *,
    aging_hours: float,
    since: datetime | None = None,
    status: str = "unread",
    min_prob: float | None = None,
    limit: int | None = 50,
    sort: str = "priority",
    search: str | None = None,
) -> list[StudyScore]:
    """Scored studies, flagged first, then by priority (probability + waiting time), or in
    another of :data:`SORTS`; ``search`` keeps the studies with that accession number or
    whose Study Instance UID starts or ends with it.

    One SELECT over the summary (``study_scores``, see :mod:`screener.db.summary`): the
    filters, the order and the limit run in the database."""
    now = utcnow()
    s = StudyScoreRow
    # priority = probability + hours waited / aging_hours, written over the stored epoch
    # seconds (now is a constant): the same arithmetic in SQLite and PostgreSQL
    waited = case(
        (s.received_epoch > now.timestamp(), 0.0), else_=now.timestamp() - s.received_epoch
    )
    rank = case((s.assessment == OUTSIDE_DOMAIN, 0.0), else_=s.probability)
    orders: dict[str, tuple[Any, ...]] = {
        "priority": (
            s.flagged.desc(),
            s.audit.desc(),  # audit reads next: the unbiased sample (screener.site.audit)
            (rank + waited / (3600.0 * aging_hours)).desc(),
            s.received_at,
        ),
        "received": (s.received_at.desc(),),
        "probability": (rank.desc(), s.received_at),
        "accession": (Study.accession_number, s.received_at),
    }
    order = (*orders.get(sort, orders["priority"]), s.study_id)
    # first the ids, filtered, ordered and limited over study_scores alone (on PostgreSQL
    # from a partial index that carries the order's columns: no row read but the limit's),
    # then those rows with their studies
    ids = select(s.study_id)
    if sort == "accession" or (search and search.strip()):
        ids = ids.join(Study, Study.id == s.study_id)
    if since is not None:
        ids = ids.where(s.received_at >= as_utc(since).astimezone(UTC))
    if status == "unread":
        ids = ids.where(s.reviewed == false())
    elif status == "reviewed":
        ids = ids.where(s.reviewed == true())
    if min_prob is not None:
        ids = ids.where(s.probability >= min_prob)
    if search and search.strip():
        term = search.strip()[:64]
        match = Study.accession_number == term
        if len(term) >= MIN_UID_PART:
            match = (
                match
                | Study.study_instance_uid.startswith(term, autoescape=True)
                | Study.study_instance_uid.endswith(term, autoescape=True)
            )
        ids = ids.where(match)
    if limit:
        ids = ids.order_by(*order).limit(limit)
    q = (
        select(
            s,
            Study.study_instance_uid,
            Study.accession_number,
            Study.study_date,
            Study.modality,
            Study.study_time,
            Study.study_description,
        )
        .join(Study, Study.id == s.study_id)
        .where(s.study_id.in_(ids.scalar_subquery()))
        .order_by(*order)
    )
    with db.transaction() as session:
        if session.get_bind().dialect.name == "postgresql":
            # the limit reads a few thousand index entries: starting parallel workers for
            # them costs more than it saves, and seconds on a loaded host (bench_scale)
            session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))
        return [_listed(*row, now=now, aging_hours=aging_hours) for row in session.execute(q)]


def _listed(
    row: StudyScoreRow,
    study_instance_uid: str,
    accession_number: str | None,
    study_date: str | None,
    modality: str | None,
    study_time: str | None,
    study_description: str | None,
    *,
    now: datetime,
    aging_hours: float,
) -> StudyScore:
    """A summary row as the worklist shows it (the same fields as :func:`_score`)."""
    received_at = as_utc(row.received_at)
    age_hours = max(0.0, (now - received_at).total_seconds() / 3600)
    assessed = row.assessment != OUTSIDE_DOMAIN
    return StudyScore(
        study_id=row.study_id,
        study_instance_uid=study_instance_uid,
        accession_number=accession_number,
        study_date=study_date,
        modality=modality,
        probability=row.probability,
        flagged=row.flagged,
        threshold=row.threshold,
        model_name=row.model_name,
        model_version=row.model_version,
        model_uid=row.model_uid,
        received_at=received_at,
        age_hours=age_hours,
        priority=(row.probability if assessed else 0.0) + age_hours / aging_hours,
        reviewed=row.reviewed,
        verdict=row.verdict if row.reviewed else None,
        assessment=row.assessment,
        images=row.images,
        top_sop_instance_uid=row.top_sop_instance_uid,
        reopened=row.reopened,
        reader=row.reader,
        finding=finding_of(row.verdict, row.flagged) if row.reviewed else None,
        read_at=as_utc(row.read_at) if row.reviewed and row.read_at else None,
        study_time=study_time,
        study_description=study_description,
        audit=bool(row.audit),
    )


#: The shortest Study Instance UID prefix or suffix taken as a key (fewer would match by luck).
MIN_UID_PART = 6


def _short_id(text: str) -> bool:
    """ASCII digits that fit a database integer (``"²".isdigit()`` is True; 10^21 overflows)."""
    return 0 < len(text) <= 18 and all(c in "0123456789" for c in text)


def find_study(session: Session, key: str) -> Study:
    """A study by any key a radiologist has at hand, in this order: its Study Instance UID;
    ``#N``, the short id the worklist shows; its accession number; bare digits as the short
    id; a unique start or end of its UID (at least :data:`MIN_UID_PART` characters, the
    worklist's ``…`` included or not). Ambiguity is an error that says so, never a guess."""
    key = key.strip()
    study = session.scalars(select(Study).where(Study.study_instance_uid == key)).one_or_none()
    if study is not None:
        return study
    if key.startswith("#") and _short_id(key[1:]):
        study = session.get(Study, int(key[1:]))
        if study is None:
            raise StudyNotFound(f"no study with short id {key}")
        return study
    matches = session.scalars(select(Study).where(Study.accession_number == key)).all()
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise StudyNotFound(
            f"accession number {key!r} matches {len(matches)} studies; use the short id (#N) "
            "the worklist shows or the Study Instance UID"
        )
    if _short_id(key) and (study := session.get(Study, int(key))) is not None:
        return study
    part = key.strip("…").strip(".")
    if len(part) >= MIN_UID_PART and all(c in "0123456789." for c in part):
        found = session.scalars(
            select(Study).where(
                Study.study_instance_uid.startswith(part) | Study.study_instance_uid.endswith(part)
            )
        ).all()
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise StudyNotFound(
                f"{key!r} matches {len(found)} Study Instance UIDs; give more of it or the short id"
            )
    raise StudyNotFound(
        f"no study with Study Instance UID, short id, accession number or UID part {key!r}"
    )


@dataclass
class ImageDetail:
    sop_instance_uid: str
    modality: str | None
    view_position: str | None
    job_state: str | None
    job_reason: str | None
    results: list[dict[str, Any]] = field(default_factory=list)
    # when retention deleted the spooled image (ISO 8601), else None
    purged_at: str | None = None
    #: why the image was not scored, in a sentence (a skipped or failed job), else None
    job_message: str | None = None


@dataclass
class StudyDetail:
    score: StudyScore | None
    study_instance_uid: str
    accession_number: str | None
    study_date: str | None
    images: list[ImageDetail]
    reviews: list[dict[str, Any]]
    short_id: int = 0
    study_time: str | None = None
    study_description: str | None = None
    modality: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score"] = self.score.as_dict() if self.score else None
        return d


def study_detail(db: Database, key: str, aging_hours: float) -> StudyDetail:
    from screener.site.audit import read_weight

    with db.transaction() as session:
        study = find_study(session, key)
        scores = _scores(session, aging_hours, [study.id])
        for score in scores:
            audit = read_weight(score.flagged, session.get(AuditDraw, study.id)) > 0
            score.audit = audit and not score.flagged and score.assessment != OUTSIDE_DOMAIN
        images = []
        for inst in session.scalars(
            select(Instance).where(Instance.study_id == study.id).order_by(Instance.id)
        ):
            job = session.scalars(
                select(Job).where(Job.instance_id == inst.id).order_by(Job.id.desc())
            ).first()
            detail = ImageDetail(
                inst.sop_instance_uid,
                inst.modality,
                inst.view_position,
                job.state if job else None,
                job.reason if job else None,
                purged_at=as_utc(inst.purged_at).isoformat() if inst.purged_at else None,
                job_message=job.last_error if job and job.state != "done" else None,
            )
            for r in session.scalars(
                select(Result).where(Result.instance_id == inst.id).order_by(Result.scored_at)
            ):
                exports = session.scalars(select(Export).where(Export.result_id == r.id)).all()
                detail.results.append(
                    {
                        "frame": r.frame_number,
                        "probability": r.probability,
                        "label": r.label,
                        "domain_score": r.domain_score,
                        "threshold": r.threshold,
                        "model": f"{r.model_name} {r.model_version}",
                        "model_uid": r.model_uid,
                        "scored_at": as_utc(r.scored_at).isoformat(),
                        "deliveries": [
                            {
                                "destination": e.destination,
                                "state": e.state,
                                "attempts": e.attempts,
                                "last_error": e.last_error,
                            }
                            for e in exports
                        ],
                    }
                )
            images.append(detail)
        reviews = [
            {
                "verdict": rv.verdict,
                "finding": rv.finding or finding_of(rv.verdict, rv.model_positive),
                "model_positive": rv.model_positive,
                "reader": rv.reader,
                "note": rv.note,
                "at": as_utc(rv.created_at).isoformat(),
                "model_version": rv.model_version,
                "probability": rv.probability,
            }
            for rv in session.scalars(
                select(Review).where(Review.study_id == study.id).order_by(Review.id)
            )
        ]
        return StudyDetail(
            scores[0] if scores else None,
            study.study_instance_uid,
            study.accession_number,
            study.study_date,
            images,
            reviews,
            study.id,
            study.study_time,
            study.study_description,
            study.modality,
        )


def next_unread(db: Database, aging_hours: float, after: int) -> int | None:
    """The short id of the study at the top of the unread worklist other than ``after``."""
    for row in worklist(db, aging_hours=aging_hours, status="unread", limit=2):
        if row.study_id != after:
            return row.study_id
    return None


@dataclass
class UnscoredStudy:
    """A study with no result: every image skipped by selection or population, failed or
    rejected; ``reason`` says why in a sentence (the first image's)."""

    study_id: int
    accession_number: str | None
    study_date: str | None
    modality: str | None
    images: int
    state: str
    reason: str | None
    received_at: datetime


def unscored_studies(
    db: Database, *, since: datetime | None = None, limit: int = 200
) -> list[UnscoredStudy]:
    """Studies that will get no score (newest first): their images were skipped (adults,
    other body parts), failed or were rejected. Filtered, ordered and limited in SQL."""
    from sqlalchemy import func

    ended = ("skipped", "failed")
    q = (
        select(
            Study.id,
            Study.accession_number,
            Study.study_date,
            Study.modality,
            func.count(func.distinct(Instance.id)),
            func.min(Job.state),
            func.min(Job.last_error),
            func.min(Instance.received_at),
        )
        .join(Instance, Instance.study_id == Study.id)
        .join(Job, Job.instance_id == Instance.id)
        .where(Job.state.in_(ended))
        .where(~select(StudyScoreRow.study_id).where(StudyScoreRow.study_id == Study.id).exists())
        .group_by(Study.id, Study.accession_number, Study.study_date, Study.modality)
        .order_by(func.min(Instance.received_at).desc(), Study.id.desc())
        .limit(limit)
    )
    if since is not None:
        q = q.where(Instance.received_at >= as_utc(since).astimezone(UTC))
    with db.transaction() as session:
        return [
            UnscoredStudy(sid, acc, date, mod, n, state, reason, as_utc(at))
            for sid, acc, date, mod, n, state, reason, at in session.execute(q)
        ]


@dataclass
class RecordedRead:
    review: Review
    #: an earlier read of the same result (same model, same score), if any: said, not refused
    earlier: Review | None
    short_id: int


def record_review(
    db: Database,
    key: str,
    agree: bool,
    note: str | None,
    aging_hours: float,
    reader: str | None = None,
    settings: Settings | None = None,
) -> RecordedRead:
    """Record a read in the model's terms: agreeing keeps its flag, disagreeing inverts it
    (``screener review --agree/--disagree``); see :func:`record_read`."""
    return _record(
        db,
        key,
        lambda flagged: "pneumonia" if flagged == agree else "no_pneumonia",
        note,
        aging_hours,
        reader,
        settings,
    )


def record_read(
    db: Database,
    key: str,
    finding: str,
    note: str | None,
    aging_hours: float,
    reader: str | None = None,
    settings: Settings | None = None,
) -> RecordedRead:
    """Record a radiologist's read in their own words (:data:`FINDINGS`): the agreement
    with the model's flag is derived, never asked. Every read is kept (the latest counts);
    an earlier read of the same result is returned so that the caller can say so.

    With ``settings`` whose ``export.assessments`` is on, the read's IHE AIRAI assessment SRs
    are planned in the same transaction (:mod:`screener.report.readback`)."""
    if finding not in FINDINGS:
        raise NotReadable(f"a read is one of {', '.join(FINDINGS)}, not {finding[:40]!r}")
    return _record(db, key, lambda _flagged: finding, note, aging_hours, reader, settings)


def _record(
    db: Database,
    key: str,
    finding_for: Callable[[bool], str],
    note: str | None,
    aging_hours: float,
    reader: str | None,
    settings: Settings | None = None,
) -> RecordedRead:
    if note is not None and len(note) > MAX_NOTE:
        raise NotReadable(f"the note has {len(note)} characters; at most {MAX_NOTE} are kept")
    with db.transaction() as session:
        study = find_study(session, key)
        scores = _scores(session, aging_hours, [study.id])
        if not scores:
            raise StudyNotFound(f"study {study.study_instance_uid} has no result to review yet")
        s = scores[0]
        if s.assessment == OUTSIDE_DOMAIN:
            raise NotReadable(
                f"study #{study.id} was not assessed by the model (outside its domain): there "
                "is no call of the model to read"
            )
        finding = finding_for(s.flagged)
        earlier = session.scalars(
            select(Review)
            .where(
                Review.study_id == study.id,
                Review.model_uid == s.model_uid,
                Review.probability == s.probability,
                Review.model_positive == s.flagged,
            )
            .order_by(Review.id.desc())
        ).first()
        positive = None if finding == "cannot_tell" else finding == "pneumonia"
        review = Review(
            study_id=study.id,
            verdict=(
                INDETERMINATE
                if positive is None
                else ("agree" if positive == s.flagged else "disagree")
            ),
            model_positive=s.flagged,
            radiologist_positive=positive,
            finding=finding,
            probability=s.probability,
            model_name=s.model_name,
            model_version=s.model_version,
            model_uid=s.model_uid,
            note=note,
            created_at=utcnow(),
            reader=(reader or "")[:64] or None,
        )
        session.add(review)
        session.flush()
        if settings is not None and settings.export.assessments:
            from screener.report.readback import plan_assessments

            plan_assessments(session, review, settings)
            session.flush()
        session.expunge_all()
        return RecordedRead(review, earlier, study.id)


@dataclass
class ModelStats:
    model_name: str
    model_version: str
    model_uid: str
    reviewed: int
    agreement: float
    true_positive: int
    false_positive: int
    true_negative: int
    false_negative: int
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    npv: float | None = None
    #: 95 % Wilson intervals: name -> (low, high), None where the denominator is 0
    intervals: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    #: why these figures mean little yet (too few reads), else None
    caution: str | None = None
    #: reads that could not tell (in ``reviewed``, in no other figure)
    cannot_tell: int = 0
    #: reads of studies drawn for an audit read (screener.site.audit), and of unflagged studies
    #: not drawn (left out of the weighted figures)
    audit_reads: int = 0
    undrawn_reads: int = 0
    #: sensitivity and specificity with each read weighted by 1 / the chance its study was
    #: read (flagged 1, audit 1 / share): free of verification bias; name -> (value, 95 %
    #: interval over the effective sample size, that size)
    weighted: dict[str, tuple[float | None, tuple[float, float] | None, float]] = field(
        default_factory=dict
    )


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


#: Below this many reads in a denominator, a sensitivity or specificity is flagged as too few
#: to mean much (its 95 % interval is then wider than about +-0.2 around 0.8).
MEANINGFUL_READS = 20


def _latest_reads() -> Any:
    """A condition on :class:`Review`: the row is its study's latest read (by created_at,
    then id), looked up per read on ``ix_reviews_study_id_created_at_id``."""
    newest = aliased(Review)
    return (
        Review.id
        == select(newest.id)
        .where(newest.study_id == Review.study_id)
        .order_by(newest.created_at.desc(), newest.id.desc())
        .limit(1)
        .correlate(Review)
        .scalar_subquery()
    )


def _first_read() -> tuple[Any, Any]:
    """When (created_at, id) a read's study was first read: the order the reads are kept in."""
    first = aliased(Review)
    at = (
        select(func.min(first.created_at))
        .where(first.study_id == Review.study_id)
        .correlate(Review)
        .scalar_subquery()
    )
    ident = (
        select(first.id)
        .where(first.study_id == Review.study_id)
        .order_by(first.created_at, first.id)
        .limit(1)
        .correlate(Review)
        .scalar_subquery()
    )
    return at, ident


def _weight(model_positive: bool, u: float | None, share: float | None) -> float:
    """:func:`screener.site.audit.read_weight` of a read whose draw's columns (None: no
    draw) are given: the same rule, without making an :class:`AuditDraw` per read."""
    if model_positive:
        return 1.0
    if u is not None and share is not None and share > 0 and u < share:
        return 1.0 / share
    return 0.0


def review_stats(db: Database) -> list[ModelStats]:
    """Agreement and the model's sensitivity/specificity against reviewed reads, per model version.

    Each study counts once, with its latest review. Counted in the database: the latest
    read of each study (:func:`_latest_reads`) joined to its audit draw, grouped by model,
    flag, finding and draw; the weights come from those few groups."""
    from screener.model.metrics import wilson_interval
    from screener.site.audit import weighted_proportion

    latest = _latest_reads()
    drawn = case((AuditDraw.u < AuditDraw.share, 1), else_=0)
    q = (
        select(
            Review.model_name,
            Review.model_version,
            Review.model_uid,
            Review.model_positive,
            Review.radiologist_positive,
            func.min(AuditDraw.u),
            AuditDraw.share,
            drawn,
            func.count(),
        )
        .outerjoin(AuditDraw, AuditDraw.study_id == Review.study_id)
        .where(latest)
        .group_by(
            Review.model_name,
            Review.model_version,
            Review.model_uid,
            Review.model_positive,
            Review.radiologist_positive,
            AuditDraw.share,
            drawn,
        )
    )
    # (model) -> [(model_positive, radiologist_positive, weight, reads)]
    groups: dict[tuple[str, str, str], list[tuple[bool, bool | None, float, int]]] = {}
    with db.transaction() as session:
        for name, version, uid, model, read, u, share, _drawn, n in session.execute(q):
            groups.setdefault((name, version, uid), []).append(
                (bool(model), None if read is None else bool(read), _weight(model, u, share), n)
            )

    stats = []
    for (name, version, uid), every in sorted(groups.items()):
        told = [(m, bool(r), w, n) for m, r, w, n in every if r is not None]
        reviewed = sum(n for _, _, _, n in every)
        told_n = sum(n for _, _, _, n in told)
        positive = [(m, w, n) for m, r, w, n in told if r]
        negative = [(not m, w, n) for m, r, w, n in told if not r]
        weighted = {
            "sensitivity": weighted_proportion(
                [h for h, _, n in positive for _ in range(n)],
                [w for _, w, n in positive for _ in range(n)],
            ),
            "specificity": weighted_proportion(
                [h for h, _, n in negative for _ in range(n)],
                [w for _, w, n in negative for _ in range(n)],
            ),
        }
        tp = sum(n for m, r, _, n in told if m and r)
        fp = sum(n for m, r, _, n in told if m and not r)
        tn = sum(n for m, r, _, n in told if not m and not r)
        fn = sum(n for m, r, _, n in told if not m and r)
        intervals = {
            "agreement": wilson_interval(tp + tn, told_n),
            "sensitivity": wilson_interval(tp, tp + fn),
            "specificity": wilson_interval(tn, tn + fp),
            "ppv": wilson_interval(tp, tp + fp),
            "npv": wilson_interval(tn, tn + fn),
        }
        short = [
            f"{what} from {n} reads"
            for what, n in (("sensitivity", tp + fn), ("specificity", tn + fp))
            if n < MEANINGFUL_READS
        ]
        caution = (
            f"too few reads to mean much: {', '.join(short)} (fewer than {MEANINGFUL_READS}); "
            "read the intervals, not the point values"
            if short
            else None
        )
        stats.append(
            ModelStats(
                name,
                version,
                uid,
                reviewed,
                (tp + tn) / told_n if told_n else 0.0,
                tp,
                fp,
                tn,
                fn,
                _ratio(tp, tp + fn),
                _ratio(tn, tn + fp),
                _ratio(tp, tp + fp),
                _ratio(tn, tn + fn),
                intervals,
                caution,
                reviewed - told_n,
                sum(n for m, _, w, n in told if not m and w > 0),
                sum(n for m, _, w, n in told if not m and w == 0),
                weighted,
            )
        )
    return stats


@dataclass(frozen=True)
class Read:
    """One study's latest read as the pictures and commissioning use it."""

    study_id: int
    model_uid: str
    probability: float
    model_positive: bool
    radiologist_positive: bool
    #: 1 / the chance the study was read (:func:`screener.site.audit.read_weight`)
    weight: float


def _reads_query(
    columns: tuple[Any, ...], model_uids: set[str] | None, ordered: bool = True
) -> Any:
    """The SELECT of :func:`latest_reads` (and :func:`reviewed_reads`) of ``columns``."""
    outside = select(StudyScoreRow.study_id).where(
        # a literal, so that SQLite sees the partial index ix_study_scores_outside_domain
        StudyScoreRow.assessment == literal_column(f"'{OUTSIDE_DOMAIN}'")
    )
    q = select(*columns).where(
        _latest_reads(),
        Review.radiologist_positive.is_not(None),
        Review.study_id.not_in(outside),
    )
    if ordered:
        q = q.order_by(*_first_read())
    if model_uids is not None:
        q = q.where(Review.model_uid.in_(sorted(model_uids)))
    return q


def latest_reads(
    db: Database, model_uids: set[str] | None = None, ordered: bool = True
) -> list[Read]:
    """The latest read of each study reviewed under one of ``model_uids`` (every model when
    None) whose images the model assessed (studies outside its domain had no score to
    calibrate, ``study_scores.assessment``) and whose reader could tell (a read of "cannot
    tell" is no label), with its weight from the study's audit draw: one SELECT, in the
    order the studies were first read (``ordered``; else in no order)."""
    if model_uids is not None and not model_uids:
        return []
    q = _reads_query(
        (
            Review.study_id,
            Review.model_uid,
            Review.probability,
            Review.model_positive,
            Review.radiologist_positive,
            AuditDraw.u,
            AuditDraw.share,
        ),
        model_uids,
        ordered,
    ).outerjoin(AuditDraw, AuditDraw.study_id == Review.study_id)
    with db.transaction() as session:  # Core rows: no ORM loading for 50,000 tuples
        return [
            Read(sid, uid, float(p), bool(m), bool(r), _weight(bool(m), u, share))
            for sid, uid, p, m, r, u, share in session.connection().execute(q).all()
        ]


def reviewed_reads(db: Database, model_uids: set[str], aging_hours: float) -> list[Review]:
    """The latest review of each study reviewed under one of ``model_uids`` whose images
    the model assessed and whose reader could tell (:func:`latest_reads`), as rows
    (``aging_hours`` is kept for the callers)."""
    if not model_uids:
        return []
    with db.transaction() as session:
        reads = list(session.scalars(_reads_query((Review,), model_uids)))
        session.expunge_all()
    return reads


def read_weights(db: Database, reads: list[Review]) -> list[float]:
    """Each read's weight against verification bias (:func:`screener.site.audit.read_weight`),
    from one SELECT of the reads' audit draws."""
    ids = sorted({r.study_id for r in reads})
    with db.transaction() as session:
        draws = {
            sid: (u, share)
            for sid, u, share in session.execute(
                select(AuditDraw.study_id, AuditDraw.u, AuditDraw.share).where(
                    AuditDraw.study_id.in_(ids)
                )
            )
        }
    return [_weight(r.model_positive, *draws.get(r.study_id, (None, None))) for r in reads]


Curve = tuple[list[int], list[float], list[bool]]


def review_curves(db: Database, aging_hours: float) -> dict[str, Curve]:
    """Per model UID, the reads as labels (1: read as pneumonia), the model's P and its flag
    for the same studies: what the stats page's ROC and calibration pictures are drawn from.
    Studies outside the model's domain are left out (the model gave them no score). One
    SELECT of the reads :func:`latest_reads` takes, without their draws;
    ``aging_hours`` is kept for the callers."""
    curves: dict[str, Curve] = {}
    q = _reads_query(
        (Review.model_uid, Review.probability, Review.model_positive, Review.radiologist_positive),
        None,
        ordered=False,
    )
    with db.transaction() as session:
        for uid, p, model, read in session.execute(q):
            labels, probs, flags = curves.setdefault(uid, ([], [], []))
            labels.append(int(bool(read)))
            probs.append(float(p))
            flags.append(bool(model))
    return curves


def read_model_name(db: Database, model_uid: str) -> str | None:
    """ "name version" of the model whose UID the reads name (the latest read's), or None."""
    with db.transaction() as session:
        row = session.execute(
            select(Review.model_name, Review.model_version)
            .where(Review.model_uid == model_uid)
            .order_by(Review.id.desc())
            .limit(1)
        ).first()
    return f"{row[0]} {row[1]}" if row else None
