"""Running the web app: uvicorn in the foreground (``screener web``) or in a thread of
``screener serve``."""

from __future__ import annotations

import signal
import threading

import structlog

from screener.config import Settings
from screener.db import Database
from screener.errors import ConfigError
from screener.ingest.accept import Acceptor
from screener.web.modelwork import ModelWork

log = structlog.get_logger(__name__)


def _server(
    settings: Settings, db: Database, work: ModelWork, acceptor: Acceptor | None = None
) -> object:
    import uvicorn

    from screener.web.app import create_app

    config = uvicorn.Config(
        create_app(settings, db, model_work=work, acceptor=acceptor),
        host=settings.web.host,
        port=settings.web.port,
        log_config=None,  # our own logging; uvicorn's access log stays off (no PHI in URLs)
        access_log=False,
        lifespan="off",
        # X-Forwarded-* are believed from web.trusted_proxies only (screener.web.guard), not
        # from whatever uvicorn's FORWARDED_ALLOW_IPS says
        proxy_headers=False,
        limit_concurrency=64,
    )
    return uvicorn.Server(config)


def serve_forever(settings: Settings, db: Database) -> None:
    """``screener web``: the web app alone, until SIGINT / SIGTERM (uvicorn's handlers)."""
    work = ModelWork(settings)
    server = _server(settings, db, work)
    # uvicorn handles SIGINT / SIGTERM itself, then raises the signal again once it has
    # stopped: these handlers take it then, so the model process is stopped and the exit
    # status is 0 (a stop asked for is not a failure)
    received: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, _frame: received.append(signum))
        for s in (signal.SIGINT, signal.SIGTERM)
    }
    log.info("web_started", host=settings.web.host, port=settings.web.port)
    try:
        server.run()  # type: ignore[attr-defined]
    finally:
        work.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    log.info("web_stopped", signal=signal.Signals(received[0]).name if received else None)


class WebThread:
    """The web app in a thread of ``screener serve`` (uploads queued through the daemon's
    own acceptor); ``stop`` ends it and its model process."""

    def __init__(self, settings: Settings, db: Database, acceptor: Acceptor | None = None) -> None:
        self.settings = settings
        self.work = ModelWork(settings)
        self.server = _server(settings, db, self.work, acceptor)
        self.thread = threading.Thread(target=self._run, name="web", daemon=True)

    def _run(self) -> None:
        self.server.run()  # type: ignore[attr-defined]

    def start(self) -> None:
        self.thread.start()
        for _ in range(200):  # bound: 10 s
            if getattr(self.server, "started", False):
                log.info("web_started", host=self.settings.web.host, port=self.settings.web.port)
                return
            if not self.thread.is_alive():
                break
            self.thread.join(0.05)
        raise ConfigError(
            f"web.port = {self.settings.web.port}: the web worklist could not listen on "
            f"{self.settings.web.host}:{self.settings.web.port} (in use?)"
        )

    def stop(self) -> None:
        self.server.should_exit = True  # type: ignore[attr-defined]
        self.work.stop()  # a request waiting on it is answered at once
        self.thread.join(10)
