"""Running the web app: uvicorn in the foreground (``screener web``) or in a thread of
``screener serve``.

A client cannot hold the server with sockets that say nothing: uvicorn's HTTP/1.1 protocol
(h11) is given a header-read timeout (``web.header_timeout_seconds``: complete request
headers within that long of the connection opening, or of a kept-alive connection's next
request starting, or it is closed) and a per-client limit (``web.max_connections_per_client``
connections from one TCP peer address; one more is closed at once). uvicorn's own
``limit_concurrency`` (answer 503 to every request beyond N connections) counts idle
connections too, so it is set high enough not to be the lever.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from typing import ClassVar

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

from screener.config import Settings, WebSettings
from screener.db import Database
from screener.errors import ConfigError
from screener.ingest.accept import Acceptor
from screener.web.modelwork import ModelWork

log = structlog.get_logger(__name__)

#: uvicorn's cap on connections (and on requests in flight) before it answers 503: a
#: backstop, above what the per-client limit lets a few clients hold
CONCURRENCY_LIMIT = 512
#: a refusal or timeout is logged at most once a minute per client address (a flood of
#: them must not become a flood of log lines)
LOG_EVERY_SECONDS = 60.0


class _Quiet:
    """Counts an event per client address and says when to log it: at the first, then at
    most once every :data:`LOG_EVERY_SECONDS` with the number since the last line."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def due(self, event: str, host: str) -> int:
        """How many to report now (0: stay quiet)."""
        now = time.monotonic()
        last, count = self._last.get((event, host), (-LOG_EVERY_SECONDS, 0))
        if now - last < LOG_EVERY_SECONDS:
            self._last[(event, host)] = (last, count + 1)
            return 0
        if len(self._last) > 4096:  # bounded: forget the addresses seen so far
            self._last.clear()
        self._last[(event, host)] = (now, 0)
        return count + 1


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header-read timeout and a per-client connection limit;
    :func:`guarded_protocol` makes one with the settings' values."""

    header_timeout: ClassVar[float] = 10.0
    per_client: ClassVar[int] = 16
    quiet: ClassVar[_Quiet] = _Quiet()

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = _peer_host(self)  # the TCP peer: behind a proxy, the proxy
        if host is not None:
            held = sum(1 for c in self.connections if _peer_host(c) == host)  # this one too
            if held > self.per_client:
                self._note("web_client_connection_limit", host, held=held - 1)
                transport.close()
                return
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # a kept-alive connection's next request has begun
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request's headers are in
            self._cancel_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.client:
            self._note("web_header_timeout", self.client[0], seconds=self.header_timeout)
        self.transport.close()

    def _note(self, event: str, host: str, **facts: object) -> None:
        count = self.quiet.due(event, host)
        if count:
            log.warning(event, client=host, times=count, **facts)


def _peer_host(protocol: object) -> str | None:
    client = getattr(protocol, "client", None)
    return str(client[0]) if client else None


def guarded_protocol(web: WebSettings) -> type[GuardedH11Protocol]:
    """The protocol class uvicorn builds each connection with, for these settings."""

    class Protocol(GuardedH11Protocol):
        header_timeout = web.header_timeout_seconds
        per_client = web.max_connections_per_client
        quiet = _Quiet()

    return Protocol


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
        http=guarded_protocol(settings.web),
        limit_concurrency=CONCURRENCY_LIMIT,
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
