"""Prometheus metrics and the health endpoints of ``screener serve`` (``[metrics] port``).

Two kinds of figures:

* **Events of this host's processes**: the instruments of :mod:`screener.runtime.metrics`,
  added up over every process's files at each scrape.
* **The state of the shared database** (queue depth by state, skipped/rejected/failed jobs by
  reason, exports pending/delivered/dead, worker restarts, results by label), read at scrape
  time. They are the same on every host that shares the database: sum the first kind across
  hosts, not the second.

``/healthz`` answers 200 while the process serves HTTP; ``/readyz`` 200 only when the
database answers, the model is loaded (every worker process has loaded the bundle) and the
listener is bound, else 503 with the failed checks (JSON either way), each with a fixed reason
(a check that raises is logged, its text never served).

The HTTP server is bounded: at most :data:`MAX_CONNECTIONS` connections are handled at once
(one thread each); one more is answered ``503 busy`` and closed. A connection silent for
:data:`IDLE_TIMEOUT_SECONDS` (sending nothing, or not reading its answer) is dropped, so idle
connections free their slots within seconds.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from screener.runtime.metrics import multiprocess_mode

log = structlog.get_logger(__name__)


class DatabaseCollector:
    """Gauges read from the shared database at scrape time (see the module docstring)."""

    def __init__(
        self, db: Any, model: dict[str, str] | None, destinations: list[str] | None = None
    ) -> None:
        self.db = db
        self.model = model
        self.destinations = destinations or []  # listed in the gauges even when idle

    def describe(self) -> list[Any]:
        return []  # collected at scrape time only; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

        from screener.views.status import build_report

        if self.model:
            yield InfoMetricFamily("screener_model", "The model bundle loaded", value=self.model)
        try:
            report = build_report(self.db, limit=0, destinations=self.destinations)
        except Exception:  # a scrape must not fail because the database is down
            log.exception("metrics_database_unavailable")
            up = GaugeMetricFamily("screener_database_up", "1 if the database answered")
            up.add_metric([], 0)
            yield up
            return
        up = GaugeMetricFamily("screener_database_up", "1 if the database answered")
        up.add_metric([], 1)
        yield up
        yield _gauge("screener_queue_jobs", "Jobs by state", "state", report.counts)
        reasons = GaugeMetricFamily(
            "screener_jobs_by_reason",
            "Skipped, rejected and failed jobs by reason",
            labels=["state", "reason"],
        )
        for state, by_reason in sorted(report.reasons.items()):
            for reason, n in sorted(by_reason.items()):
                reasons.add_metric([state, reason or "unknown"], n)
        yield reasons
        yield _gauge(
            "screener_exports",
            "Deliveries (SRs, assessments, HL7, FHIR) by state (pending, delivered, dead, shadow)",
            "state",
            report.exports,
        )
        waiting = GaugeMetricFamily(
            "screener_exports_waiting",
            "Deliveries pending or dead-lettered, by channel and destination",
            labels=["channel", "destination", "state"],
        )
        for d in report.destinations:
            for state in ("pending", "dead"):
                waiting.add_metric([d["channel"], d["destination"], state], d[state])
        yield waiting
        yield _gauge(
            "screener_results",
            "Scored frames by label (flagged, not flagged, not assessed)",
            "label",
            report.results,
        )
        yield _gauge(
            "screener_received_recorded",
            "Instances and refusals as the database records them (all hosts)",
            "kind",
            report.received,
        )
        restarts = GaugeMetricFamily(
            "screener_process_restarts", "Worker and stage restarts recorded (all hosts)"
        )
        restarts.add_metric([], report.restarts.get("total", 0))
        yield restarts


def _gauge(name: str, text: str, label: str, values: dict[str, int]) -> Any:
    """One gauge with one label, a sample per key of ``values``."""
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(name, text, labels=[label])
    for key, n in sorted(values.items()):
        family.add_metric([key], n)
    return family


def registry_for(
    db: Any,
    model: dict[str, str] | None,
    drift: Callable[[], Any] | None = None,
    destinations: list[str] | None = None,
) -> Any:
    """The registry a scrape reads: every process's instruments plus the database's gauges,
    and the drift monitor's latest window when ``drift`` gives one (:class:`DriftCollector`)."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if multiprocess_mode():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    registry.register(DatabaseCollector(db, model, destinations))
    if drift is not None:
        registry.register(DriftCollector(drift))
    return registry


