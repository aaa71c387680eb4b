"""The web worklist (Starlette + Jinja2, server-rendered, assets served from the package).

Pages: login, worklist (the order and filters of ``screener worklist``), study (each image
through screener's pixel pipeline, the Grad-CAM overlay toggled, the score against the
threshold with the model, SR deliveries, earlier reads, and agree / disagree recorded as
``screener review`` records them, with the user as reader), status (what ``screener status``
says, and the dead-lettered SRs with a button to send them again), stats (``screener stats``
per model version, with the ROC and a calibration plot of the reads), upload (a DICOM, PNG or
JPEG scored at once with its heatmap; a DICOM object can be queued like a received one).

Model work (overlays, uploads) runs in a child process (:mod:`screener.web.modelwork`);
the request body is limited to ``web.max_upload_mb`` before anything reads it.

Every page needs a user (a session from the login form, or a trusted proxy's header); every
POST carries the session's CSRF token (refused with 403 without it). Images are read from
the spool by the database's path, never by a name from the request.
"""

from __future__ import annotations

import io
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from screener.commands.worklist import STATUSES
from screener.config import Settings
from screener.db import Database, Instance, utcnow
from screener.errors import ScreenerError
from screener.ingest.accept import Acceptor
from screener.web.auth import new_token, parse_users, same_token, verify_password
from screener.web.modelwork import WEB_LONG_SIDE, ModelWork, ModelWorkFailed, kind_of

log = structlog.get_logger(__name__)

HERE = Path(__file__).resolve().parent
SINCE = {"": None, "1h": 1, "24h": 24, "7d": 24 * 7, "30d": 24 * 30}


