"""A DICOM listener open to any caller (beyond loopback, no AE allow-list, no TLS) is named: a
start-up warning with the facts, and a line in ``screener status`` (text and JSON) while that
serve process runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from support import ServeProcess, free_port, run_screener, serve_env

from screener.config import load_settings
from screener.ingest.exposure import is_loopback, listener_exposure, warn_if_open


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),  # all of 127.0.0.0/8
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("", False),  # every interface
        ("::", False),
        ("10.1.2.3", False),
        ("pacs-gateway.example.org", False),  # a name may resolve anywhere
    ],
)
def test_loopback_means_this_machine_only(host: str, loopback: bool) -> None:
    """127.0.0.0/8, ::1 and localhost are loopback; wildcard, other addresses and names not."""
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("env", "open_"),
    [
        ({}, True),  # the defaults: 0.0.0.0, any caller, plain TCP
        ({"SCREENER_LISTENER_HOST": "127.0.0.1"}, False),
        ({"SCREENER_LISTENER_ALLOWED_CALLING_AETS": '["PACS"]'}, False),
        ({"SCREENER_LISTENER_TLS": "true"}, False),
    ],
)
def test_open_needs_all_three(env: dict[str, str], open_: bool) -> None:
    """Open only when beyond loopback with neither an allow-list nor TLS; each control closes it."""
    settings = load_settings(None, environ=env)
    exposure = listener_exposure(settings.listener, settings.tls)
    assert exposure.open is open_
    with capture_logs() as logs:
        warn_if_open(settings.listener, settings.tls)
    warned = [e for e in logs if e["event"] == "listener_open_to_any_caller"]
    assert len(warned) == (1 if open_ else 0)
    if open_:
        assert warned[0]["log_level"] == "warning"
        assert warned[0]["host"] == "0.0.0.0" and warned[0]["port"] == 11112
        assert warned[0]["allowed_calling_aets"] == 0 and warned[0]["tls"] is False


def _status(env: dict[str, str], cwd: Path) -> tuple[str, dict[str, Any]]:
    text = run_screener(env, cwd, "status")
    data = run_screener(env, cwd, "status", "--json")
    assert text.returncode == 0 and data.returncode == 0, text.stderr + data.stderr
    return text.stdout, json.loads(data.stdout)


def test_serve_warns_and_status_names_an_open_listener(tmp_path: Path) -> None:
    """A serve listening on 0.0.0.0 for anyone logs the warning and status shows it; once it
    stops, and for a serve with an allow-list, there is neither."""
    port, db = free_port(), tmp_path / "s.db"
    env = serve_env(
        tmp_path, f"sqlite:///{db}", port,
        screener_listener_host="0.0.0.0", screener_worker_enabled="false",
    )  # fmt: skip
    serve = ServeProcess(tmp_path, env).start()
    try:
        (warning,) = [
            json.loads(line)
            for line in serve.log().splitlines()
            if '"listener_open_to_any_caller"' in line
        ]
        assert warning["level"] == "warning"
        assert (warning["host"], warning["port"], warning["tls"]) == ("0.0.0.0", port, False)
        text, data = _status(env, tmp_path)
        (line,) = [x for x in text.splitlines() if x.startswith("WARNING:")]
        assert f"listens on 0.0.0.0:{port} for any calling AE title without TLS" in line
        (exposed,) = data["exposed_listeners"]
        assert exposed["port"] == port and exposed["open"] is True
        assert exposed["allowed_calling_aets"] == 0 and exposed["loopback_only"] is False
    finally:
        assert serve.terminate() == 0
    text, data = _status(env, tmp_path)
    assert "WARNING:" not in text and data["exposed_listeners"] == []

    allowed = {**env, "SCREENER_LISTENER_ALLOWED_CALLING_AETS": '["PACS"]'}
    serve = ServeProcess(tmp_path, allowed).start()
    try:
        assert "listener_open_to_any_caller" not in serve.log()
        text, data = _status(allowed, tmp_path)
        assert "WARNING:" not in text and data["exposed_listeners"] == []
        running = [p for p in data["processes"] if p["state"] == "running"]
        assert running[0]["details"]["listener_exposure"]["allowed_calling_aets"] == 1
    finally:
        assert serve.terminate() == 0
