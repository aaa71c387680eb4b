"""The study page: its images (each through screener's pixel pipeline in the model process,
the Grad-CAM overlay on request), the score against the threshold with the model, SR
deliveries and earlier reads; and the read recorded as ``screener review`` records it, with
the user as reader. Images are read from the spool by the database's path, never by a name
from the request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from screener.db import Instance
from screener.errors import ScreenerError
from screener.views.worklist import MAX_NOTE
from screener.web.context import WebState, form_checked, page, state_of, when
from screener.web.modelwork import ModelWorkFailed

log = structlog.get_logger(__name__)


async def study_page(request: Request, user: str) -> Response:
    from screener.imaging.window import WINDOW_PRESETS
    from screener.views.worklist import FINDINGS, next_unread, study_detail

    web = state_of(request)
    key = request.path_params["key"]
    try:
        detail = await run_in_threadpool(study_detail, web.db, key, web.aging)
    except ScreenerError as exc:
        return PlainTextResponse(str(exc), status_code=404)
    # "your read is recorded" only when this user's read with that finding is the latest
    recorded = request.query_params.get("recorded")
    latest = detail.reviews[-1] if detail.reviews else None
    if not (latest and latest["reader"] == user and latest["finding"] == recorded):
        latest = None
    following = (
        await run_in_threadpool(next_unread, web.db, web.aging, detail.short_id) if latest else None
    )
    return page(
        request,
        "study.html",
        d=detail,
        key=key,
        recorded=latest,
        next_unread=following,
        findings=FINDINGS,
        max_note=MAX_NOTE,
        when=when,
        window_presets=WINDOW_PRESETS,
        error=None,
    )


async def review(request: Request, user: str) -> Response:
    form = await form_checked(request)
    key = request.path_params["key"]
    return await record(request, user, key, form.get("finding"), form.get("note"))


async def record(request: Request, user: str, key: str, finding: Any, note: Any) -> Response:
    """A read recorded (database work in a thread), then the study page that says so."""
    from screener.views.worklist import FINDINGS, NotReadable, record_read

    web = state_of(request)
    finding = str(finding or "")
    text = str(note or "").strip() or None
    if finding not in FINDINGS:
        return PlainTextResponse(
            "choose what the film shows: pneumonia, no pneumonia or cannot tell",
            status_code=400,
        )
    try:
        read = await run_in_threadpool(
            record_read, web.db, key, finding, text, web.aging, user, web.settings
        )
    except NotReadable as exc:
        return PlainTextResponse(str(exc), status_code=400)
    except ScreenerError as exc:
        return PlainTextResponse(str(exc), status_code=404)
    log.info("web_review", study_id=read.short_id, verdict=read.review.verdict, reader=user)
    return RedirectResponse(f"/study/%23{read.short_id}?recorded={finding}", status_code=303)


async def image(request: Request, user: str) -> Response:
    """One image of a study as PNG, through screener's pixel pipeline; ``overlay=1``
    adds the Grad-CAM map of the model that scored it. The film alone takes ``size=full``
    (its stored Rows x Columns; any other value, or none, the page's size) and
    ``window=NAME``, a key of :data:`screener.imaging.window.WINDOW_PRESETS` (any other
    name, or none, the data set's own VOI)."""
    from screener.imaging.window import window_named
    from screener.web.modelwork import WEB_LONG_SIDE

    web = state_of(request)
    key, sop = request.path_params["key"], request.path_params["sop"]
    try:
        row = await run_in_threadpool(_spooled, web, key, sop)
    except ScreenerError as exc:
        return PlainTextResponse(str(exc), status_code=404)
    if row is None or row.purged_at is not None or not Path(row.spool_path).is_file():
        return PlainTextResponse("the image is not in the spool", status_code=404)
    if request.query_params.get("overlay") == "1":
        try:
            png = await run_in_threadpool(web.work.call, "overlay_png", row.spool_path)
        except ModelWorkFailed as exc:
            return PlainTextResponse(f"no overlay: {exc}", status_code=503)
    else:
        long_side = None if request.query_params.get("size") == "full" else WEB_LONG_SIDE
        window = window_named(request.query_params.get("window"))
        try:  # in the film process, under worker.decode_max_pixels and decode_memory_mb
            png = await run_in_threadpool(
                web.work.call, "film_png", row.spool_path, long_side, window
            )
        except ModelWorkFailed as exc:  # its reason only: never a codec's own words
            log.warning("web_film_refused", reason=exc.reason, full=long_side is None)
            return PlainTextResponse(
                f"the film cannot be shown: {exc.reason}",
                status_code=503 if exc.unavailable else 422,
            )
    return Response(png, media_type="image/png", headers={"Cache-Control": "private"})


def _spooled(web: WebState, key: str, sop: str) -> Any:
    """The image's spool path and purge time (None: not an image of that study)."""
    from sqlalchemy import select

    from screener.views.worklist import find_study

    with web.db.transaction() as session:
        study = find_study(session, key)
        return session.execute(
            select(Instance.spool_path, Instance.purged_at).where(
                Instance.study_id == study.id, Instance.sop_instance_uid == sop
            )
        ).one_or_none()


async def enter_pressed(request: Request) -> Response:
    """Where Enter in the read form goes (its first submit button): 204 No Content, so the
    browser stays on the page and nothing is recorded (HTML 4.10.21.2; Fetch: a 204
    response to a navigation is not shown)."""
    return Response(status_code=204)
