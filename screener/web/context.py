"""What every page of the web app shares: the app's state (:class:`WebState`, one object on
``request.app.state``), who the visitor is, a page rendered with the visitor's token and the
site's mode, cookies, CSRF-checked forms, and the login (and admin) check around a handler.

Handlers are module-level functions (``handler(request, user)`` behind
:func:`login_required`) that take what they need from :func:`state_of`. None does blocking
work on the event loop: database work and password hashing run in worker threads
(``run_in_threadpool``), pixels in the model process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from screener.config import Settings
from screener.db import AuditEvent, Database, utcnow
from screener.ingest.accept import Acceptor
from screener.site.mode import ModeCache
from screener.views.worklist import FINDINGS, MAX_NOTE
from screener.web.auth import LoginThrottle, new_token, same_token
from screener.web.guard import CSRF_COOKIE, SESSION_COOKIE, Proxies, Visitor
from screener.web.modelwork import ModelWork
from screener.web.sessions import SessionStore

log = structlog.get_logger(__name__)

HERE = Path(__file__).resolve().parent

#: A page handler: the request and the logged-in user's name.
Handler = Callable[[Request, str], Awaitable[Response]]
#: A Starlette endpoint.
Endpoint = Callable[[Request], Awaitable[Response]]


class Forbidden(Exception):
    """A request refused with 403 (a form without the visitor's CSRF token)."""


@dataclass
class WebState:
    """What the pages share, built once by :func:`screener.web.app.create_app` and kept on
    ``app.state.web``: the settings and database, who may log in and who is an admin, the
    logins, the login throttle, the templates, the model process, the site's mode, and the
    acceptor that queues uploads (``None`` until the first queued upload makes one over the
    configured spool, unless the daemon passed its own)."""

    settings: Settings
    db: Database
    users: dict[str, str]
    proxies: Proxies
    admins: set[str]
    store: SessionStore
    throttle: LoginThrottle
    templates: Jinja2Templates
    work: ModelWork
    site: ModeCache  # silent start or live: every page says (base.html)
    acceptor: Acceptor | None = field(default=None)

    @property
    def header(self) -> str:
        """``web.trusted_user_header`` (empty: logins with a password)."""
        return self.proxies.header

    @property
    def aging(self) -> float:
        return self.settings.worklist.aging_hours

    def acceptor_of(self) -> Acceptor:
        """The acceptor that queues an upload (made over the configured spool on first use)."""
        if self.acceptor is None:
            from screener.ingest.spool import Spool

            spool = Spool(self.settings.storage.spool_dir, self.settings.storage.min_free_mb)
            self.acceptor = Acceptor(self.db, spool, self.settings)
        return self.acceptor

    def audit(self, event: str, user: str, message: str, **uids: str | None) -> None:
        """Who did what from the web, in the audit trail (e.g. an upload queued for PACS)."""
        with self.db.transaction() as session:
            session.add(AuditEvent(at=utcnow(), event=event, message=message, actor=user, **uids))


def state_of(request: Request) -> WebState:
    """The app's :class:`WebState`."""
    web: WebState = request.app.state.web
    return web


async def visitor_of(request: Request) -> Visitor:
    """Who sent the request (database work in a thread); kept on ``request.state``."""
    web = state_of(request)
    anonymous_csrf = request.cookies.get(CSRF_COOKIE, "")
    if not (20 <= len(anonymous_csrf) <= 64 and anonymous_csrf.isascii()):
        anonymous_csrf = request.state.new_csrf = new_token()
    if web.header:
        user, refusal = web.proxies.header_user(request)
        visitor = Visitor(user, anonymous_csrf, user in web.admins, refusal=refusal)
    else:
        login = await run_in_threadpool(web.store.find, request.cookies.get(SESSION_COOKIE))
        visitor = (
            Visitor(login.user, login.csrf, login.user in web.admins, session=login.token_sha256)
            if login is not None
            else Visitor(None, anonymous_csrf)
        )
    request.state.visitor = visitor
    # the site's mode for the page's banner: cached, and read in a thread when stale
    request.state.site = await run_in_threadpool(web.site.get)
    return visitor


def set_cookie(request: Request, response: Response, name: str, value: str, **kw: Any) -> None:
    """A cookie for the whole site: HttpOnly, SameSite=Strict, Secure over HTTPS."""
    response.set_cookie(
        name,
        value,
        httponly=True,
        samesite="strict",
        secure=state_of(request).proxies.https(request),
        path="/",
        **kw,
    )


def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
    """The template ``name`` with the visitor's name, token and rights and the site's mode."""
    visitor: Visitor = request.state.visitor
    response = state_of(request).templates.TemplateResponse(
        request,
        name,
        {
            "user": visitor.user,
            "csrf": visitor.csrf,
            "admin": visitor.admin,
            "site": getattr(request.state, "site", None),
            **context,
        },
        status_code=status_code,
    )
    if getattr(request.state, "new_csrf", None):
        set_cookie(request, response, CSRF_COOKIE, request.state.new_csrf)
    return response


async def form_checked(request: Request) -> Any:
    """The form (its size already limited by :class:`BodyLimit`), once its CSRF token
    is the visitor's."""
    form = await request.form(max_files=1, max_fields=20)
    visitor: Visitor = request.state.visitor
    if not same_token(str(form.get("csrf") or ""), visitor.csrf):
        await form.close()
        raise Forbidden("the form's CSRF token is missing or wrong: reload the page")
    return form


def login_required(
    handler: Handler, *, admin: str | None = None, logged_out: Endpoint | None = None
) -> Endpoint:
    """``handler`` for a logged-in visitor only; ``admin`` (what it does) for web.admins only;
    ``logged_out`` answers a POST whose login has ended instead of refusing it (a read is
    kept, not lost)."""

    async def wrapped(request: Request) -> Response:
        visitor = await visitor_of(request)
        if visitor.user is None:
            if visitor.refusal is not None:  # header mode: no login page to go to
                return PlainTextResponse(visitor.refusal, status_code=401)
            if logged_out is not None:
                return await logged_out(request)
            if request.method != "GET":
                return PlainTextResponse(
                    "your login has ended: log in again, then repeat what you did",
                    status_code=403,
                )
            target = quote(
                request.url.path + (f"?{request.url.query}" if request.url.query else "")
            )
            return RedirectResponse(f"/login?next={target}", status_code=303)
        if admin is not None and not visitor.admin:
            log.warning("web_request_refused", reason="not_admin", user=visitor.user)
            return PlainTextResponse(
                f"only an administrator (web.admins) may {admin}", status_code=403
            )
        try:
            return await handler(request, visitor.user)
        except Forbidden as exc:
            log.warning("web_request_refused", reason=str(exc), method=request.method)
            return PlainTextResponse(str(exc), status_code=403)

    return wrapped


def pending_of(form: Any, key: Any = None) -> dict[str, str] | None:
    """A read carried through the login form (or posted when the login had ended)."""
    key = str(key if key is not None else form.get("pending_key") or "")[:64]
    finding = str(form.get("pending_finding") or form.get("finding") or "")
    if not key or finding not in FINDINGS:
        return None
    note = str(form.get("pending_note") or form.get("note") or "")[: MAX_NOTE + 1]
    return {"key": key, "finding": finding, "note": note, "words": FINDINGS[finding]}


def when(date: str | None, time: str | None = None) -> str:
    """A DICOM DA (and TM) as a person reads it: 2026-12-04 08:15 (PS3.5 6.2 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_6.2>)."""
    if not date or len(date) != 8 or not date.isdigit():
        return date or ""
    text = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    digits = (time or "").split(".")[0]
    if len(digits) >= 4 and digits[:4].isdigit():
        text += f" {digits[:2]}:{digits[2:4]}"
    return text
