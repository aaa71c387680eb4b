"""The web worklist (Starlette + Jinja2, server-rendered, assets served from the package).

Pages, one module per family: login and logout (:mod:`screener.web.login`), worklist and
search (:mod:`screener.web.worklist`: the order and filters of ``screener worklist``), study
(:mod:`screener.web.study`: each image through screener's pixel pipeline, the Grad-CAM
overlay toggled, the score against the threshold with the model, SR deliveries, earlier
reads, and agree / disagree recorded as ``screener review`` records them, with the user as
reader), status (:mod:`screener.web.status`: what ``screener status`` says, and the
dead-lettered deliveries with a button to send them again), stats and commissioning
(:mod:`screener.web.stats`: ``screener stats`` per model version, with the ROC and a
calibration plot of the reads; ``screener commission``'s table), upload
(:mod:`screener.web.upload`: a DICOM, PNG or JPEG scored at once with its heatmap; a DICOM
object can be queued like a received one). What they share (:class:`WebState` on
``app.state.web``, the visitor, page rendering, the login check) is
:mod:`screener.web.context`.

Model work (overlays, uploads) runs in a child process (:mod:`screener.web.modelwork`);
the request body is limited to ``web.max_upload_mb`` before anything reads it.

Every page needs a user: a login held on the server (:mod:`screener.web.sessions`), or a
trusted proxy's header (:mod:`screener.web.guard`). Every POST carries the visitor's CSRF
token (refused with 403 without it). Users in ``web.admins`` may also send dead-lettered deliveries
again and queue uploads for PACS. Images are read from the spool by the database's path,
never by a name from the request. No handler does blocking work on the event loop: database
work and password hashing run in worker threads, pixels in the model process.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from screener.config import Settings
from screener.db import Database
from screener.ingest.accept import Acceptor
from screener.site.mode import ModeCache
from screener.web.auth import LoginThrottle, parse_users
from screener.web.context import HERE, WebState, login_required
from screener.web.dicomweb import store_instances
from screener.web.guard import BodyLimit, Proxies, SecurityHeaders
from screener.web.login import login, logout, pending_read
from screener.web.modelwork import ModelWork
from screener.web.sessions import SessionStore
from screener.web.stats import commission_page, commission_picture, stats_page, stats_picture
from screener.web.status import retry_exports, status_page
from screener.web.study import enter_pressed, image, review, study_page
from screener.web.upload import upload, upload_page
from screener.web.worklist import find, worklist_page


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
    state = WebState(
        settings=settings,
        db=db,
        users=users,
        proxies=Proxies(settings.web),  # refuses an unsafe trusted_user_header set-up
        admins={name.strip() for name in settings.web.admins},
        store=SessionStore(db, users, settings.web.session_hours, settings.web.idle_minutes),
        throttle=LoginThrottle(),
        templates=Jinja2Templates(directory=str(HERE / "templates")),
        work=model_work or ModelWork(settings),
        site=ModeCache(db, settings),
        acceptor=acceptor,
    )
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(BodyLimit, max_bytes=settings.web.max_upload_mb * 1024 * 1024),
    ]
    app = Starlette(routes=ROUTES, middleware=middleware)
    app.state.web = state
    return app


async def home(request: Request) -> Response:
    return RedirectResponse("/worklist", status_code=303)


#: The site map: each page, and who may see it.
ROUTES = [
    Route("/", home),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/worklist", login_required(worklist_page)),
    Route("/find", login_required(find)),
    Route("/study/{key}", login_required(study_page)),
    # a read sent after the login ended is kept, not lost
    Route("/study/{key}/review", login_required(review, logged_out=pending_read), methods=["POST"]),
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
        login_required(retry_exports, admin="send dead-lettered deliveries again"),
        methods=["POST"],
    ),
    # STOW-RS (dicomweb.accept_stow): its own authentication (Bearer or Basic), no session
    Route("/dicom-web/studies", store_instances, methods=["POST"]),
    Route("/dicom-web/studies/{study}", store_instances, methods=["POST"]),
    Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
]

__all__ = ["BodyLimit", "WebState", "create_app"]  # BodyLimit lives in screener.web.guard