class DriftCollector:
    """The drift monitor's latest window (screener.monitor.drift.DriftReport): each signal's
    statistic and threshold (once a window is full), the window's flag rate and size."""

    def __init__(self, latest: Callable[[], Any]) -> None:
        self.latest = latest

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        report = self.latest()
        if report is None:
            return
        if report.signals:  # a full window
            drift = GaugeMetricFamily(
                "screener_drift",
                "Drift statistic of the last window against the bundle's reference, by signal "
                "(KS distance, absolute difference or total-variation distance)",
                labels=["signal"],
            )
            threshold = GaugeMetricFamily(
                "screener_drift_threshold", "Above this the signal has drifted", labels=["signal"]
            )
            for s in report.signals:
                drift.add_metric([s.signal], s.statistic)
                threshold.add_metric([s.signal], s.threshold)
            yield drift
            yield threshold
        if report.flag_rate is not None:
            flag_rate = GaugeMetricFamily(
                "screener_flag_rate", "Share of the last window's films flagged for a second read"
            )
            flag_rate.add_metric([], report.flag_rate)
            yield flag_rate
        films = GaugeMetricFamily("screener_drift_window_films", "Films in the last window")
        films.add_metric([], report.films)
        yield films


class _Forward:
    """Another registry's metrics as one collector (in-process mode)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        yield from self.source.collect()


Check = Callable[[], str | None]  # None when fine, else why not (a fixed sentence, no data)

#: Connections handled at once; Prometheus and a few probes need two or three.
MAX_CONNECTIONS = 8
#: Seconds of silence (nothing sent, or the answer not read) before a connection is dropped.
IDLE_TIMEOUT_SECONDS = 5.0
#: What ``/readyz`` says of a check that raised (the exception goes to the log only).
RAISED_REASONS = {"database": "database unreachable"}

_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n"
)


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them; beyond: 503 and closed."""

    daemon_threads = True
    block_on_close = False  # stop() must not wait on a client that holds its connection open

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_connections: int
    ) -> None:
        super().__init__(address, handler)
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: give the slot back
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        try:
            request.settimeout(1.0)
            request.sendall(_BUSY)
        except OSError:
            pass  # the client went, or does not read: it is closed either way
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that resets or stalls mid-request: not worth a traceback on stderr
        log.debug("metrics_connection_error", exc_info=True)


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``[metrics] host:port`` (a thread)."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: Any,
        checks: dict[str, Check],
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
    ) -> None:
        self.registry = registry
        self.checks = checks
        server = self

        class Handler(BaseHTTPRequestHandler):
            # StreamRequestHandler.setup: settimeout on the connection; a read or a write
            # silent this long raises, and the connection is closed
            timeout = idle_timeout

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                    self._reply(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._reply(200, b'{"alive": true}\n', "application/json")
                elif path == "/readyz":
                    failed = server.failed_checks()
                    body = json.dumps({"ready": not failed, "failed": failed}) + "\n"
                    self._reply(503 if failed else 200, body.encode(), "application/json")
                else:
                    self._reply(404, b"not found: /metrics, /healthz, /readyz\n", "text/plain")

            def _reply(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would flood the log; paths are not logged

        self.httpd = BoundedHTTPServer((host, port), Handler, max_connections)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def failed_checks(self) -> dict[str, str]:
        """Each failed check's fixed reason; a check that raises is logged, never quoted."""
        failed = {}
        for name, check in self.checks.items():
            try:
                why = check()
            except Exception:  # a check that raises has failed; its text may hold a URL or host
                log.warning("readiness_check_raised", check=name, exc_info=True)
                why = RAISED_REASONS.get(name, f"{name} check failed")
            if why:
                failed[name] = why
        return failed

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()
        log.info(
            "metrics_started",
            host=self.httpd.server_address[0],
            port=self.port,
            max_connections=self.httpd.max_connections,
        )

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(10)
