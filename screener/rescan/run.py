"""``run_rescan``: find what was missed and queue it.

Three steps, each independent of the others' failure (an unreachable PACS does not stop
the re-queueing):

1. **watch folder** — files left in ``watch.dir`` are taken as the watcher takes them;
2. **backlog** — failed jobs a retry may cure are re-queued, and with ``rescore`` the jobs
   of images scored by another model than the current bundle;
3. **PACS** — a C-FIND for ``rescan.modalities`` studies in the window, and a C-MOVE to our
   listener of each one not handled here; the images then arrive like any C-STORE.

The folder and the backlog go first, so a study they put back in hand is not retrieved.
``dry_run`` changes nothing: it lists the files, jobs and studies concerned (the C-FIND,
a read, still runs). The summary holds counts, UIDs, accession numbers and dates: no PHI.

Inside ``serve`` the rescan is given the daemon's :class:`~screener.ingest.accept.Acceptor`:
the folder's files go through the accept path whose spool ``serve`` has claimed, and what
it queues (taken files, re-queued jobs) wakes the daemon's workers like a C-STORE does.
Alone (``screener rescan``) it opens the database and claims the spool itself
(:func:`screener.ingest.ownership.claimed_acceptor`).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import TYPE_CHECKING, Any

import structlog

from screener.config import Settings
from screener.db import Database
from screener.dicomnet.tls import client_context
from screener.errors import ScreenerError
from screener.rescan import backlog
from screener.rescan.folder import list_folder, take_folder
from screener.rescan.query import PacsClient, StudyMatch, parse_pacs

if TYPE_CHECKING:
    from screener.ingest.accept import Acceptor

log = structlog.get_logger(__name__)

#: C-FIND answers checked against the database per transaction
FIND_CHUNK = 1000


@dataclass(frozen=True)
class StudyRef:
    """A study named without PHI."""

    study_instance_uid: str
    accession_number: str | None
    study_date: str | None
    study_time: str | None


@dataclass
class RescanSummary:
    """What a rescan found and did (or, in a dry run, would do)."""

    since: str
    until: str
    dry_run: bool
    rescore: bool
    pacs: str | None = None
    # (c) watch folder
    folder_files: int = 0
    folder_taken: int = 0
    folder_rejected: int = 0
    folder_left: int = 0
    # (b) backlog
    requeued_failed: list[int] = field(default_factory=list)
    requeued_rescore: list[int] = field(default_factory=list)
    current_model_uid: str | None = None
    # (a) PACS
    studies_found: int = 0
    studies_in_hand: int = 0
    missing: list[StudyRef] = field(default_factory=list)
    retrieved: list[str] = field(default_factory=list)
    retrieve_failed: list[str] = field(default_factory=list)
    move_completed: int = 0
    move_failed: int = 0
    move_warning: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and not self.retrieve_failed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def counts(self) -> dict[str, int]:
        """The numbers, for a log line."""
        return {
            "folder_files": self.folder_files,
            "folder_taken": self.folder_taken,
            "folder_rejected": self.folder_rejected,
            "requeued_failed": len(self.requeued_failed),
            "requeued_rescore": len(self.requeued_rescore),
            "studies_found": self.studies_found,
            "studies_in_hand": self.studies_in_hand,
            "studies_missing": len(self.missing),
            "studies_retrieved": len(self.retrieved),
            "studies_retrieve_failed": len(self.retrieve_failed),
            "move_completed": self.move_completed,
            "move_failed": self.move_failed,
            "move_warning": self.move_warning,
            "errors": len(self.errors),
        }


class _Progress:
    """A line per step on stderr (stdout stays free for ``--json``)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str) -> None:
        if self.enabled:
            print(f"rescan: {text}", file=sys.stderr, flush=True)


def _local(value: datetime) -> datetime:
    """A naive local time (StudyDate/StudyTime are local); naive input is taken as local."""
    return value.astimezone().replace(tzinfo=None) if value.tzinfo else value


def current_model_uid(settings: Settings) -> str:
    """The ``uid`` in the bundle's model.json, read without importing TensorFlow."""
    from screener.model.bundle import read_metadata

    return str(read_metadata(settings.model.bundle)["uid"])


