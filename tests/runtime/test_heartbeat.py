"""``screener status`` says whether screener runs (heartbeats in the database), and a spool
used with another database is not silently screened again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import ServeProcess, build_dicom, c_store, free_port, run_screener, serve_env, wait_for


def _status(env: dict[str, str], cwd: Path) -> tuple[str, dict[str, Any]]:
    text = run_screener(env, cwd, "status")
    data = run_screener(env, cwd, "status", "--json")
    assert text.returncode == 0 and data.returncode == 0, text.stderr + data.stderr
    return text.stdout, json.loads(data.stdout)


@pytest.mark.timeout(300)  # 46 s on a loaded 2-core host
def test_status_tells_running_from_stopped_from_killed(tmp_path: Path) -> None:
    """screener status says RUNNING for a live serve and its worker, stopped cleanly after SIGTERM,
    and SILENT with no clean stop after SIGKILL."""
    port, db = free_port(), tmp_path / "s.db"
    env = serve_env(tmp_path, f"sqlite:///{db}", port, screener_metrics_heartbeat_seconds="1")
    serve = ServeProcess(tmp_path, env).start()
    try:
        film = tmp_path / "film.dcm"
        film.write_bytes(build_dicom())
        assert c_store(port, [film]) == [0]

        def both_running() -> str | None:
            text, _ = _status(env, tmp_path)
            return text if "worker on" in text and "last C-STORE" in text else None

        text = wait_for(both_running, timeout=120, interval=0.5)
        assert text.splitlines()[0] == "screener: RUNNING (1 serve process)"
        serve_line = next(x for x in text.splitlines() if x.startswith("  serve on"))
        assert f"listening SCREENER@127.0.0.1:{port}" in serve_line
        assert "model screener-default 0.1.0+" in serve_line and "spool free MB" in serve_line
        assert "workers 1/1" in serve_line
    finally:
        assert serve.terminate() == 0
    text, data = _status(env, tmp_path)
    assert text.startswith("screener: NOT RUNNING (last heartbeat") and "stopped cleanly" in text
    assert {p["state"] for p in data["processes"]} == {"stopped"}

    serve = ServeProcess(tmp_path, env).start()
    wait_for(lambda: _status(env, tmp_path)[0].startswith("screener: RUNNING"), 60, 0.5)
    serve.kill()  # SIGKILL: no clean stop is recorded; its workers die with it

    def silent() -> str | None:  # once more than 3 beats of 1 s have been missed
        text, _ = _status(env, tmp_path)
        return text if "SILENT" in text else None

    text = wait_for(silent, 60, 0.5)
    assert text.startswith("screener: NOT RUNNING") and "no clean stop" in text, text


def test_a_spool_of_another_database_is_refused_unless_adopted(tmp_path: Path) -> None:
    """serve refuses in one line a spool holding another database's files, and with --adopt-spool
    recovers them into its own."""
    port = free_port()
    first = serve_env(
        tmp_path, f"sqlite:///{tmp_path / 'first.db'}", port, screener_worker_enabled="false"
    )
    serve = ServeProcess(tmp_path, first).start()
    film = tmp_path / "film.dcm"
    film.write_bytes(build_dicom())
    assert c_store(port, [film]) == [0]
    assert serve.terminate() == 0

    second = {**first, "SCREENER_DATABASE_URL": f"sqlite:///{tmp_path / 'second.db'}"}
    refused = run_screener(second, tmp_path, "serve")
    assert refused.returncode == 2, refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert "belongs to another database" in last and "--adopt-spool" in last
    assert "Traceback" not in refused.stderr

    serve = ServeProcess(tmp_path, second).start("--adopt-spool")
    assert serve.terminate() == 0
    assert '"instances_recovered": 1' in serve.log()


def test_workers_without_a_serve_are_not_called_running() -> None:
    """Worker heartbeats without a serve process are reported as NO SERVE PROCESS RUNNING, each
    worker named with its host and device."""
    from screener.views.status import render_processes

    worker = {
        "component": "worker", "host": "gpu1", "pid": 7, "state": "running",
        "seconds_since_beat": 2.0, "beat_at": "2026-11-28T09:00:00+00:00",
        "details": {"model": "screener-default 0.1.0", "device": "gpu:0"},
    }  # fmt: skip
    lines = render_processes([worker])
    assert lines[0].startswith("screener: NO SERVE PROCESS RUNNING (1 worker process running")
    assert "worker on gpu1 pid 7: RUNNING" in lines[1] and "device gpu:0" in lines[1]
