"""Silent start (shadow mode) and going live: the rule, decided in one place.

In shadow everything runs -- scoring, the worklist, the web, metrics -- but no SR or
heatmap capture leaves for PACS. The *effective* mode comes from the database
(``site_events``) and the file's ``site.mode`` together:

* ``site.mode = "shadow"`` (what deploy/ ships): **live only when the latest site event is
  a go-live for the bundle UID now loaded** (``model.bundle``'s ``model.json``). Anything
  else is shadow: no event yet, a ``screener site shadow`` since, or a go-live of another
  bundle -- a new bundle (a site calibration, an upgrade) starts silent again and must be
  taken live itself.
* ``site.mode = "live"`` (the development ``screener.toml``): live, unless the latest site
  event is a ``screener site shadow``.

The same rule is applied, reading the database each time, where it matters:

* the worker, in the transaction that stores a result (:func:`plan_exports` in
  :mod:`screener.report.export`), for the bundle that scored it: a result scored in shadow
  gets its exports in state ``shadow``, which the exporter never picks. Going live does not
  send them: only results scored after it are sent (``screener site send-shadow`` sends
  them deliberately);
* the exporter, at each poll, for the bundle it is configured with: in shadow it sends
  nothing, not even rows planned while the site was live (after ``screener site shadow``),
  so a running daemon follows a go-live or a return to shadow without a restart;
* ``screener status``, ``screener worklist``, the web pages and the start-up log
  (``site_mode`` event) say which it is in one line (:attr:`SiteMode.line`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from screener.config import Settings
from screener.db import Database, utcnow
from screener.db.engine import as_utc
from screener.db.models import SiteEvent
from screener.errors import ModelError, ScreenerError

log = structlog.get_logger(__name__)

Event = Literal["go_live", "shadow"]
LIVE = "live"
#: site_events.event of `screener site go-live` and `screener site shadow` (SHADOW is also a mode)
GO_LIVE: Event = "go_live"
SHADOW: Event = "shadow"

#: What every page, `status` and `worklist` say while the site is silent.
SILENT_START = "SILENT START: screener scores but sends nothing to PACS"


class SiteError(ScreenerError):
    """A site command cannot be carried out (no bundle to take live, no operator named)."""


@dataclass(frozen=True)
class Bundle:
    """The facts of a model bundle that a site event records: its identity and operating point."""

    uid: str
    name: str
    version: str
    threshold: float
    target_sensitivity: float | None

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> Bundle:
        target = meta.get("target_sensitivity")
        return cls(
            uid=str(meta["uid"]),
            name=str(meta["name"]),
            version=str(meta["version"]),
            threshold=float(meta["threshold"]),
            target_sensitivity=float(target) if isinstance(target, int | float) else None,
        )


def loaded_bundle(settings: Settings) -> Bundle:
    """The bundle ``model.bundle`` names; :class:`ModelError` naming the path if unreadable."""
    from screener.model.bundle import read_metadata

    if not settings.model.bundle:
        raise ModelError("model.bundle is empty and no bundle is shipped with this screener")
    try:
        return Bundle.from_metadata(read_metadata(settings.model.bundle))
    except (OSError, TypeError, ValueError) as exc:
        raise ModelError(
            f"model bundle {settings.model.bundle!r} cannot be read: {type(exc).__name__}"
        ) from exc


def loaded_bundle_uid(settings: Settings) -> str | None:
    """The loaded bundle's UID, or None when it cannot be read (then a shadow site stays silent)."""
    try:
        return loaded_bundle(settings).uid
    except ModelError:
        return None