def run_rescan(
    settings: Settings,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    dry_run: bool = False,
    rescore: bool = False,
    query_pacs: bool = True,
    progress: bool = True,
    scan_folder: bool = True,
    acceptor: Acceptor | None = None,
) -> RescanSummary:
    """Find what was missed and queue it; see the module docstring.

    ``since``/``until`` bound the PACS query (default: the last ``rescan.window_hours``
    up to now); naive values are local time. ``scan_folder=False`` leaves the watch folder
    to a running watcher. ``acceptor`` is the daemon's (its database is used, and its
    ``on_queued`` wakes the workers); without one the rescan opens its own.
    """
    end = _local(until) if until else datetime.now()
    start = _local(since) if since else end - timedelta(hours=settings.rescan.window_hours)
    if start > end:
        raise ScreenerError(
            f"rescan window is empty: since {start:%Y-%m-%d %H:%M} is after until {end:%Y-%m-%d %H:%M}"
        )
    say = _Progress(progress)
    summary = RescanSummary(
        since=start.isoformat(timespec="seconds"),
        until=end.isoformat(timespec="seconds"),
        dry_run=dry_run,
        rescore=rescore,
    )
    log.info("rescan_started", since=summary.since, until=summary.until, dry_run=dry_run)
    db = acceptor.db if acceptor is not None else Database(settings.database.url)
    try:
        if scan_folder:
            _folder_step(settings, db, acceptor, summary, say)
        _backlog_step(settings, db, summary, say)
        requeued = not dry_run and (summary.requeued_failed or summary.requeued_rescore)
        if requeued and acceptor is not None and acceptor.on_queued is not None:
            acceptor.on_queued()  # re-queued jobs wake the workers like received ones
        if query_pacs:
            _pacs_step(settings, db, summary, say, start, end)
    finally:
        if acceptor is None:
            db.dispose()
    log.info("rescan_finished", dry_run=dry_run, **summary.counts())
    return summary


def _step_failed(
    summary: RescanSummary, say: _Progress, event: str, step: str, exc: Exception
) -> None:
    """Record a failed step; the other steps still run. A traceback only for the unexpected."""
    if isinstance(exc, ScreenerError):
        log.error(event, error=str(exc))
    else:
        log.exception(event)
    summary.errors.append(f"{step}: {exc}")
    say(f"{step}: failed: {exc}")


def _folder_step(
    settings: Settings,
    db: Database,
    acceptor: Acceptor | None,
    summary: RescanSummary,
    say: _Progress,
) -> None:
    from screener.ingest.ownership import claimed_acceptor

    try:
        if summary.dry_run:
            outcome = list_folder(settings.watch)
        else:
            outcome = take_folder(settings.watch, acceptor or claimed_acceptor(db, settings))
    except Exception as exc:  # step boundary: the other steps still run
        _step_failed(
            summary, say, "rescan_folder_failed", f"watch folder {settings.watch.dir}", exc
        )
        return
    summary.folder_files = outcome.found
    summary.folder_taken = outcome.taken
    summary.folder_rejected = outcome.rejected
    summary.folder_left = outcome.left
    if summary.dry_run:
        say(f"watch folder {settings.watch.dir}: {outcome.found} file(s) would be taken")
        for digest, size in outcome.files:
            say(f"  would take file_sha256 {digest} ({size} bytes)")
    else:
        say(
            f"watch folder {settings.watch.dir}: {outcome.found} file(s), {outcome.taken} taken "
            f"({outcome.rejected} rejected), {outcome.left} left"
        )


def _backlog_step(settings: Settings, db: Database, summary: RescanSummary, say: _Progress) -> None:
    verb = "would re-queue" if summary.dry_run else "re-queued"
    try:
        failed = backlog.retryable_failed_jobs(db)
        ids = [c.job_id for c in failed]
        summary.requeued_failed = (
            ids if summary.dry_run else backlog.requeue_jobs(db, ids, backlog.REASON_RETRY)
        )
        say(f"failed jobs: {verb} {len(summary.requeued_failed)} retryable")
        if summary.dry_run:
            for c in failed:
                say(f"  would retry job {c.job_id} ({c.reason}) {c.sop_instance_uid}")
    except Exception as exc:  # step boundary
        _step_failed(summary, say, "rescan_requeue_failed", "re-queue of failed jobs", exc)
    if not summary.rescore:
        return
    try:
        uid = current_model_uid(settings)
        summary.current_model_uid = uid
        stale = backlog.stale_scored_jobs(db, uid)
        ids = [c.job_id for c in stale]
        summary.requeued_rescore = (
            ids if summary.dry_run else backlog.requeue_jobs(db, ids, backlog.REASON_RESCORE)
        )
        say(
            f"rescore: {verb} {len(summary.requeued_rescore)} job(s) scored by a model other than {uid}"
        )
        if summary.dry_run:
            for c in stale:
                say(f"  would rescore job {c.job_id} {c.sop_instance_uid}")
    except Exception as exc:  # step boundary; a missing bundle is a ModelError
        _step_failed(summary, say, "rescan_rescore_failed", "rescore", exc)


