"""What `screener status` reports: queue depth by state, the oldest waiting job, results by
label (flagged, not flagged, not assessed), why jobs were skipped (``population:age``
among them), rejected or failed, and the latest refusals. No PHI: UIDs and reasons only."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from screener.config import Settings
from screener.db import (
    OUTSIDE_DOMAIN,
    AuditEvent,
    Database,
    Instance,
    Job,
    JobState,
    utcnow,
)
from screener.db.engine import as_utc
from screener.db.tallies import by_state, by_state_reason, read_tallies
from screener.errors import ScreenerError
from screener.report.ledger import STATES as EXPORT_STATES
from screener.report.ledger import waiting_by_destination
from screener.work.retention import audit_totals

#: Audit events that account for what was received but made no new job.
RECEIVED_EVENTS = {
    "duplicate_ignored": "duplicates_ignored",
    "changed_duplicate_ignored": "changed_resends_ignored",
    "instance_replaced": "changed_resends_replaced",
    "store_refused": "stores_refused",
    "association_rejected": "associations_refused",
}

#: What each counter of a :class:`StatusReport` means, in words, by section (the web's status
#: page shows these; ``screener status`` prints the keys). A key missing here is shown with
#: its underscores as spaces (:func:`counter_label`).
COUNTER_LABELS: dict[str, dict[str, str]] = {
    "counts": {
        "queued": "waiting to be scored",
        "processing": "being scored now",
        "done": "done: scored",
        "skipped": "skipped: not for the model (selection, population)",
        "rejected": "rejected: not a usable image",
        "failed": "failed: an error while scoring",
    },
    "results": {
        "pneumonia": "flagged for a second read",
        "normal": "not flagged",
        OUTSIDE_DOMAIN: "not assessed: outside the model's domain",
    },
    "received": {
        "instances": "images received",
        "duplicates_ignored": "identical resends ignored",
        "changed_resends_ignored": "changed resends ignored",
        "changed_resends_replaced": "changed resends that replaced the image",
        "stores_refused": "images refused",
        "associations_refused": "associations refused",
    },
    "restarts": {"total": "in all", "last_24h": "in the last 24 hours"},
    "exports": {
        "pending": "waiting to be sent",
        "delivered": "delivered",
        "dead": "dead-lettered: sending gave up",
        "shadow": "kept, not sent: built while the site was silent (shadow)",
    },
}


def counter_label(section: str, key: str) -> str:
    """``key`` of the report's ``section`` (counts, results, received, restarts, exports) in
    words."""
    return COUNTER_LABELS.get(section, {}).get(key) or key.replace("_", " ")


@dataclass
class StatusReport:
    counts: dict[str, int]
    oldest_queued_at: datetime | None
    oldest_queued_age_seconds: float | None
    received: dict[str, int] = field(default_factory=dict)  # instances, duplicates, refusals
    exports: dict[str, int] = field(default_factory=dict)  # deliveries by state
    # each destination: channel (dimse, stow, hl7, fhir), pending and dead deliveries
    destinations: list[dict[str, Any]] = field(default_factory=list)
    reasons: dict[str, dict[str, int]] = field(default_factory=dict)  # state -> reason -> n
    recent_errors: list[dict[str, Any]] = field(default_factory=list)
    recent_refusals: list[dict[str, Any]] = field(default_factory=list)
    # processes restarted by the daemon's supervisor: total, last 24 h, the latest ones
    restarts: dict[str, int] = field(default_factory=dict)
    # scored frames by label: pneumonia (flagged), normal, outside_domain (not assessed)
    results: dict[str, int] = field(default_factory=dict)
    recent_restarts: list[dict[str, Any]] = field(default_factory=list)
    # serve and worker processes by their heartbeats: running, stopped, silent (killed?)
    processes: list[dict[str, Any]] = field(default_factory=list)
    # running listeners open to any caller without TLS (screener.ingest.exposure), by process
    exposed_listeners: list[dict[str, Any]] = field(default_factory=list)
    # silent start or live, and why (screener.site.mode.SiteMode.as_dict); given settings only
    site: dict[str, Any] = field(default_factory=dict)
    # the drift monitor's latest window, from a running serve's heartbeat (screener.monitor)
    drift: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["oldest_queued_at"] = self.oldest_queued_at.isoformat() if self.oldest_queued_at else None
        return d


def configured_destinations(settings: Settings | None) -> list[str]:
    """Every destination the settings name, over every channel (none when they cannot be read:
    the daemon itself refuses to start then, and says why)."""
    from screener.report.destinations import result_targets

    if settings is None:
        return []
    try:
        return [target.address for target in result_targets(settings)]
    except ScreenerError:
        return []


def build_report(
    db: Database,
    limit: int = 10,
    settings: Settings | None = None,
    destinations: list[str] | None = None,
) -> StatusReport:
    """The report; ``destinations`` (default: those ``settings`` name) are listed even idle."""
    from screener.runtime.heartbeat import processes
    from screener.site.mode import site_mode

    seen = [p.as_dict() for p in processes(db)]
    site = site_mode(db, settings).as_dict() if settings is not None else {}
    with db.transaction() as session:
        # every count from the counts kept on write (screener.db.tallies), not from the rows
        kept = read_tallies(session)
        counts = {state.value: 0 for state in JobState} | by_state(kept, "jobs")
        exports = dict.fromkeys(EXPORT_STATES, 0) | by_state(kept, "exports")
        configured = configured_destinations(settings) if destinations is None else destinations
        waiting = waiting_by_destination(session, configured)
        oldest = session.scalar(
            select(func.min(Job.created_at)).where(Job.state == JobState.QUEUED)
        )
        finished = (JobState.SKIPPED, JobState.REJECTED, JobState.FAILED)
        reason_rows = [
            (state, reason, n)
            for (state, reason), n in sorted(by_state_reason(kept, "jobs").items())
            if state in finished
        ]
        errors = session.execute(
            select(
                Job.id,
                Job.state,
                Job.reason,
                Job.last_error,
                Job.updated_at,
                Instance.sop_instance_uid,
                Job.source_path,
            )
            .outerjoin(Instance, Job.instance_id == Instance.id)
            .where(Job.state.in_([JobState.FAILED, JobState.REJECTED]))
            .order_by(Job.updated_at.desc())
            .limit(limit)
        ).all()
        refusals = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.event.in_(["store_refused", "association_rejected"]))
            .order_by(AuditEvent.id.desc())
            .limit(limit)
        ).all()
        # rows kept plus rows audit retention deleted (counted in audit_counts)
        events = by_state(kept, "audit_events")
        received_events = audit_totals(session, list(RECEIVED_EVENTS), events)
        restart_rows = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.event == "process_restarted")
            .order_by(AuditEvent.id.desc())
            .limit(limit)
        ).all()
        last_24h = session.scalar(
            select(func.count()).where(
                AuditEvent.event == "process_restarted",
                AuditEvent.at >= utcnow() - timedelta(hours=24),
            )
        )
        total = audit_totals(session, ["process_restarted"], events)["process_restarted"]
        restarts = {"total": total, "last_24h": int(last_24h or 0)}
        received = {"instances": by_state(kept, "instances").get("", 0)}
        received.update(
            {label: int(received_events.get(ev, 0)) for ev, label in RECEIVED_EVENTS.items()}
        )
        results = by_state(kept, "results")
        reasons: dict[str, dict[str, int]] = {}
        for state, reason, n in reason_rows:
            reasons.setdefault(str(state), {})[reason or "(none)"] = int(n)
        report = StatusReport(
            processes=seen,
            drift=latest_drift(seen),
            exposed_listeners=exposed_listeners(seen),
            site=site,
            counts=counts,
            oldest_queued_at=as_utc(oldest) if oldest else None,
            oldest_queued_age_seconds=(utcnow() - as_utc(oldest)).total_seconds()
            if oldest
            else None,
            received=received,
            exports=exports,
            destinations=waiting,
            reasons=reasons,
            recent_errors=[
                {
                    "job_id": r.id,
                    "state": r.state,
                    "reason": r.reason,
                    "error": r.last_error,
                    "at": as_utc(r.updated_at).isoformat(),
                    "sop_instance_uid": r.sop_instance_uid,
                    "path": r.source_path,
                }
                for r in errors
            ],
            recent_refusals=[
                {
                    "event": a.event,
                    "reason": a.reason,
                    "message": a.message,
                    "at": as_utc(a.at).isoformat(),
                    "calling_ae_title": a.calling_ae_title,
                    "sop_instance_uid": a.sop_instance_uid,
                }
                for a in refusals
            ],
            restarts=restarts,
            results=results,
            recent_restarts=[
                {"at": as_utc(a.at).isoformat(), "process": a.reason, "why": a.message}
                for a in restart_rows
            ],
        )
    return report


def latest_drift(procs: list[dict[str, Any]]) -> dict[str, Any]:
    """The newest drift window reported by a running serve process (empty: none)."""
    running = [
        p
        for p in procs
        if p["component"] == "serve" and p["state"] == "running" and p["details"].get("drift")
    ]
    if not running:
        return {}
    newest = min(running, key=lambda p: p["seconds_since_beat"])
    return dict(newest["details"]["drift"])


def exposed_listeners(procs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Running serve processes whose heartbeat says their listener is open to any caller."""
    return [
        {"process_host": p["host"], "pid": p["pid"], **p["details"]["listener_exposure"]}
        for p in procs
        if p["component"] == "serve"
        and p["state"] == "running"
        and p["details"].get("listener_exposure", {}).get("open")
    ]


