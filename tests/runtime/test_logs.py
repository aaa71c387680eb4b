"""Logging: one JSON object per stderr line from every library, repeated warnings rate-limited."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import logging, warnings
    import structlog
    import screener.runtime.logs
    from screener.config import LoggingSettings

    now = [1000.0]  # the limiter's clock, moved by hand: the window is the production minute
    screener.runtime.logs.configure_logging(
        LoggingSettings(format="json", level="info"), clock=lambda: now[0]
    )
    log = structlog.get_logger("test")
    try:
        raise ValueError("pixel data\\nis truncated")
    except ValueError:
        logging.getLogger("pydicom").exception("cannot decode %s", "frame 1")
    warnings.warn("a library's warning")
    logging.getLogger("pynetdicom").debug("data set dump: PatientName DOE^JOHN")
    logging.getLogger("pydicom").warning("odd tag", extra={"patient_name": "DOE^JOHN"})
    for _ in range(20):
        log.warning("disk_low", free_mb=10)
    now[0] += screener.runtime.logs.REPEAT_WINDOW_SECONDS  # the window has passed
    log.warning("disk_low", free_mb=10)
    log.info("done", patient_id="12345678")
    """
)


def test_every_stderr_line_is_json_and_repeats_are_limited(tmp_path: Path) -> None:
    """stdlib tracebacks and warnings become single JSON lines, and a warning repeated 20 times shows at most twice with its count."""
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "default"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(e, dict) for e in events), lines

    (failure,) = [e for e in events if e["event"] == "cannot decode frame 1"]
    assert failure["level"] == "error" and failure["logger"] == "pydicom"
    assert "Traceback (most recent call last)" in failure["exception"]
    assert "ValueError: pixel data\nis truncated" in failure["exception"]

    (warned,) = [e for e in events if e.get("logger") == "py.warnings"]
    assert "a library's warning" in warned["event"] and warned["level"] == "warning"

    repeated = [e for e in events if e["event"] == "disk_low"]
    assert len(repeated) == 2 and "repeated" not in repeated[0]
    assert repeated[1]["repeated"] == 19

    assert [e["event"] for e in events][-1] == "done"
    assert "DOE" not in proc.stderr and "12345678" not in proc.stderr  # PHI keys and dumps