def _pacs_step(
    settings: Settings,
    db: Database,
    summary: RescanSummary,
    say: _Progress,
    start: datetime,
    end: datetime,
) -> None:
    if not settings.rescan.pacs:
        say("PACS: rescan.pacs is empty; not queried")
        return
    try:
        pacs = parse_pacs(settings.rescan.pacs)
        summary.pacs = str(pacs)
        client = PacsClient(
            pacs,
            settings.listener.ae_title,
            settings.listener.network_timeout,
            tls_context=client_context(settings.tls) if settings.rescan.tls else None,
        )
        say(
            f"PACS {pacs}: C-FIND {'/'.join(settings.rescan.modalities)} studies {summary.since} .. {summary.until}"
        )
        missing: list[StudyMatch] = []
        found = 0
        matches = client.iter_studies(start, end, settings.rescan.modalities)
        # checked against the database FIND_CHUNK at a time as the answers arrive: only the
        # missing studies are kept (a PACS may answer with 100,000)
        while chunk := list(islice(matches, FIND_CHUNK)):
            found += len(chunk)
            gone = set(backlog.missing_studies(db, [m.study_instance_uid for m in chunk]))
            missing.extend(m for m in chunk if m.study_instance_uid in gone)
        summary.studies_found = found
    except Exception as exc:  # step boundary: ScreenerError, or a network/database error
        _step_failed(summary, say, "rescan_query_failed", "PACS query", exc)
        return
    missing.sort(key=lambda m: (m.study_date or "", m.study_time or "", m.study_instance_uid))
    summary.missing = [_ref(m) for m in missing]
    summary.studies_in_hand = summary.studies_found - len(missing)
    say(
        f"PACS {pacs}: {summary.studies_found} studies, {summary.studies_in_hand} handled here, {len(missing)} missing"
    )
    if summary.dry_run:
        for m in missing:
            say(
                f"  would retrieve {m.study_instance_uid} accession={m.accession_number or '-'} date={m.study_date or '-'}"
            )
        return
    if missing:
        _retrieve(settings, client, missing, summary, say)


def _retrieve(
    settings: Settings,
    client: PacsClient,
    missing: list[StudyMatch],
    summary: RescanSummary,
    say: _Progress,
) -> None:
    destination = settings.rescan.move_destination or settings.listener.ae_title
    try:
        with client.session() as assoc:
            for n, study in enumerate(missing, 1):
                uid = study.study_instance_uid
                outcome = client.move_study(assoc, uid, destination)
                summary.move_completed += outcome.completed
                summary.move_failed += outcome.failed
                summary.move_warning += outcome.warning
                status = "no response" if outcome.status < 0 else f"0x{outcome.status:04X}"
                (summary.retrieved if outcome.ok else summary.retrieve_failed).append(uid)
                (log.info if outcome.ok else log.warning)(
                    "rescan_study_moved" if outcome.ok else "rescan_study_move_failed",
                    study_instance_uid=uid,
                    move_destination=destination,
                    status=status,
                    completed=outcome.completed,
                    failed=outcome.failed,
                    warning=outcome.warning,
                )
                say(
                    f"C-MOVE {n}/{len(missing)} {uid} -> {destination}: {status}, "
                    f"{outcome.completed} completed, {outcome.failed} failed, {outcome.warning} warning"
                )
                if outcome.status < 0 or not assoc.is_established:
                    raise ScreenerError(
                        f"the association with PACS {client.pacs} was lost during C-MOVE"
                    )
    except Exception as exc:  # step boundary
        _step_failed(summary, say, "rescan_retrieve_failed", "PACS retrieve", exc)


def _ref(match: StudyMatch) -> StudyRef:
    return StudyRef(
        match.study_instance_uid, match.accession_number, match.study_date, match.study_time
    )


def render_text(summary: RescanSummary) -> str:
    """The closing summary of ``screener rescan``."""
    would = "would be " if summary.dry_run else ""
    lines = [
        f"rescan {summary.since} .. {summary.until}{' (dry run: nothing changed)' if summary.dry_run else ''}",
        f"  watch folder:   {summary.folder_files} file(s), {summary.folder_taken} taken, "
        f"{summary.folder_rejected} rejected, {summary.folder_left} left",
        f"  failed jobs:    {len(summary.requeued_failed)} {would}re-queued",
    ]
    if summary.rescore:
        lines.append(
            f"  rescore:        {len(summary.requeued_rescore)} {would}re-queued "
            f"(current model {summary.current_model_uid or 'unknown'})"
        )
    if summary.pacs:
        lines += [
            f"  PACS {summary.pacs}: {summary.studies_found} studies found, "
            f"{summary.studies_in_hand} handled here, {len(summary.missing)} missing",
        ]
        if summary.dry_run:
            lines.append(f"  retrieve:       {len(summary.missing)} studies would be retrieved")
        else:
            lines.append(
                f"  retrieved:      {len(summary.retrieved)} studies, {len(summary.retrieve_failed)} "
                f"failed; sub-operations {summary.move_completed} completed, "
                f"{summary.move_failed} failed, {summary.move_warning} warning"
            )
    lines += [f"  error: {e}" for e in summary.errors]
    return "\n".join(lines)