class Forbidden(Exception):
    pass


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse (413) a request whose body is over ``max_bytes``: by its Content-Length before
    reading, and by counting as it arrives (a chunked body declares no length)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = PlainTextResponse(
            f"the upload is larger than web.max_upload_mb ({self.max_bytes >> 20} MB)",
            status_code=413,
        )
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            log.warning("web_request_too_large", path=scope.get("path"))
            await refusal(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            log.warning("web_request_too_large", path=scope.get("path"))
            if not started:
                await refusal(scope, receive, send)


def _data_uri(png: bytes) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def create_app(
    settings: Settings,
    db: Database,
    *,
    session_secret: str | None = None,
    model_work: ModelWork | None = None,
    acceptor: Acceptor | None = None,
) -> Starlette:
    """The web app over ``db``; ``session_secret`` signs session cookies (random per start
    unless given: a restart logs everyone out). ``model_work`` runs overlays and uploads
    (one is made if not given: its owner stops it); ``acceptor`` queues uploaded DICOM
    objects (the daemon's own under ``screener serve``; one over the configured spool is
    made on first use otherwise)."""
    users = parse_users(settings.web.users)
    header = settings.web.trusted_user_header.strip()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    aging = settings.worklist.aging_hours
    work = model_work or ModelWork(settings)
    accepting: dict[str, Acceptor] = {} if acceptor is None else {"acceptor": acceptor}

    def acceptor_of() -> Acceptor:
        if "acceptor" not in accepting:
            from screener.ingest.spool import Spool

            spool = Spool(settings.storage.spool_dir, settings.storage.min_free_mb)
            accepting["acceptor"] = Acceptor(db, spool, settings)
        return accepting["acceptor"]

    def user_of(request: Request) -> str | None:
        if header:
            value = request.headers.get(header, "").strip()
            return value[:64] or None
        user = request.session.get("user")
        until = request.session.get("until", 0)
        if user in users and time.time() < float(until):
            return str(user)
        return None

    def csrf(request: Request) -> str:
        token = request.session.get("csrf")
        if not token:
            token = request.session["csrf"] = new_token()
        return str(token)

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        return templates.TemplateResponse(
            request,
            name,
            {"user": user_of(request), "csrf": csrf(request), **context},
            status_code=status_code,
        )

    async def form_checked(request: Request) -> Any:
        """The form (its size already limited by :class:`BodyLimit`), once its CSRF token
        is the session's."""
        form = await request.form(max_files=1, max_fields=20)
        if not same_token(str(form.get("csrf") or ""), request.session.get("csrf")):
            await form.close()
            raise Forbidden("the form's CSRF token is missing or wrong: reload the page")
        return form

    def login_required(
        handler: Callable[[Request, str], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            user = user_of(request)
            if user is None:
                if request.method != "GET":
                    return PlainTextResponse("log in first", status_code=403)
                target = quote(
                    request.url.path + (f"?{request.url.query}" if request.url.query else "")
                )
                return RedirectResponse(f"/login?next={target}", status_code=303)
            try:
                return await handler(request, user)
            except Forbidden as exc:
                log.warning("web_request_refused", reason=str(exc), path=request.url.path)
                return PlainTextResponse(str(exc), status_code=403)

        return wrapped

    async def login(request: Request) -> Response:
        target = request.query_params.get("next", "/worklist")
        if not target.startswith("/") or target.startswith("//"):
            target = "/worklist"  # never send a user elsewhere
        if header:
            return RedirectResponse(target, status_code=303)
        error = None
        if request.method == "POST":
            try:
                form = await form_checked(request)
            except Forbidden as exc:
                return PlainTextResponse(str(exc), status_code=403)
            name = str(form.get("username") or "").strip()
            stored = users.get(name)
            if stored is not None and verify_password(str(form.get("password") or ""), stored):
                request.session["user"] = name
                request.session["until"] = time.time() + settings.web.session_hours * 3600
                request.session["csrf"] = new_token()  # a new token for the new session
                log.info("web_login", user=name)
                return RedirectResponse(target, status_code=303)
            log.warning("web_login_failed")  # no name: it may be a password typed in the wrong box
            error = "unknown user or wrong password"
        return page(request, "login.html", error=error, next=target, no_users=not users)

    async def logout(request: Request) -> Response:
        try:
            await form_checked(request)
        except Forbidden as exc:
            return PlainTextResponse(str(exc), status_code=403)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def worklist_page(request: Request, user: str) -> Response:
        from screener.commands.worklist import flag_text, status_text
        from screener.worklist import worklist

        status = request.query_params.get("status", "unread")
        status = status if status in STATUSES else "unread"
        since_key = request.query_params.get("since", "")
        hours = SINCE.get(since_key)
        try:
            min_prob = float(request.query_params.get("min_prob") or 0) or None
        except ValueError:
            min_prob = None
        rows = worklist(
            db,
            aging_hours=aging,
            since=utcnow() - timedelta(hours=hours) if hours else None,
            status=status,
            min_prob=min_prob,
            limit=200,
        )
        return page(
            request,
            "worklist.html",
            rows=rows,
            flag=flag_text,
            status_of=status_text,
            status=status,
            statuses=STATUSES,
            since=since_key,
            since_choices=list(SINCE),
            min_prob=min_prob or "",
        )

    async def study_page(request: Request, user: str) -> Response:
        from screener.worklist import study_detail

        key = request.path_params["key"]
        try:
            detail = study_detail(db, key, aging)
        except ScreenerError as exc:
            return PlainTextResponse(str(exc), status_code=404)
        return page(
            request,
            "study.html",
            d=detail,
            key=key,
            message=request.query_params.get("recorded"),
        )

    async def review(request: Request, user: str) -> Response:
        from screener.worklist import record_review

        form = await form_checked(request)
        verdict = str(form.get("verdict") or "")
        if verdict not in ("agree", "disagree"):
            return PlainTextResponse("verdict must be agree or disagree", status_code=400)
        note = str(form.get("note") or "").strip()[:2000] or None
        key = request.path_params["key"]
        try:
            read = record_review(db, key, verdict == "agree", note, aging, reader=user)
        except ScreenerError as exc:
            return PlainTextResponse(str(exc), status_code=404)
        log.info("web_review", study_id=read.short_id, verdict=verdict, reader=user)
        return RedirectResponse(f"/study/{quote(key)}?recorded={verdict}", status_code=303)

    async def image(request: Request, user: str) -> Response:
        """One image of a study as PNG, through screener's pixel pipeline; ``overlay=1``
        adds the Grad-CAM map of the model that scored it."""
        from sqlalchemy import select

        from screener.worklist import find_study

        key, sop = request.path_params["key"], request.path_params["sop"]
        with db.transaction() as session:
            study = find_study(session, key)
            row = session.execute(
                select(Instance.spool_path, Instance.purged_at).where(
                    Instance.study_id == study.id, Instance.sop_instance_uid == sop
                )
            ).one_or_none()
        if row is None or row.purged_at is not None or not Path(row.spool_path).is_file():
            return PlainTextResponse("the image is not in the spool", status_code=404)
        if request.query_params.get("overlay") == "1":
            try:
                png = await run_in_threadpool(work.call, "overlay_png", row.spool_path)
            except ModelWorkFailed as exc:
                return PlainTextResponse(f"no overlay: {exc}", status_code=503)
        else:
            png = await run_in_threadpool(_film_png, row.spool_path)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private"})

    async def status_page(request: Request, user: str) -> Response:
        from screener.report.ledger import list_exports
        from screener.status import build_report, render_processes

        report = build_report(db)
        return page(
            request,
            "status.html",
            r=report,
            processes=render_processes(report.processes),
            dead=list_exports(db, state="dead", limit=50),
            retried=request.query_params.get("retried"),
        )

    async def retry_exports(request: Request, user: str) -> Response:
        from screener.report.ledger import retry_dead

        await form_checked(request)
        count = retry_dead(db)
        log.info("web_exports_retried", count=count, user=user)
        return RedirectResponse(f"/status?retried={count}", status_code=303)

    async def stats_page(request: Request, user: str) -> Response:
        from screener.model.metrics import brier, expected_calibration_error, roc_auc
        from screener.worklist import review_curves, review_stats

        stats = await run_in_threadpool(review_stats, db)
        curves = await run_in_threadpool(review_curves, db, aging)
        drawn = {}
        for uid, (labels, probs, _flags) in curves.items():
            both = 0 < sum(labels) < len(labels)
            drawn[uid] = {
                "n": len(labels),
                "positives": sum(labels),
                "auc": roc_auc(labels, probs) if both else None,
                "brier": brier(labels, probs),
                "ece": expected_calibration_error(labels, probs),
                "roc": both,
            }
        return page(request, "stats.html", stats=stats, drawn=drawn)

    async def stats_picture(request: Request, user: str) -> Response:
        from screener.worklist import review_curves, review_stats

        uid, what = request.path_params["uid"], request.path_params["what"]
        curves = await run_in_threadpool(review_curves, db, aging)
        if uid not in curves or what not in ("roc", "calibration"):
            return PlainTextResponse("no reads of that model", status_code=404)
        labels, probs, flags = curves[uid]
        found = [s for s in await run_in_threadpool(review_stats, db) if s.model_uid == uid]
        if what == "roc" and not 0 < sum(labels) < len(labels):
            return PlainTextResponse("a ROC needs reads of both kinds", status_code=404)
        name = f"{found[0].model_name} {found[0].model_version}" if found else "model"
        png = await run_in_threadpool(_stats_png, what, labels, probs, flags, name)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    async def upload_page(request: Request, user: str) -> Response:
        return page(request, "upload.html", result=None)

    async def upload(request: Request, user: str) -> Response:
        form = await form_checked(request)
        try:
            item = form.get("film")
            data = await item.read() if isinstance(item, UploadFile) else b""
            queue = form.get("queue") == "1"
        finally:
            await form.close()
        if not data:
            return page(request, "upload.html", result=None, error="choose a file first")
        error = result = queued = None
        try:
            result = await run_in_threadpool(work.call, "assess_upload", data)
        except ModelWorkFailed as exc:
            error = f"not assessed ({exc.reason}): {exc}"
        if queue and kind_of(data) == "DICOM":  # checked as any received object would be
            queued = await run_in_threadpool(_queue_upload, data)
        log.info(
            "web_upload",
            user=user,
            size=len(data),
            kind=None if result is None else result.kind,
            frames=None if result is None else result.n_frames,
            probability=(
                round(result.frames[0].probability, 4) if result and result.frames else None
            ),
            error=error and error.split(":")[0],
            queued=queued and queued["outcome"],
        )
        return page(
            request,
            "upload.html",
            result=result,
            error=error,
            queued=queued,
            uri=_data_uri,
            status_code=200 if error is None else 422,
        )

    def _queue_upload(data: bytes) -> dict[str, Any]:
        from screener.errors import IngestError

        try:
            accepted = acceptor_of().accept(data, source="web")
        except IngestError as exc:
            reason = getattr(exc, "reason", type(exc).__name__)
            return {"outcome": "refused", "reason": reason, "message": str(exc)}
        return {
            "outcome": accepted.outcome,
            "study": accepted.study_instance_uid,
            "skip": accepted.skip.reason if accepted.skip else None,
        }

    async def home(request: Request) -> Response:
        return RedirectResponse("/worklist", status_code=303)

    routes = [
        Route("/", home),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/worklist", login_required(worklist_page)),
        Route("/study/{key}", login_required(study_page)),
        Route("/study/{key}/review", login_required(review), methods=["POST"]),
        Route("/study/{key}/image/{sop}.png", login_required(image)),
        Route("/status", login_required(status_page)),
        Route("/stats", login_required(stats_page)),
        Route("/stats/{uid}/{what}.png", login_required(stats_picture)),
        Route("/upload", login_required(upload_page)),
        Route("/upload", login_required(upload), methods=["POST"]),
        Route("/exports/retry", login_required(retry_exports), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(BodyLimit, max_bytes=settings.web.max_upload_mb * 1024 * 1024),
        Middleware(
            SessionMiddleware,
            secret_key=session_secret or new_token(),
            session_cookie="screener_session",
            max_age=int(settings.web.session_hours * 3600),
            same_site="strict",
            https_only=False,
        ),
    ]
    return Starlette(routes=routes, middleware=middleware)


def _film_png(path: str) -> bytes:
    """A spooled film's first frame through screener's pixel pipeline, as PNG."""
    from PIL import Image

    from screener.model.gradcam import display_frames

    out = io.BytesIO()
    Image.fromarray(display_frames(path, long_side=WEB_LONG_SIDE)[0], mode="L").save(
        out, format="PNG"
    )
    return out.getvalue()


def _stats_png(
    what: str, labels: list[int], probs: list[float], flags: list[bool], name: str
) -> bytes:
    """The ROC (with the point the model's flags made) or the calibration plot, as PNG."""
    from screener.model.metrics import bootstrap_auc_ci, roc_auc
    from screener.model.plots import plot_calibration, plot_roc

    out = io.BytesIO()
    if what == "roc":
        positives = [f for f, y in zip(flags, labels, strict=True) if y]
        negatives = [f for f, y in zip(flags, labels, strict=True) if not y]
        point = (sum(negatives) / len(negatives), sum(positives) / len(positives))
        plot_roc(
            labels,
            probs,
            out,
            None,
            f"ROC against reads (n={len(labels)})\n{name}",
            roc_auc(labels, probs),
            bootstrap_auc_ci(labels, probs),
            point=point,
            point_label="its flags",
        )
    else:
        plot_calibration(labels, probs, out, f"Calibration against reads\n{name}")
    return out.getvalue()


__all__ = ["BodyLimit", "create_app"]