@dataclass(frozen=True)
class SiteEventRecord:
    """One row of ``site_events`` as status, the web and the commands show it (no PHI)."""

    id: int
    at: datetime
    event: str
    operator: str
    note: str | None
    bundle_uid: str
    bundle_name: str
    bundle_version: str
    threshold: float
    target_sensitivity: float | None

    @classmethod
    def of(cls, row: SiteEvent) -> SiteEventRecord:
        return cls(
            id=row.id,
            at=as_utc(row.at),
            event=row.event,
            operator=row.operator,
            note=row.note,
            bundle_uid=row.bundle_uid,
            bundle_name=row.bundle_name,
            bundle_version=row.bundle_version,
            threshold=float(row.threshold),
            target_sensitivity=row.target_sensitivity,
        )

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in vars(self).items()}

    @property
    def operating_point(self) -> str:
        target = (
            f", target sensitivity {self.target_sensitivity:.2f}"
            if self.target_sensitivity is not None
            else ""
        )
        return f"threshold {self.threshold:.4f}{target}"


@dataclass(frozen=True)
class SiteMode:
    """The effective mode for one bundle, and why."""

    mode: str  # SHADOW or LIVE
    configured: str  # site.mode in the settings
    bundle_uid: str | None
    #: the latest site event (it may concern another bundle), None when there is none
    event: SiteEventRecord | None

    @property
    def live(self) -> bool:
        return self.mode == LIVE

    @property
    def since(self) -> datetime | None:
        """When the latest event that made this mode was recorded (None: the file's default)."""
        if self.event is None:
            return None
        if self.live and self.event.event == GO_LIVE and self.event.bundle_uid == self.bundle_uid:
            return self.event.at
        if not self.live and self.event.event == SHADOW:
            return self.event.at
        return None

    @property
    def why(self) -> str:
        """Why the site is in this mode, in a few words."""
        e = self.event
        if self.live:
            if e is not None and e.event == GO_LIVE and e.bundle_uid == self.bundle_uid:
                return (
                    f"since {e.at:%Y-%m-%d %H:%M} UTC, go-live by {e.operator}, "
                    f"{e.bundle_name} {e.bundle_version}, {e.operating_point}"
                )
            return "site.mode = live in the configuration"
        if e is not None and e.event == SHADOW:
            return f"back to shadow since {e.at:%Y-%m-%d %H:%M} UTC by {e.operator}"
        if e is not None and e.event == GO_LIVE:
            return "the bundle now loaded has not gone live: screener site go-live"
        return "site.mode = shadow, not gone live yet: screener site go-live"

    @property
    def line(self) -> str:
        """The one line status, worklist, web and log show."""
        if self.live:
            return f"LIVE ({self.why}): SRs go to PACS"
        return f"{SILENT_START} ({self.why})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "configured": self.configured,
            "bundle_uid": self.bundle_uid,
            "since": self.since.isoformat() if self.since else None,
            "line": self.line,
            "why": self.why,
            "event": self.event.as_dict() if self.event else None,
        }


def decide(configured: str, event: SiteEventRecord | None, bundle_uid: str | None) -> SiteMode:
    """The rule of the module docstring, on the latest site event (None: there is none)."""
    if configured == LIVE:
        live = event is None or event.event != SHADOW
    else:
        live = (
            event is not None
            and event.event == GO_LIVE
            and bundle_uid is not None
            and event.bundle_uid == bundle_uid
        )
    return SiteMode(LIVE if live else SHADOW, configured, bundle_uid, event)


def latest_event(session: Session) -> SiteEventRecord | None:
    """The most recent site event, or None (read without flushing what ``session`` holds)."""
    with session.no_autoflush:  # a worker's batch of results is inserted at its commit, at once
        row = session.scalars(select(SiteEvent).order_by(SiteEvent.id.desc()).limit(1)).first()
    return SiteEventRecord.of(row) if row is not None else None


def mode_in(session: Session, settings: Settings, bundle_uid: str | None) -> SiteMode:
    """The effective mode for ``bundle_uid``, read in ``session`` (e.g. the result's
    transaction) once per session: a worker's batch is decided as one, at its transaction's
    snapshot."""
    key = ("screener.site.mode", bundle_uid)
    mode = session.info.get(key)
    if not isinstance(mode, SiteMode):
        mode = session.info[key] = decide(settings.site.mode, latest_event(session), bundle_uid)
    return mode