def render_exposure(exposed: list[dict[str, Any]]) -> list[str]:
    return [
        f"WARNING: serve on {e['process_host']} pid {e['pid']} listens on {e['host']}:{e['port']} "
        "for any calling AE title without TLS: anyone who reaches it can store studies and have "
        "SRs sent to PACS. Set listener.allowed_calling_aets and listener.tls, or listener.host "
        "= 127.0.0.1 (README: Security)"
        for e in exposed
    ]


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def render_processes(procs: list[dict[str, Any]]) -> list[str]:
    """Whether screener runs: one line per serve/worker process seen in the last week."""
    serving = [p for p in procs if p["component"] == "serve" and p["state"] == "running"]
    if serving:
        head = f"screener: RUNNING ({len(serving)} serve process{'es' if len(serving) > 1 else ''})"
    elif not procs:
        head = "screener: NOT RUNNING (no serve or worker process has ever reported here)"
    elif workers := [p for p in procs if p["state"] == "running"]:
        head = (
            f"screener: NO SERVE PROCESS RUNNING ({len(workers)} worker process"
            f"{'es' if len(workers) > 1 else ''} running: nothing receives or delivers)"
        )
    else:
        last = max(procs, key=lambda p: p["beat_at"])
        how = (
            "stopped cleanly"
            if last["state"] == "stopped"
            else "no clean stop: killed, crashed or cut off from the database"
        )
        head = f"screener: NOT RUNNING (last heartbeat {_ago(last['seconds_since_beat'])}, {how})"
    lines = [head]
    for p in procs:
        if p["state"] == "stopped" and p["seconds_since_beat"] > 3600:
            continue  # old clean stops: noise
        d = p["details"]
        bits = [f"{p['component']} on {p['host']} pid {p['pid']}: {p['state'].upper()}"]
        bits.append(f"heartbeat {_ago(p['seconds_since_beat'])}")
        for key, label in (
            ("listener", "listening"),
            ("model", "model"),
            ("workers_alive", "workers"),
            ("spool_free_mb", "spool free MB"),
            ("last_c_store", "last C-STORE"),
            ("device", "device"),
        ):
            if d.get(key) is not None:
                value = str(d[key])
                bits.append(f"{label} {value[:19] if key == 'last_c_store' else value}")
        lines.append("  " + "; ".join(bits))
    return lines


