"""Everyday failures end in one line naming the setting, the value and the fix, never a
traceback; exit status 2 for a setting that cannot work, 1 for an operation that failed."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support import free_port

UNREACHABLE_PG = "postgresql+psycopg://screener@127.0.0.1:1/screener"


def _screener(
    tmp_path: Path, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    return subprocess.run(
        [sys.executable, "-m", "screener.cli", "--config", str(empty), *args],
        cwd=cwd or tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _one_line(run: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    assert run.returncode == code, (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("screener "), last
    for word in words:
        assert word in last, (word, last)
    return last


def test_a_port_in_use_names_the_setting(tmp_path: Path) -> None:
    """serve on a port already in use exits 2 with one line naming listener.port and the cause."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        run = _screener(
            tmp_path, "serve", "--no-worker", "--set", "listener.host=127.0.0.1", "--set",
            f"listener.port={port}", "--set", f"storage.spool_dir={tmp_path / 'spool'}",
            "--set", f"database.url=sqlite:///{tmp_path / 'db.sqlite'}",
        )  # fmt: skip
    _one_line(run, 2, "configuration error", f"listener.port = {port}", "Address already in use")


def test_an_unusable_spool_names_the_setting(tmp_path: Path) -> None:
    """serve with a spool folder that cannot be created exits 2 with one line naming
    storage.spool_dir."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    run = _screener(
        tmp_path, "serve", "--no-worker", "--set", f"storage.spool_dir={blocker / 'spool'}",
        "--set", f"database.url=sqlite:///{tmp_path / 'db.sqlite'}",
        "--set", f"listener.port={free_port()}",
    )  # fmt: skip
    _one_line(run, 2, "storage.spool_dir", str(blocker / "spool"), "cannot create the folder")


@pytest.mark.parametrize(
    "args",
    [["serve", "--no-worker"], ["status"], ["worklist"], ["db", "upgrade"]],
    ids=lambda a: a[0],
)
def test_an_unreachable_postgresql_is_one_line(tmp_path: Path, args: list[str]) -> None:
    """Each command against an unreachable PostgreSQL exits 1 with one line naming the address and
    database.url."""
    run = _screener(tmp_path, "--set", f"database.url={UNREACHABLE_PG}", *args)
    _one_line(run, 1, "cannot use the database at", "127.0.0.1:1", "database.url")


def test_an_unknown_host_is_one_line(tmp_path: Path) -> None:
    """echo to a host that does not resolve exits 1 with one line naming the host and port."""
    run = _screener(tmp_path, "echo", "nohost.invalid", "104", "--timeout", "5")
    _one_line(run, 1, "nohost.invalid:104", "cannot connect")


@pytest.mark.parametrize("command", ["worklist", "show", "status", "stats", "exports", "review"])
def test_read_only_commands_in_the_wrong_folder_create_nothing(
    tmp_path: Path, command: str
) -> None:
    """No screener.toml here: the default var/screener.db does not exist and is not created."""
    wrong = tmp_path / "elsewhere"
    wrong.mkdir()
    args = {
        "show": ["show", "1.2.3"],
        "review": ["review", "1.2.3", "--agree"],
        "exports": ["exports", "list"],
    }.get(command, [command])
    run = subprocess.run(
        [sys.executable, "-m", "screener.cli", *args],
        cwd=wrong, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    _one_line(run, 1, "no database at", str(wrong / "var" / "screener.db"))
    assert list(wrong.iterdir()) == []
    typo = _screener(tmp_path, "--set", "database.url=sqlite:////nonexistent/dir/x.db", *args)
    _one_line(typo, 1, "/nonexistent/dir/x.db")
    assert not Path("/nonexistent").exists()


def test_a_tensorflow_command_prints_its_answer_not_tensorflows_start_up(tmp_path: Path) -> None:
    """No absl/oneDNN/cudart/cuInit lines: stderr is JSON log lines only, GPU or not said once."""
    import json

    from support import data_root

    film = data_root() / "chest_xray" / "train" / "NORMAL" / "IM-0115-0001.jpeg"
    if not film.is_file():
        pytest.skip(f"training film not found at {film} (SCREENER_DATA)")
    run = _screener(tmp_path, "--set", "logging.format=json", "predict", str(film))
    assert run.returncode == 0, run.stderr
    events = [json.loads(line)["event"] for line in run.stderr.strip().splitlines()]
    assert events.count("tensorflow_ready") == 1 and "bundle_loaded" in events
    assert run.stdout.splitlines()[-1].endswith("normal")


def test_a_database_password_never_reaches_a_message(tmp_path: Path) -> None:
    """The database password is masked in the one-line error and appears nowhere in the output."""
    run = _screener(
        tmp_path,
        "--set",
        "database.url=postgresql+psycopg://screener:s3cret@127.0.0.1:1/x",
        "status",
    )
    last = _one_line(run, 1, "cannot use the database at", "screener:***@127.0.0.1:1/x")
    assert "s3cret" not in run.stderr + run.stdout and "s3cret" not in last