def site_mode(db: Database, settings: Settings, bundle_uid: str | None = None) -> SiteMode:
    """The effective mode now, for ``bundle_uid`` (default: the bundle ``model.bundle`` names)."""
    uid = bundle_uid if bundle_uid is not None else loaded_bundle_uid(settings)
    with db.transaction() as session:
        return mode_in(session, settings, uid)


class ModeCache:
    """The site's mode read at most every ``ttl`` seconds (the web's pages show it on each)."""

    def __init__(self, db: Database, settings: Settings, ttl: float = 5.0) -> None:
        self.db, self.settings, self.ttl = db, settings, ttl
        self.bundle_uid = loaded_bundle_uid(settings)
        self._lock = threading.Lock()
        self._mode: SiteMode | None = None
        self._read_at = 0.0

    def get(self) -> SiteMode | None:
        """The mode, or the last one read (None: never read) when the database cannot answer."""
        with self._lock:
            now = time.monotonic()
            if self._mode is None or now - self._read_at >= self.ttl:
                try:
                    self._mode = site_mode(self.db, self.settings, self.bundle_uid)
                except Exception as exc:  # boundary: a page (an error page too) must still render
                    log.warning("site_mode_unread", error=type(exc).__name__)
                    return self._mode
                self._read_at = now
            return self._mode


def go_live_record(db: Database) -> SiteEventRecord | None:
    """The most recent go-live, whatever came after it (the web's stats page shows it)."""
    with db.transaction() as session:
        row = session.scalars(
            select(SiteEvent).where(SiteEvent.event == GO_LIVE).order_by(SiteEvent.id.desc())
        ).first()
        return SiteEventRecord.of(row) if row is not None else None


def history(db: Database, limit: int = 20) -> list[SiteEventRecord]:
    """The site events, newest first."""
    with db.transaction() as session:
        rows = session.scalars(select(SiteEvent).order_by(SiteEvent.id.desc()).limit(limit))
        return [SiteEventRecord.of(r) for r in rows]


def record(
    db: Database, settings: Settings, event: Event, operator: str, note: str | None = None
) -> SiteEventRecord:
    """Record that ``operator`` took the loaded bundle live (``go_live``) or the site back to
    ``shadow``, now (UTC), with the bundle's UID, name, version and operating point."""
    operator = operator.strip()
    if not operator or len(operator) > 64:
        raise SiteError(
            f"operator {operator!r} is invalid: name who does it, 1-64 characters (--operator NAME)"
        )
    bundle = loaded_bundle(settings)
    with db.transaction() as session:
        row = SiteEvent(
            at=utcnow(),
            event=event,
            operator=operator,
            note=note or None,
            bundle_uid=bundle.uid,
            bundle_name=bundle.name[:64],
            bundle_version=bundle.version[:32],
            threshold=bundle.threshold,
            target_sensitivity=bundle.target_sensitivity,
        )
        session.add(row)
        session.flush()
        saved = SiteEventRecord.of(row)
    log.info(
        "site_event_recorded",
        kind=event,
        operator=operator,
        bundle_uid=bundle.uid,
        threshold=bundle.threshold,
    )
    return saved


def send_shadow(db: Database, operator: str) -> int:
    """Set every export built in shadow pending, due now: the deliberate sending of SRs that
    going live does not send. They leave once the site is live (the exporter's rule). Recorded
    in the audit trail with ``operator``; returns how many."""
    from sqlalchemy import CursorResult, update

    from screener.db import AuditEvent, Export

    operator = operator.strip()
    if not operator or len(operator) > 64:
        raise SiteError(f"operator {operator!r} is invalid: 1-64 characters (--operator NAME)")
    with db.transaction() as session:
        outcome = session.execute(
            update(Export)
            .where(Export.state == SHADOW)
            .values(state="pending", attempts=0, next_attempt_at=utcnow())
        )
        count = int(outcome.rowcount) if isinstance(outcome, CursorResult) else 0
        session.add(
            AuditEvent(
                at=utcnow(),
                event="shadow_exports_released",
                message=f"{count} SR deliveries built in shadow set pending",
                actor=operator,
            )
        )
    log.warning("shadow_exports_released", count=count, operator=operator)
    return count
