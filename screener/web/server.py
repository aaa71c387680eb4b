"""Running the web app: uvicorn in the foreground (``screener web``) or in a thread of
``screener serve``."""

from __future__ import annotations

import threading

import structlog

from screener.config import Settings
from screener.db import Database
from screener.errors import ConfigError

log = structlog.get_logger(__name__)


def _server(settings: Settings, db: Database) -> object:
    import uvicorn

    from screener.web.app import create_app

    config = uvicorn.Config(
        create_app(settings, db),
        host=settings.web.host,
        port=settings.web.port,
        log_config=None,  # our own logging; uvicorn's access log stays off (no PHI in URLs)
        access_log=False,
        lifespan="off",
        limit_concurrency=64,
    )
    return uvicorn.Server(config)


def serve_forever(settings: Settings, db: Database) -> None:
    server = _server(settings, db)
    log.info("web_started", host=settings.web.host, port=settings.web.port)
    server.run()  # type: ignore[attr-defined]


class WebThread:
    """The web app in a thread of ``screener serve``; ``stop`` ends it."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.server = _server(settings, db)
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
        self.thread.join(10)
