"""The upload page: a DICOM, PNG or JPEG scored at once with its heatmap (in the model
process); an administrator may queue a DICOM object like a received one, checked as any
received object would be, and the audit trail says who did."""

from __future__ import annotations

import base64
from typing import Any

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from screener.web.context import WebState, form_checked, page, state_of
from screener.web.guard import Visitor
from screener.web.modelwork import ModelWorkFailed, kind_of

log = structlog.get_logger(__name__)

#: How much of an upload's file name (the browser's) the upload page shows.
UPLOAD_NAME_CHARS = 80


async def upload_page(request: Request, user: str) -> Response:
    return page(request, "upload.html", result=None)


async def upload(request: Request, user: str) -> Response:
    web = state_of(request)
    form = await form_checked(request)
    try:
        item = form.get("film")
        data = await item.read() if isinstance(item, UploadFile) else b""
        name = _shown_name(item.filename) if isinstance(item, UploadFile) else None
        queue = form.get("queue") == "1"
    finally:
        await form.close()
    visitor: Visitor = request.state.visitor
    if queue and not visitor.admin:
        return PlainTextResponse(
            "only an administrator (web.admins) may queue an upload for PACS", status_code=403
        )
    if not data:
        said = "the file is empty: choose another" if name else "choose a file first"
        return page(request, "upload.html", result=None, filename=name, error=said)
    error = result = queued = None
    try:
        result = await run_in_threadpool(web.work.call, "assess_upload", data)
    except ModelWorkFailed as exc:
        error = f"not assessed ({exc.reason}): {exc}"
    if queue and kind_of(data) == "DICOM":  # checked as any received object would be
        queued = await run_in_threadpool(_queue_upload, web, data, user)
    log.info(
        "web_upload",
        user=user,
        size=len(data),
        kind=None if result is None else result.kind,
        frames=None if result is None else result.n_frames,
        probability=(round(result.frames[0].probability, 4) if result and result.frames else None),
        error=error and error.split(":")[0],
        queued=queued and queued["outcome"],
    )  # never the file's name: it may hold a patient's name
    return page(
        request,
        "upload.html",
        filename=name,
        result=result,
        error=error,
        queued=queued,
        uri=_data_uri,
        status_code=200 if error is None else 422,
    )


def _queue_upload(web: WebState, data: bytes, user: str) -> dict[str, Any]:
    """The uploaded DICOM object through the acceptor (worker thread), and who queued it."""
    from screener.errors import IngestError

    try:
        accepted = web.acceptor_of().accept(data, source="web")
    except IngestError as exc:
        reason = getattr(exc, "reason", type(exc).__name__)
        return {"outcome": "refused", "reason": reason, "message": str(exc)}
    web.audit(
        "web_upload_queued",
        user,
        f"uploaded and queued by {user}: {accepted.outcome}",
        sop_instance_uid=accepted.sop_instance_uid,
        study_instance_uid=accepted.study_instance_uid,
    )
    return {
        "outcome": accepted.outcome,
        "study": accepted.study_instance_uid,
        "skip": accepted.skip.reason if accepted.skip else None,
        "skip_message": accepted.skip.message if accepted.skip else None,
    }


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _shown_name(filename: str | None) -> str | None:
    """The upload's file name as the page shows it: the name the browser sent (a file name,
    no folder), unprintable characters as "?", at most :data:`UPLOAD_NAME_CHARS` characters.
    Shown (escaped by the template), never logged: a file name may hold a patient's name."""
    if not filename:
        return None
    name = "".join(c if c.isprintable() else "?" for c in filename)
    if len(name) > UPLOAD_NAME_CHARS:
        name = name[: UPLOAD_NAME_CHARS - 1] + "…"
    return name or None
