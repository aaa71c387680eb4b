"""Metrics and health: /metrics, /healthz and /readyz of a real ``screener serve``, scraped
while films are pushed over a real association and scored by its worker processes."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

from support import ServeProcess, build_dicom, c_store, free_port, serve_env, wait_for

from screener.metrics import HealthServer


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
