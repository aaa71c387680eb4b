"""The daemon's processes: none outlives ``screener serve``, a dead worker is restarted and
recorded, a crash loop ends ``serve`` non-zero, and an idle daemon stops at once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import (
    ServeProcess,
    build_dicom,
    c_store,
    free_port,
    multipart_form,
    run_screener,
    serve_env,
    wait_for,
)

pytestmark = pytest.mark.slow


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process (from /proc)."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int) -> list[int]:
    table = _process_table()
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, _state) in table.items():
            if ppid == parent:
                found.append(child)
                todo.append(child)
    return found


def _alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (a zombie waiting to be reaped has finished)."""
    table = _process_table()
    return [pid for pid in pids if pid in table and table[pid][1] != "Z"]


def _accepted(port: int, client_port: int) -> bool:
    """Whether the connection from ``client_port`` to our ``port`` has been accepted: in
    /proc/net/tcp a socket still in the listen queue has no inode, an accepted one has."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == client_port:
            return inode != "0"
    return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _worker_pid(serve: ServeProcess) -> int:
    """The worker process: serve's child that is not multiprocessing's resource tracker."""
    assert serve.proc is not None
    table = _process_table()
    children = [
        pid
        for pid, (ppid, _state) in table.items()
        if ppid == serve.proc.pid and "resource_tracker" not in _cmdline(pid)
    ]
    assert len(children) == 1, f"expected one worker process, found {children}"
    return children[0]


def _events(serve: ServeProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in serve.log().splitlines() if line.startswith("{")]


def test_no_child_survives_a_sigkilled_serve(
    tmp_path: Path, serve_process: Callable[..., ServeProcess], sqlite_url: str
) -> None:
    """After kill -9 of `screener serve`, its worker, decode, resource-tracker and web model
    processes are gone within 15 s (the web model process is started by an upload, from a
    request's thread: it watches serve's pid)."""
    web_port = free_port()
    env = serve_env(
        tmp_path,
        sqlite_url,
        free_port(),
        screener_web_port=str(web_port),
        screener_web_trusted_user_header="X-Remote-User",
    )
    serve = serve_process(env).start()
    assert serve.proc is not None
    wait_for(lambda: "worker_started" in serve.log(), 120)
    _upload_a_film(web_port)
    family = _descendants(serve.proc.pid)
    names = " | ".join(_cmdline(pid) for pid in family)
    # the worker, its decode process, multiprocessing's resource tracker, the web model process
    assert len(family) >= 4, f"expected at least 4 children, found: {names}"
    assert "resource_tracker" in names
    model = [e["pid"] for e in _events(serve) if e["event"] == "web_model_process_started"]
    assert model and model[0] in family
    serve.proc.kill()
    serve.proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while _alive(family) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _alive(family)
    try:
        assert not left, f"children outlived serve: {[_cmdline(p) for p in left]}"
    finally:
        for pid in left:
            os.kill(pid, signal.SIGKILL)


def _upload_a_film(web_port: int) -> None:
    """Score a small PNG on the upload page, as a user behind a trusted proxy."""
    import http.client
    import io
    import re

    import numpy as np
    from PIL import Image

    headers = {"X-Remote-User": "carol"}
    conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=120)
    try:
        conn.request("GET", "/upload", headers=headers)
        page = conn.getresponse()
        cookie = page.getheader("set-cookie", "").split(";")[0]
        token = re.search(rb'name="csrf" value="([^"]+)"', page.read())
        assert token, "no CSRF token on the upload page"
        png = io.BytesIO()
        Image.fromarray(np.random.default_rng(1).integers(0, 255, (128, 128), np.uint8)).save(
            png, format="PNG"
        )
        body, content_type = multipart_form(
            {"csrf": token.group(1).decode()}, png.getvalue(), "f.png"
        )
        conn.request(
            "POST",
            "/upload",
            body=body,
            headers={
                **headers,
                "Cookie": cookie,
                "Content-Type": content_type,
            },
        )
        answer = conn.getresponse()
        text = answer.read()
        # noise: outside the model's domain, said as such
        assert answer.status == 200 and b"outside the model's domain" in text, text[-800:]
    finally:
        conn.close()


@pytest.mark.timeout(300)  # 44 s on a loaded 2-core host
def test_dead_worker_is_restarted_recorded_and_scores_again(
    tmp_path: Path, serve_process: Callable[..., ServeProcess], db_url: str
) -> None:
    """A worker killed by SIGKILL (as the OOM killer does) is restarted, `screener status`
    shows the restart, and a film sent afterwards is scored."""
    port = free_port()
    env = serve_env(tmp_path, db_url, port, SCREENER_WORKER_RESTART_BACKOFF_SECONDS="0.2")
    serve = serve_process(env).start()
    wait_for(lambda: "worker_started" in serve.log(), 120)
    first = _worker_pid(serve)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: "worker_process_restarted" in serve.log(), 30)
    wait_for(lambda: serve.log().count('"worker_started"') >= 2, 120)
    second = _worker_pid(serve)
    assert second != first
    died = [e for e in _events(serve) if e["event"] == "worker_process_died"]
    assert died and died[0]["why"] == "killed by SIGKILL"

    film = tmp_path / "film.dcm"
    film.write_bytes(build_dicom(rows=256, columns=256))
    assert c_store(port, [film]) == [0x0000]

    def scored() -> bool:
        out = run_screener(env, tmp_path, "status", "--json")
        return bool(json.loads(out.stdout)["counts"]["done"] == 1)

    wait_for(scored, 60, interval=0.5)
    report = json.loads(run_screener(env, tmp_path, "status", "--json").stdout)
    assert report["restarts"]["total"] == 1
    assert report["recent_restarts"][0]["process"] == "worker-0"
    assert "SIGKILL" in report["recent_restarts"][0]["why"]
    text = run_screener(env, tmp_path, "status").stdout
    assert "process restarts: 1" in text
    assert serve.terminate() == 0


def test_crash_loop_ends_serve_with_a_failure_status(
    tmp_path: Path, serve_process: Callable[..., ServeProcess], sqlite_url: str, model_bundle: Path
) -> None:
    """A worker that dies at every start (an unreadable model) ends `serve` with status 3
    after worker.max_restarts, so that systemd restarts it."""
    broken = tmp_path / "broken-bundle"
    shutil.copytree(model_bundle, broken)
    for model in broken.glob("*.keras"):
        model.write_bytes(b"not a model")
    env = serve_env(
        tmp_path,
        sqlite_url,
        free_port(),
        SCREENER_MODEL_BUNDLE=str(broken),
        SCREENER_WORKER_MAX_RESTARTS="1",
        SCREENER_WORKER_RESTART_BACKOFF_SECONDS="0.1",
    )
    serve = serve_process(env).start()
    assert serve.proc is not None
    assert serve.proc.wait(timeout=240) == 3
    events = [e["event"] for e in _events(serve)]
    assert events.count("worker_process_died") >= 1
    assert "daemon_crash_loop" in events
    assert events[-1] == "daemon_stopped"


def test_idle_serve_stops_at_once_after_a_port_probe(
    tmp_path: Path, serve_process: Callable[..., ServeProcess], sqlite_url: str
) -> None:
    """A connection that closed without associating (a port probe) does not hold up SIGTERM."""
    port = free_port()
    serve = serve_process(serve_env(tmp_path, sqlite_url, port)).start("--no-worker")
    assert serve.proc is not None
    with socket.create_connection(("127.0.0.1", port), timeout=5) as probe:
        # the listener has taken the connection (it is no longer in the accept queue)
        wait_for(lambda: _accepted(port, probe.getsockname()[1]), 30)
    started = time.monotonic()
    serve.proc.terminate()
    assert serve.proc.wait(timeout=60) == 0
    elapsed = time.monotonic() - started
    # the listener used to wait its whole 30 s grace for the probe's association thread
    assert elapsed < 10, f"serve took {elapsed:.1f} s to stop"


def test_exporter_thread_that_ends_is_restarted_and_recorded(
    make_settings: Callable[..., Any], sqlite_url: str
) -> None:
    """The supervisor starts the exporter again when its thread has ended, and records it."""
    from sqlalchemy import select

    from screener.db import AuditEvent
    from screener.serve.daemon import compose

    settings = make_settings(
        sqlite_url,
        listener__enabled=False,
        watch__enabled=False,
        worker__enabled=False,
        export__destinations=f"PACS@127.0.0.1:{free_port()}",
    )
    daemon = compose(settings)
    daemon.start()
    try:
        exporter = daemon.exporter
        assert exporter is not None and exporter.running
        thread = exporter._thread  # end the loop without stop(), as a thread that died
        assert thread is not None
        exporter._stop.set()
        exporter.wake.set()
        thread.join(10)
        assert not exporter.running
        daemon.supervise()
        assert exporter.running
        with daemon.db.transaction() as session:
            restarts = session.scalars(
                select(AuditEvent).where(AuditEvent.event == "process_restarted")
            ).all()
            assert [(a.reason, a.message) for a in restarts] == [
                ("exporter", "the exporter thread ended")
            ]
    finally:
        daemon.stop()
