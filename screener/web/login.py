"""Logging in and out: the login form (throttled per user and per address, the password
checked in a worker thread), a read posted after the login ended carried through the form
and recorded once the login succeeds, and the logout that ends every copy of the session.
In header mode (``web.trusted_user_header``) the proxy says who the user is: no form."""

from __future__ import annotations

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from screener.web.context import (
    Forbidden,
    form_checked,
    page,
    pending_of,
    set_cookie,
    state_of,
    visitor_of,
)
from screener.web.guard import SESSION_COOKIE
from screener.web.study import record

log = structlog.get_logger(__name__)


async def login(request: Request) -> Response:
    target = request.query_params.get("next", "/worklist")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        target = "/worklist"  # never send a user elsewhere
    visitor = await visitor_of(request)
    if state_of(request).header:
        if visitor.user is None:
            return PlainTextResponse(visitor.refusal or "", status_code=401)
        return RedirectResponse(target, status_code=303)
    if request.method == "POST":
        return await _password_login(request, target)
    return _login_form(request, target)


async def _password_login(request: Request, target: str) -> Response:
    """The login form posted: throttled, the password checked in a worker thread; the
    session's cookie on success (and a read carried through the form recorded), else the
    form again, and why."""
    web = state_of(request)
    try:
        form = await form_checked(request)
    except Forbidden as exc:
        return PlainTextResponse(str(exc), status_code=403)
    name = str(form.get("username") or "").strip()[:64]
    password = str(form.get("password") or "")[:1024]
    pending = pending_of(form)
    address = web.proxies.client_address(request)
    keys = (f"user:{name}", f"address:{address}")
    wait = web.throttle.wait(*keys)
    if wait > 0:
        # refused without checking the password: guessing gains nothing while waiting
        log.warning("web_login_throttled", wait_seconds=round(wait))
        response = _login_form(
            request,
            target,
            status_code=429,
            error=f"too many failed logins: try again in {wait:.0f} s",
            name=name,  # kept in the form: only the password is typed again
            pending=pending,
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    if await run_in_threadpool(web.store.check_password, name, password):
        web.throttle.succeeded(keys[0])
        token, _login = await run_in_threadpool(web.store.start, name)
        log.info("web_login", user=name)
        response = RedirectResponse(target, status_code=303)
        if pending is not None:  # the read sent when the login had ended, saved now
            response = await record(
                request, name, pending["key"], pending["finding"], pending["note"]
            )
        set_cookie(
            request,
            response,
            SESSION_COOKIE,
            token,
            max_age=int(web.settings.web.session_hours * 3600),
        )
        return response
    web.throttle.failed(*keys)
    log.warning("web_login_failed")  # no name: it may be a password typed in the wrong box
    # a failed login keeps the name typed
    error = "unknown user or wrong password"
    return _login_form(request, target, error=error, name=name, pending=pending)


def _login_form(
    request: Request,
    target: str,
    status_code: int = 200,
    error: str | None = None,
    name: str = "",
    pending: dict[str, str] | None = None,
) -> Response:
    """The login form; after a failed login, why, with the name typed (not the password)."""
    return page(
        request,
        "login.html",
        status_code=status_code,
        error=error,
        next=target,
        no_users=not state_of(request).users,
        username=name if error else "",
        pending=pending,
    )


async def pending_read(request: Request) -> Response:
    """A read posted after the login ended: the login form, carrying the read, which is
    recorded as soon as the login succeeds (the form is CSRF-checked then)."""
    form = await request.form(max_files=0, max_fields=20)
    pending = pending_of(form, request.path_params.get("key"))
    log.info("web_read_pending_login")
    return _login_form(request, "/worklist", status_code=401, pending=pending)


async def logout(request: Request) -> Response:
    visitor = await visitor_of(request)
    try:
        await form_checked(request)
    except Forbidden as exc:
        return PlainTextResponse(str(exc), status_code=403)
    if visitor.session is not None:
        # every copy of the cookie ends
        await run_in_threadpool(state_of(request).store.end, visitor.session)
        log.info("web_logout", user=visitor.user)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
