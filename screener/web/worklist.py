"""The worklist page (the order and filters of ``screener worklist``, and the studies that
get no score) and the search box that finds one study."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from screener.db import utcnow
from screener.errors import ScreenerError
from screener.views.wording import STATUSES
from screener.web.context import page, state_of, when

SINCE = {"": None, "1h": 1, "24h": 24, "7d": 24 * 7, "30d": 24 * 30}
#: the web worklist's status filters: the CLI's, and the studies that get no score
WEB_STATUSES = (*STATUSES, "skipped")
SORT_LABELS = {
    "priority": "flagged first, then priority",
    "received": "newest first",
    "probability": "highest P first",
    "accession": "accession number",
}


async def worklist_page(request: Request, user: str) -> Response:
    from screener.views.wording import flag_text, short_uid, status_text
    from screener.views.worklist import SORTS, unscored_studies, worklist

    web = state_of(request)
    params = request.query_params
    problems: list[str] = []
    status = params.get("status", "unread")
    if status not in WEB_STATUSES:
        problems.append(f"Status is one of {', '.join(WEB_STATUSES)}: showing unread.")
        status = "unread"
    since_key = params.get("since", "")
    if since_key not in SINCE:
        problems.append("Received within is one of the listed choices: showing any time.")
        since_key = ""
    hours = SINCE[since_key]
    since = utcnow() - timedelta(hours=hours) if hours else None
    min_prob = _min_prob(params.get("min_prob", ""), problems)
    sort = params.get("sort", "priority")
    if sort not in SORTS:
        problems.append(f"Order is one of {', '.join(SORTS)}: showing by priority.")
        sort = "priority"
    search = params.get("q", "").strip()[:64]
    unscored: list[Any] = []
    rows: list[Any] = []
    if status == "skipped":
        unscored = await run_in_threadpool(lambda: unscored_studies(web.db, since=since))
    else:
        rows = await run_in_threadpool(
            lambda: worklist(
                web.db,
                aging_hours=web.aging,
                since=since,
                status=status,
                min_prob=min_prob,
                limit=200,
                sort=sort,
                search=search or None,
            )
        )
    return page(
        request,
        "worklist.html",
        rows=rows,
        unscored=unscored,
        flag=flag_text,
        status_of=status_text,
        status=status,
        statuses=WEB_STATUSES,
        since=since_key,
        since_choices=list(SINCE),
        min_prob="" if min_prob is None else min_prob,
        sort=sort,
        sorts=SORT_LABELS,
        search=search,
        problems=problems,
        when=when,
        short_uid=short_uid,
        status_code=200 if not problems else 400,
    )


def _min_prob(typed: str, problems: list[str]) -> float | None:
    """The Minimum P filter: a probability, or None (with a problem said when mistyped)."""
    typed = typed.strip()
    if not typed:
        return None
    try:
        min_prob: float | None = float(typed)
    except ValueError:
        min_prob = None
    if min_prob is None or not 0.0 <= min_prob <= 1.0:
        problems.append(
            "Minimum P is a probability between 0 and 1 (e.g. 0.5): no minimum applied."
        )
        return None
    return min_prob


async def find(request: Request, user: str) -> Response:
    """The search box: a study by accession number, Study Instance UID (or its start or
    end), or short id; several matches list them on the worklist."""
    from screener.views.worklist import find_study

    db = state_of(request).db
    term = request.query_params.get("q", "").strip()[:64]
    if not term:
        return RedirectResponse("/worklist", status_code=303)

    def found() -> int | None:
        with db.transaction() as session:
            try:
                return find_study(session, term).id
            except ScreenerError:
                return None

    study_id = await run_in_threadpool(found)
    if study_id is not None:
        return RedirectResponse(f"/study/%23{study_id}", status_code=303)
    return RedirectResponse(f"/worklist?status=all&q={quote(term)}", status_code=303)