def render_text(report: StatusReport) -> str:
    lines = render_processes(report.processes)
    if report.site:
        lines.append(f"site: {report.site['line']}")
    if report.drift:
        lines.append(f"drift: {report.drift['line']}")
    lines += render_exposure(report.exposed_listeners)
    lines.append("received:")
    lines += [f"  {what:<24} {n:>7}" for what, n in report.received.items()]
    lines.append("queue:")
    lines += [f"  {state:<11} {n:>7}" for state, n in report.counts.items()]
    if report.oldest_queued_at is not None and report.oldest_queued_age_seconds is not None:
        lines.append(
            f"oldest queued job: {report.oldest_queued_at:%Y-%m-%d %H:%M:%S}Z "
            f"({report.oldest_queued_age_seconds:.0f} s waiting)"
        )
    else:
        lines.append("oldest queued job: none waiting")
    if report.results:
        by_label = report.results
        lines.append(
            f"results: {by_label.get('pneumonia', 0)} flagged, {by_label.get('normal', 0)} not "
            f"flagged, {by_label.get(OUTSIDE_DOMAIN, 0)} not assessed (outside the model's domain)"
        )
    for state in ("skipped", "rejected", "failed"):
        by_reason = report.reasons.get(state)
        if by_reason:
            lines.append(f"{state} by reason:")
            lines += [f"  {reason:<32} {n:>6}" for reason, n in sorted(by_reason.items())]
    if any(report.exports.values()) or report.destinations:
        lines.append("deliveries (SRs, assessments, HL7, FHIR):")
        lines += [f"  {state:<11} {n:>7}" for state, n in report.exports.items()]
        for d in report.destinations:
            lines.append(
                f"  {d['channel']:<5} {d['destination']:<40} pending {d['pending']:>5}  "
                f"dead {d['dead']:>5}"
            )
        if report.exports.get("dead"):
            lines.append("  see: screener exports list --state dead; screener exports retry")
    if report.recent_errors:
        lines.append("last errors:")
        for e in report.recent_errors:
            what = e["sop_instance_uid"] or e["path"] or "-"
            lines.append(
                f"  {e['at'][:19]}  job {e['job_id']} {e['state']} {e['reason']}: {e['error']}  [{what}]"
            )
    if report.restarts.get("total"):
        lines.append(
            f"process restarts: {report.restarts['total']} "
            f"({report.restarts.get('last_24h', 0)} in the last 24 h)"
        )
        for r in report.recent_restarts:
            lines.append(f"  {r['at'][:19]}  {r['process']}: {r['why']}")
    if report.recent_refusals:
        lines.append("last refusals:")
        for r in report.recent_refusals:
            lines.append(
                f"  {r['at'][:19]}  {r['event']} {r['reason']} from {r['calling_ae_title'] or '-'}: {r['message']}"
            )
    return "\n".join(lines)
