"""The issue's own scenario through the real CLI: `screener serve`, storescu, `screener status`, `screener echo`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from support import ServeProcess, dcmtk_tool, free_port, run_screener, serve_env, storescu

pytestmark = pytest.mark.skipif(
    dcmtk_tool("storescu") is None, reason="dcmtk (storescu) not installed"
)


def test_serve_storescu_status(
    db_url: str,
    tmp_path: Path,
    serve_process: Callable[[dict[str, str]], ServeProcess],
    dicom_dir: Path,
) -> None:
    """Every shared file sent by storescu is accepted; `screener status` shows 13 queued, 14 skipped with reasons."""
    port = free_port()
    env = serve_env(tmp_path, db_url, port)
    daemon = serve_process(env).start("--no-worker")
    assert (
        run_screener(env, tmp_path, "echo", "127.0.0.1", str(port), "--aet", "SCREENER").returncode
        == 0
    )
    files = sorted(str(p) for p in dicom_dir.glob("nih_dx_header_variants/*.dcm"))
    files += sorted(str(p) for p in dicom_dir.glob("siim_chest_cr/*.dcm"))
    files += sorted(str(p) for p in dicom_dir.glob("wg04_nonchest/*.dcm"))
    storescu(port, files)
    status = run_screener(env, tmp_path, "status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["counts"]["queued"] == 13 and report["counts"]["skipped"] == 14
    assert report["received"]["instances"] == 27
    assert report["oldest_queued_age_seconds"] >= 0
    text = run_screener(env, tmp_path, "status").stdout
    assert "selection:body_part_examined" in text and "queued" in text
    assert daemon.terminate() == 0


def test_echo_to_nobody_fails(tmp_path: Path) -> None:
    """`screener echo` to a port where nothing listens exits 1 with a message."""
    result = run_screener({}, tmp_path, "echo", "127.0.0.1", str(free_port()), "--timeout", "3")
    assert result.returncode == 1 and "association failed" in result.stdout
