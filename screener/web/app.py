"""The web worklist (Starlette + Jinja2, server-rendered, assets served from the package).

Pages: login, worklist (the order and filters of ``screener worklist``), study (each image
through screener's pixel pipeline, the Grad-CAM overlay toggled, the score against the
threshold with the model, SR deliveries, earlier reads, and agree / disagree recorded as
``screener review`` records them, with the user as reader), status (what ``screener status``
says, and the dead-lettered SRs with a button to send them again).

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
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from screener.commands.worklist import STATUSES
from screener.config import Settings
from screener.db import Database, Instance, utcnow
from screener.errors import ScreenerError
from screener.web.auth import new_token, parse_users, same_token, verify_password

log = structlog.get_logger(__name__)

HERE = Path(__file__).resolve().parent
SINCE = {"": None, "1h": 1, "24h": 24, "7d": 24 * 7, "30d": 24 * 30}


class Forbidden(Exception):
    pass


def create_app(settings: Settings, db: Database, *, session_secret: str | None = None) -> Starlette:
    """The web app over ``db``; ``session_secret`` signs session cookies (random per start
    unless given: a restart logs everyone out)."""
    users = parse_users(settings.web.users)
    header = settings.web.trusted_user_header.strip()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    max_body = settings.web.max_upload_mb * 1024 * 1024
    aging = settings.worklist.aging_hours
    bundle_cache: dict[str, Any] = {}

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

    def page(request: Request, name: str, **context: Any) -> Response:
        return templates.TemplateResponse(
            request,
            name,
            {"user": user_of(request), "csrf": csrf(request), **context},
        )

    async def form_checked(request: Request) -> Any:
        length = int(request.headers.get("content-length") or 0)
        if length > max_body:
            raise Forbidden(
                f"request larger than web.max_upload_mb ({settings.web.max_upload_mb} MB)"
            )
        form = await request.form()
        if not same_token(str(form.get("csrf") or ""), request.session.get("csrf")):
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
        png = _render(row.spool_path, request.query_params.get("overlay") == "1")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private"})

    def _render(path: str, with_overlay: bool) -> bytes:
        from PIL import Image

        from screener.model.gradcam import display_frames

        film = display_frames(path, long_side=768)[0]
        if with_overlay:
            film = _overlay(path, film)
            picture = Image.fromarray(film, mode="RGB")
        else:
            picture = Image.fromarray(film, mode="L")
        out = io.BytesIO()
        picture.save(out, format="PNG")
        return out.getvalue()

    def _overlay(path: str, film: Any) -> Any:
        import numpy as np
        from PIL import Image

        from screener.imaging import load_image
        from screener.model import load_bundle
        from screener.model.gradcam import gradcam, overlay

        if "bundle" not in bundle_cache:
            bundle_cache["bundle"] = load_bundle(settings.model.bundle)
        heat = gradcam(bundle_cache["bundle"], load_image(path)[0])
        heat = np.asarray(
            Image.fromarray(heat, mode="F").resize(
                (film.shape[1], film.shape[0]), Image.Resampling.BILINEAR
            )
        )
        return overlay(film, np.clip(heat, 0.0, 1.0))

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
        Route("/exports/retry", login_required(retry_exports), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(
            SessionMiddleware,
            secret_key=session_secret or new_token(),
            session_cookie="screener_session",
            max_age=int(settings.web.session_hours * 3600),
            same_site="strict",
            https_only=False,
        )
    ]
    return Starlette(routes=routes, middleware=middleware)


__all__ = ["create_app"]
