"""The words the worklist and the stats are shown in, the same in ``screener worklist``,
``screener stats`` and the web pages: the read-status filters, the flag and status columns,
shortened UIDs, and the line of figures weighted for verification bias."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from screener.views.worklist import StudyScore

#: The worklist's read-status filters (``--status``; the web worklist offers the same).
STATUSES = ("unread", "reviewed", "all")
#: The end of a Study Instance UID kept in the table: ``show``/``review`` accept it as is.
UID_TAIL = 18


def short_uid(uid: str) -> str:
    """The end of a UID (the part that differs between studies), marked as shortened."""
    return uid if len(uid) <= UID_TAIL + 1 else "…" + uid[-UID_TAIL:]


def status_text(row: StudyScore) -> str:
    """Unread, reopened, or the read in the reader's words with its agreement: "pneumonia
    (disagrees)" on an unflagged study."""
    if row.reopened:
        return "REOPENED"
    if row.finding is None:
        return row.verdict or "unread"
    from screener.views.worklist import FINDINGS

    words = FINDINGS.get(row.finding, row.finding)
    return words if row.finding == "cannot_tell" else f"{words} ({row.verdict}s)"


def flag_text(row: StudyScore) -> str:
    """The worklist's flag column: a second read, or why the model gave no assessment."""
    if row.flagged:
        return "SECOND READ"
    if row.audit:
        return "AUDIT READ"  # drawn at random among the unflagged (README, Audit reads)
    if row.assessment == "outside_domain":
        return "NOT ASSESSED"  # outside the model's domain (README)
    if row.assessment == "partly_outside_domain":
        return "part assessed"
    return ""


def with_interval(value: float | None, interval: tuple[float, float] | None) -> str:
    """``80.0% (56-94)``: the point and its 95 % Wilson interval, in percent."""
    if value is None or interval is None:
        return "-"
    return f"{100 * value:.1f}% ({100 * interval[0]:.0f}-{100 * interval[1]:.0f})"


def weighted_line(s: Any) -> str:
    """The figures free of verification bias (screener.site.audit), and what they rest on."""
    sens, sens_ci, sens_n = s.weighted.get("sensitivity", (None, None, 0.0))
    spec, spec_ci, spec_n = s.weighted.get("specificity", (None, None, 0.0))
    basis = f"{s.audit_reads} audit read(s) of unflagged studies weighted by 1/share" + (
        f", {s.undrawn_reads} unflagged read(s) not drawn left out" if s.undrawn_reads else ""
    )
    if not s.audit_reads:
        return (
            f"{s.model_name} {s.model_version}: weighted for verification bias: no audit read "
            "yet, so no unbiased sensitivity or specificity (read the studies marked AUDIT READ)"
        )
    return (
        f"{s.model_name} {s.model_version}: weighted for verification bias ({basis}): "
        f"sensitivity {with_interval(sens, sens_ci)} (effective n {sens_n:.0f}), "
        f"specificity {with_interval(spec, spec_ci)} (effective n {spec_n:.0f})"
    )
