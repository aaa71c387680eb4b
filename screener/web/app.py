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

Every page needs a user: a login held on the server (:mod:`screener.web.sessions`), or a
trusted proxy's header (:mod:`screener.web.guard`). Every POST carries the visitor's CSRF
token (refused with 403 without it). Users in ``web.admins`` may also send dead-lettered SRs
again and queue uploads for PACS. Images are read from the spool by the database's path,
never by a name from the request. No handler does blocking work on the event loop: database
work and password hashing run in worker threads, pixels in the model process.
"""

from __future__ import annotations

import io
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
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from screener.commands.worklist import STATUSES
from screener.config import Settings
from screener.db import AuditEvent, Database, Instance, utcnow
from screener.errors import ScreenerError
from screener.ingest.accept import Acceptor
from screener.site import ModeCache, go_live_record
from screener.web.auth import LoginThrottle, new_token, parse_users, same_token
from screener.web.guard import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    BodyLimit,
    Proxies,
    SecurityHeaders,
    Visitor,
)
from screener.web.modelwork import ModelWork, ModelWorkFailed, kind_of
from screener.web.sessions import SessionStore
from screener.worklist import MAX_NOTE

log = structlog.get_logger(__name__)

HERE = Path(__file__).resolve().parent
SINCE = {"": None, "1h": 1, "24h": 24, "7d": 24 * 7, "30d": 24 * 30}
#: the web worklist's status filters: the CLI's, and the studies that get no score
WEB_STATUSES = (*STATUSES, "skipped")
SORT_LABELS = {
    "priority": "flagged first, then priority",
    "received": "newest first",
    "probability": "highest P first",
    "accession": "accession number",
}


def _pending_of(form: Any, key: Any = None) -> dict[str, str] | None:
    """A read carried through the login form (or posted when the login had ended)."""
    from screener.worklist import FINDINGS, MAX_NOTE

    key = str(key if key is not None else form.get("pending_key") or "")[:64]
    finding = str(form.get("pending_finding") or form.get("finding") or "")
    if not key or finding not in FINDINGS:
        return None
    note = str(form.get("pending_note") or form.get("note") or "")[: MAX_NOTE + 1]
    return {"key": key, "finding": finding, "note": note, "words": FINDINGS[finding]}


def _when(date: str | None, time: str | None = None) -> str:
    """A DICOM DA (and TM) as a person reads it: 2026-12-04 08:15 (PS3.5 6.2)."""
    if not date or len(date) != 8 or not date.isdigit():
        return date or ""
    text = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    digits = (time or "").split(".")[0]
    if len(digits) >= 4 and digits[:4].isdigit():
        text += f" {digits[:2]}:{digits[2:4]}"
    return text


#: A one-time message to the status page ("N dead-lettered SRs will be sent again"): set by
#: the POST that resent them, read and deleted by the next status page, so a reload (or the
#: 30 s refresh) shows it no more.
FLASH_COOKIE = "screener_flash"
#: How much of an upload's file name (the browser's) the upload page shows.
UPLOAD_NAME_CHARS = 80


class Forbidden(Exception):
    pass


def _data_uri(png: bytes) -> str:
    import base64

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


def create_app(
    settings: Settings,
    db: Database,
    *,
    session_secret: str | None = None,
    model_work: ModelWork | None = None,
    acceptor: Acceptor | None = None,
) -> Starlette:
    """The web app over ``db``. ``model_work`` runs overlays and uploads (one is made if not
    given: its owner stops it); ``acceptor`` queues uploaded DICOM objects (the daemon's own
    under ``screener serve``; one over the configured spool is made on first use otherwise).
    Logins are kept in the database, so a restart keeps them (``session_secret`` is no
    longer used and is accepted for callers that still pass it)."""
    del session_secret
    users = parse_users(settings.web.users)
    proxies = Proxies(settings.web)  # refuses an unsafe trusted_user_header set-up
    header = proxies.header
    admins = {name.strip() for name in settings.web.admins}
    store = SessionStore(db, users, settings.web.session_hours, settings.web.idle_minutes)
    throttle = LoginThrottle()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    aging = settings.worklist.aging_hours
    work = model_work or ModelWork(settings)
    accepting: dict[str, Acceptor] = {} if acceptor is None else {"acceptor": acceptor}
    site = ModeCache(db, settings)  # silent start or live: every page says (base.html)

    def acceptor_of() -> Acceptor:
        if "acceptor" not in accepting:
            from screener.ingest.spool import Spool

            spool = Spool(settings.storage.spool_dir, settings.storage.min_free_mb)
            accepting["acceptor"] = Acceptor(db, spool, settings)
        return accepting["acceptor"]

    async def visitor_of(request: Request) -> Visitor:
        """Who sent the request (database work in a thread); kept on ``request.state``."""
        anonymous_csrf = request.cookies.get(CSRF_COOKIE, "")
        if not (20 <= len(anonymous_csrf) <= 64 and anonymous_csrf.isascii()):
            anonymous_csrf = request.state.new_csrf = new_token()
        if header:
            user, refusal = proxies.header_user(request)
            visitor = Visitor(user, anonymous_csrf, user in admins, refusal=refusal)
        else:
            login = await run_in_threadpool(store.find, request.cookies.get(SESSION_COOKIE))
            visitor = (
                Visitor(login.user, login.csrf, login.user in admins, session=login.token_sha256)
                if login is not None
                else Visitor(None, anonymous_csrf)
            )
        request.state.visitor = visitor
        # the site's mode for the page's banner: cached, and read in a thread when stale
        request.state.site = await run_in_threadpool(site.get)
        return visitor

    def set_cookie(request: Request, response: Response, name: str, value: str, **kw: Any) -> None:
        response.set_cookie(
            name,
            value,
            httponly=True,
            samesite="strict",
            secure=proxies.https(request),
            path="/",
            **kw,
        )

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        visitor: Visitor = request.state.visitor
        response = templates.TemplateResponse(
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
        handler: Callable[[Request, str], Awaitable[Response]], *, admin: str | None = None
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` for a logged-in visitor only; ``admin`` (what it does) for web.admins only."""

        async def wrapped(request: Request) -> Response:
            visitor = await visitor_of(request)
            if visitor.user is None:
                if visitor.refusal is not None:  # header mode: no login page to go to
                    return PlainTextResponse(visitor.refusal, status_code=401)
                if handler is review:  # a read sent after the login ended is kept, not lost
                    return await pending_read(request)
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

    async def login(request: Request) -> Response:
        target = request.query_params.get("next", "/worklist")
        if not target.startswith("/") or target.startswith("//") or "\\" in target:
            target = "/worklist"  # never send a user elsewhere
        visitor = await visitor_of(request)
        if header:
            if visitor.user is None:
                return PlainTextResponse(visitor.refusal or "", status_code=401)
            return RedirectResponse(target, status_code=303)
        error, status_code, name, pending = None, 200, "", None  # the form again, and why
        if request.method == "POST":
            try:
                form = await form_checked(request)
            except Forbidden as exc:
                return PlainTextResponse(str(exc), status_code=403)
            name = str(form.get("username") or "").strip()[:64]
            password = str(form.get("password") or "")[:1024]
            pending = _pending_of(form)
            address = proxies.client_address(request)
            keys = (f"user:{name}", f"address:{address}")
            wait = throttle.wait(*keys)
            if wait > 0:
                # refused without checking the password: guessing gains nothing while waiting
                log.warning("web_login_throttled", wait_seconds=round(wait))
                response = page(
                    request,
                    "login.html",
                    status_code=429,
                    error=f"too many failed logins: try again in {wait:.0f} s",
                    next=target,
                    no_users=not users,
                    username=name,  # kept in the form: only the password is typed again
                    pending=pending,
                )
                response.headers["Retry-After"] = str(int(wait) + 1)
                return response
            if await run_in_threadpool(store.check_password, name, password):
                throttle.succeeded(keys[0])
                token, _login = await run_in_threadpool(store.start, name)
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
                    max_age=int(settings.web.session_hours * 3600),
                )
                return response
            throttle.failed(*keys)
            log.warning("web_login_failed")  # no name: it may be a password typed in the wrong box
            error = "unknown user or wrong password"
        return page(
            request,
            "login.html",
            status_code=status_code,
            error=error,
            next=target,
            no_users=not users,
            username=name if error else "",  # a failed login keeps the name typed
            pending=pending,
        )

    async def pending_read(request: Request) -> Response:
        """A read posted after the login ended: the login form, carrying the read, which is
        recorded as soon as the login succeeds (the form is CSRF-checked then)."""
        form = await request.form(max_files=0, max_fields=20)
        pending = _pending_of(form, request.path_params.get("key"))
        log.info("web_read_pending_login")
        return page(
            request,
            "login.html",
            status_code=401,
            error=None,
            next="/worklist",
            no_users=not users,
            username="",
            pending=pending,
        )

    async def logout(request: Request) -> Response:
        visitor = await visitor_of(request)
        try:
            await form_checked(request)
        except Forbidden as exc:
            return PlainTextResponse(str(exc), status_code=403)
        if visitor.session is not None:
            await run_in_threadpool(store.end, visitor.session)  # every copy of the cookie ends
            log.info("web_logout", user=visitor.user)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def worklist_page(request: Request, user: str) -> Response:
        from screener.commands.worklist import flag_text, short_uid, status_text
        from screener.worklist import SORTS, unscored_studies, worklist

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
        min_prob: float | None = None
        typed = params.get("min_prob", "").strip()
        if typed:
            try:
                min_prob = float(typed)
            except ValueError:
                min_prob = None
            if min_prob is None or not 0.0 <= min_prob <= 1.0:
                problems.append(
                    "Minimum P is a probability between 0 and 1 (e.g. 0.5): no minimum applied."
                )
                min_prob = None
        sort = params.get("sort", "priority")
        if sort not in SORTS:
            problems.append(f"Order is one of {', '.join(SORTS)}: showing by priority.")
            sort = "priority"
        search = params.get("q", "").strip()[:64]
        unscored = []
        rows = []
        if status == "skipped":
            unscored = await run_in_threadpool(lambda: unscored_studies(db, since=since))
        else:
            rows = await run_in_threadpool(
                lambda: worklist(
                    db,
                    aging_hours=aging,
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
            when=_when,
            short_uid=short_uid,
            status_code=200 if not problems else 400,
        )

    async def find(request: Request, user: str) -> Response:
        """The search box: a study by accession number, Study Instance UID (or its start or
        end), or short id; several matches list them on the worklist."""
        from screener.worklist import find_study

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

    async def study_page(request: Request, user: str) -> Response:
        from screener.imaging.window import WINDOW_PRESETS
        from screener.worklist import FINDINGS, next_unread, study_detail

        key = request.path_params["key"]
        try:
            detail = await run_in_threadpool(study_detail, db, key, aging)
        except ScreenerError as exc:
            return PlainTextResponse(str(exc), status_code=404)
        # "your read is recorded" only when this user's read with that finding is the latest
        recorded = request.query_params.get("recorded")
        latest = detail.reviews[-1] if detail.reviews else None
        if not (latest and latest["reader"] == user and latest["finding"] == recorded):
            latest = None
        following = (
            await run_in_threadpool(next_unread, db, aging, detail.short_id) if latest else None
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
            when=_when,
            window_presets=WINDOW_PRESETS,
            error=None,
        )

    async def review(request: Request, user: str) -> Response:
        form = await form_checked(request)
        key = request.path_params["key"]
        return await record(request, user, key, form.get("finding"), form.get("note"))

    async def record(request: Request, user: str, key: str, finding: Any, note: Any) -> Response:
        """A read recorded (database work in a thread), then the study page that says so."""
        from screener.worklist import FINDINGS, NotReadable, record_read

        finding = str(finding or "")
        text = str(note or "").strip() or None
        if finding not in FINDINGS:
            return PlainTextResponse(
                "choose what the film shows: pneumonia, no pneumonia or cannot tell",
                status_code=400,
            )
        try:
            read = await run_in_threadpool(record_read, db, key, finding, text, aging, user)
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
        from sqlalchemy import select

        from screener.imaging.window import window_named
        from screener.web.modelwork import WEB_LONG_SIDE
        from screener.worklist import find_study

        key, sop = request.path_params["key"], request.path_params["sop"]

        def spooled() -> Any:
            with db.transaction() as session:
                study = find_study(session, key)
                return session.execute(
                    select(Instance.spool_path, Instance.purged_at).where(
                        Instance.study_id == study.id, Instance.sop_instance_uid == sop
                    )
                ).one_or_none()

        try:
            row = await run_in_threadpool(spooled)
        except ScreenerError as exc:
            return PlainTextResponse(str(exc), status_code=404)
        if row is None or row.purged_at is not None or not Path(row.spool_path).is_file():
            return PlainTextResponse("the image is not in the spool", status_code=404)
        if request.query_params.get("overlay") == "1":
            try:
                png = await run_in_threadpool(work.call, "overlay_png", row.spool_path)
            except ModelWorkFailed as exc:
                return PlainTextResponse(f"no overlay: {exc}", status_code=503)
        else:
            long_side = None if request.query_params.get("size") == "full" else WEB_LONG_SIDE
            window = window_named(request.query_params.get("window"))
            try:  # in the film process, under worker.decode_max_pixels and decode_memory_mb
                png = await run_in_threadpool(
                    work.call, "film_png", row.spool_path, long_side, window
                )
            except ModelWorkFailed as exc:  # its reason only: never a codec's own words
                log.warning("web_film_refused", reason=exc.reason, full=long_side is None)
                return PlainTextResponse(
                    f"the film cannot be shown: {exc.reason}",
                    status_code=503 if exc.unavailable else 422,
                )
        return Response(png, media_type="image/png", headers={"Cache-Control": "private"})

    async def status_page(request: Request, user: str) -> Response:
        from screener.report.ledger import list_exports
        from screener.status import build_report, counter_label, render_processes

        if "retried" in request.query_params:  # the message's old carrier: a refresh kept it
            keep = "?refresh=30" if request.query_params.get("refresh") == "30" else ""
            return RedirectResponse(f"/status{keep}", status_code=303)
        report = await run_in_threadpool(build_report, db)
        dead = await run_in_threadpool(lambda: list_exports(db, state="dead", limit=50))
        flash = request.cookies.get(FLASH_COOKIE)
        # digits only: anything else in the cookie was not set by retry_exports
        valid = flash and len(flash) <= 9 and all(c in "0123456789" for c in flash)
        response = page(
            request,
            "status.html",
            r=report,
            label=counter_label,
            processes=[line.strip() for line in render_processes(report.processes)],
            dead=dead,
            retried=int(flash) if flash and valid else None,
        )
        if flash is not None:  # shown once: a reload or the 30 s refresh shows it no more
            response.delete_cookie(
                FLASH_COOKIE,
                path="/status",
                secure=proxies.https(request),
                httponly=True,
                samesite="strict",
            )
        return response

    async def retry_exports(request: Request, user: str) -> Response:
        from screener.report.ledger import retry_dead

        await form_checked(request)

        def retried() -> int:
            count = retry_dead(db)
            audit("web_exports_retried", user, f"{count} dead-lettered SR(s) sent again by {user}")
            return count

        count = await run_in_threadpool(retried)
        log.info("web_exports_retried", count=count, user=user)
        response = RedirectResponse("/status", status_code=303)
        response.set_cookie(  # the next status page says how many, once (FLASH_COOKIE)
            FLASH_COOKIE,
            str(count),
            max_age=60,
            path="/status",
            secure=proxies.https(request),
            httponly=True,
            samesite="strict",
        )
        return response

    def audit(event: str, user: str, message: str, **uids: str | None) -> None:
        """Who did what from the web, in the audit trail (e.g. an upload queued for PACS)."""
        with db.transaction() as session:
            session.add(AuditEvent(at=utcnow(), event=event, message=message, actor=user, **uids))

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
        went_live = await run_in_threadpool(go_live_record, db)
        from screener.commands.stats import weighted_line

        return page(
            request,
            "stats.html",
            stats=stats,
            drawn=drawn,
            weighted_line=weighted_line,
            went_live=went_live,
        )

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

    async def commission_page(request: Request, user: str) -> Response:
        view = await run_in_threadpool(_commission_view, db, settings)
        return page(request, "commission.html", **view)

    async def commission_picture(request: Request, user: str) -> Response:
        what = request.path_params["what"]
        if what not in ("roc", "calibration"):
            return PlainTextResponse("no such picture", status_code=404)
        png = await run_in_threadpool(_commission_png, db, settings, what)
        if png is None:
            return PlainTextResponse("no reads of both kinds yet", status_code=404)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    async def upload_page(request: Request, user: str) -> Response:
        return page(request, "upload.html", result=None)

    async def upload(request: Request, user: str) -> Response:
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
            result = await run_in_threadpool(work.call, "assess_upload", data)
        except ModelWorkFailed as exc:
            error = f"not assessed ({exc.reason}): {exc}"
        if queue and kind_of(data) == "DICOM":  # checked as any received object would be
            queued = await run_in_threadpool(_queue_upload, data, user)
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

    def _queue_upload(data: bytes, user: str) -> dict[str, Any]:
        from screener.errors import IngestError

        try:
            accepted = acceptor_of().accept(data, source="web")
        except IngestError as exc:
            reason = getattr(exc, "reason", type(exc).__name__)
            return {"outcome": "refused", "reason": reason, "message": str(exc)}
        audit(
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

    async def enter_pressed(request: Request) -> Response:
        """Where Enter in the read form goes (its first submit button): 204 No Content, so the
        browser stays on the page and nothing is recorded (HTML 4.10.21.2; Fetch: a 204
        response to a navigation is not shown)."""
        return Response(status_code=204)

    async def home(request: Request) -> Response:
        return RedirectResponse("/worklist", status_code=303)

    routes = [
        Route("/", home),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/worklist", login_required(worklist_page)),
        Route("/find", login_required(find)),
        Route("/study/{key}", login_required(study_page)),
        Route("/study/{key}/review", login_required(review), methods=["POST"]),
        Route("/study/{key}/enter", enter_pressed, methods=["POST"]),
        Route("/study/{key}/image/{sop}.png", login_required(image)),
        Route("/status", login_required(status_page)),
        Route("/stats", login_required(stats_page)),
        Route("/stats/{uid}/{what}.png", login_required(stats_picture)),
        Route("/commission", login_required(commission_page)),
        Route("/commission/{what}.png", login_required(commission_picture)),
        Route("/upload", login_required(upload_page)),
        Route("/upload", login_required(upload), methods=["POST"]),
        Route(
            "/exports/retry",
            login_required(retry_exports, admin="send dead-lettered SRs again"),
            methods=["POST"],
        ),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(BodyLimit, max_bytes=settings.web.max_upload_mb * 1024 * 1024),
    ]
    return Starlette(routes=routes, middleware=middleware)


def _commission_view(db: Database, settings: Settings) -> dict[str, Any]:
    """What the commissioning page shows: ``screener commission``'s figures for the bundle
    in use (its own target; calibration refitted, as the command does by default)."""
    from screener.commissioning import figures, shortfalls, site_reads
    from screener.model.bundle import read_metadata
    from screener.model.commission import RECOMMENDED, RULES, WHY

    meta = read_metadata(settings.model.bundle)
    target = float(meta.get("target_sensitivity", 0.95))
    reads = site_reads(db, meta, settings.worklist.aging_hours)
    positives = sum(reads.positives)
    both = 0 < positives < len(reads.positives)
    return {
        "meta": meta,
        "target": target,
        "reads": reads,
        "positives": positives,
        "audited": sum(reads.audited),
        "short": shortfalls(reads, target, refit=True),
        "c": figures(reads, meta, target, refit=True) if both else None,
        "recommended": RULES[RECOMMENDED][0],
        "why": WHY,
    }


def _commission_png(db: Database, settings: Settings, what: str) -> bytes | None:
    """The commissioning page's ROC or calibration picture; None without reads of both kinds."""
    from screener.model.plots import plot_commission

    c = _commission_view(db, settings)["c"]
    if c is None:
        return None
    roc, calibration = io.BytesIO(), io.BytesIO()
    plot_commission(c, roc, calibration)
    return (roc if what == "roc" else calibration).getvalue()


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


__all__ = ["BodyLimit", "create_app"]  # BodyLimit lives in screener.web.guard
