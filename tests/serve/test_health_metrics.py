"""Metrics and health: /metrics, /healthz and /readyz of a real ``screener serve``, scraped
while films are pushed over a real association and scored by its worker processes."""

from __future__ import annotations

import json
import re
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

from structlog.testing import capture_logs
from support import ServeProcess, build_dicom, c_store, free_port, serve_env, wait_for

from screener.config import load_settings
from screener.db import Database
from screener.serve.health import HealthServer


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as rsp:
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _value(text: str, name: str, **labels: str) -> float:
    """One sample's value from the exposition text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = ",".join(sorted(p for p in (m.group(2) or "").split(",") if p))
        if got == want:
            return float(m.group(3))
    return 0.0


def test_metrics_move_during_an_end_to_end_run(tmp_path: Path) -> None:
    """/healthz, /readyz and /metrics of a running serve answer, and the counters and histograms
    move with the films sent and scored."""
    port, mport, db = free_port(), free_port(), tmp_path / "s.db"
    env = serve_env(
        tmp_path,
        f"sqlite:///{db}",
        port,
        screener_metrics_port=str(mport),
        screener_worker_processes="2",
    )
    serve = ServeProcess(tmp_path, env).start()
    try:
        assert _get(mport, "/healthz")[0] == 200
        wait_for(lambda: _get(mport, "/readyz")[0] == 200, timeout=120, interval=0.5)
        before = _get(mport, "/metrics")[1]
        assert (
            _value(before, "screener_instances_received_total", source="dicom", outcome="queued")
            == 0
        )
        assert 'screener_model_info{name="screener-default"' in before

        films = []
        for i in range(4):
            films.append(tmp_path / f"film{i}.dcm")
            films[-1].write_bytes(build_dicom(rows=128, columns=128, seed=i))
        sr = tmp_path / "sr.dcm"  # a storage SOP class that is no image: refused 0x0122
        sr.write_bytes(build_dicom(sop_class_uid="1.2.840.10008.5.1.4.1.1.88.11", pixel_data=False))
        assert c_store(port, films) == [0, 0, 0, 0]
        assert c_store(port, [sr]) == [0x0122]

        def scored() -> str | None:
            # a worker observes its batch after the batch's commit: the database's count of
            # done jobs can show 4 a moment before the worker's histograms do
            text = _get(mport, "/metrics")[1]
            done = _value(text, "screener_queue_jobs", state="done") == 4
            observed = _value(text, "screener_job_latency_seconds_count") >= 4
            return text if done and observed else None

        after = wait_for(scored, timeout=180, interval=0.5)
        assert (
            _value(after, "screener_instances_received_total", source="dicom", outcome="queued")
            == 4
        )
        assert (
            sum(
                _value(after, "screener_instances_refused_total", reason=r)
                for r in re.findall(r'screener_instances_refused_total\{reason="([^"]+)"\}', after)
            )
            == 1
        )
        assert _value(after, "screener_batch_size_sum") == 4  # from the worker processes
        assert _value(after, "screener_inference_seconds_count") >= 1
        assert _value(after, "screener_job_latency_seconds_count") == 4
        assert _value(after, "screener_queue_jobs", state="queued") == 0
        assert _value(after, "screener_database_up") == 1
        assert "screener_exports" in after and "screener_process_restarts" in after
    finally:
        assert serve.terminate() == 0, serve.log()[-3000:]
    started = [json.loads(x) for x in serve.log().splitlines() if '"metrics_started"' in x]
    assert started and started[0]["host"] == "127.0.0.1"
    assert not list(Path("/tmp").glob(f"screener-metrics-*/*_{serve.proc.pid}.db"))  # type: ignore[union-attr]


def test_readyz_says_which_check_failed() -> None:
    """503 with the failed check's reason; 200 once it passes; unknown paths 404."""
    state = {"listener": "the DICOM listener is not bound"}
    server = HealthServer(
        "127.0.0.1", 0, registry=None, checks={"listener": lambda: state["listener"]}
    )
    server.start()
    try:
        code, body = _get(server.port, "/readyz")
        assert code == 503 and json.loads(body) == {
            "ready": False,
            "failed": {"listener": "the DICOM listener is not bound"},
        }
        state["listener"] = None  # type: ignore[assignment]
        assert _get(server.port, "/readyz") == (200, '{"ready": true, "failed": {}}\n')
        assert _get(server.port, "/nowhere")[0] == 404
    finally:
        server.stop()


def _answers(port: int, path: str) -> int | None:
    """The status code, or None when the connection was refused, reset or timed out."""
    try:
        return _get(port, path)[0]
    except OSError:  # URLError, ConnectionResetError, TimeoutError
        return None


def _handler_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def test_idle_connections_are_bounded_dropped_and_do_not_stop_healthz() -> None:
    """Twelve silent clients hold at most 4 handler threads, are dropped after the idle
    timeout, and /healthz answers meanwhile (at once or once a slot frees)."""
    server = HealthServer(
        "127.0.0.1", 0, registry=None, checks={}, max_connections=4, idle_timeout=2.0
    )
    server.start()
    idle = []
    try:
        for _ in range(12):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        busy = wait_for(lambda: _handler_threads() >= 4 and _handler_threads(), timeout=5)
        assert busy == 4  # not one thread per connection
        assert wait_for(lambda: _answers(server.port, "/healthz") == 200, timeout=10)
        for conn in idle:  # each is answered "busy" or closed when its silence runs out
            data = b""
            while chunk := conn.recv(4096):  # b"" once the server closed it; 10 s at most
                data += chunk
            assert data == b"" or data.startswith(b"HTTP/1.0 503 Service Unavailable"), data
        wait_for(lambda: _handler_threads() == 0, timeout=5)
        assert _answers(server.port, "/healthz") == 200
    finally:
        for conn in idle:
            conn.close()
        server.stop()


def test_a_client_that_stops_mid_request_is_dropped() -> None:
    """A client that sends half a request and falls silent is closed after the idle timeout,
    freeing the only slot for /healthz."""
    server = HealthServer(
        "127.0.0.1", 0, registry=None, checks={}, max_connections=1, idle_timeout=1.0
    )
    server.start()
    try:
        conn = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        conn.sendall(b"GET /healthz HTTP/1.0\r\n")  # the request line, then nothing
        wait_for(lambda: _handler_threads() == 1, timeout=5)
        assert wait_for(lambda: _answers(server.port, "/healthz") == 200, timeout=10)
        assert conn.recv(4096) == b""  # closed by the server, nothing answered
        conn.close()
    finally:
        server.stop()


def test_readyz_gives_a_fixed_reason_when_the_database_is_gone(tmp_path: Path) -> None:
    """With the daemon's own checks and nothing listening at the database's address, /readyz
    says "database unreachable" (no exception text, host or port) and logs the exception."""
    from screener.serve.daemon import _health_server

    gone = free_port()
    db = Database(f"postgresql+psycopg://screener@127.0.0.1:{gone}/screener", create=False)
    settings = load_settings(None, environ={"SCREENER_METRICS_PORT": "0"})
    daemon = SimpleNamespace(db=db, worker_processes=None, listener=None, model={})
    server = _health_server(settings, daemon)  # type: ignore[arg-type]
    server.start()
    try:
        with capture_logs() as logs:
            code, body = _get(server.port, "/readyz")
        assert code == 503
        assert json.loads(body) == {"ready": False, "failed": {"database": "database unreachable"}}
        assert str(gone) not in body and "127.0.0.1" not in body
        raised = [e for e in logs if e["event"] == "readiness_check_raised"]
        assert raised and raised[0]["check"] == "database" and raised[0]["exc_info"]
        code, text = _get(server.port, "/metrics")
        assert code == 200 and "screener_database_up 0.0" in text
    finally:
        server.stop()
        db.dispose()
