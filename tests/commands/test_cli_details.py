"""The command line's small promises: help for every option, values checked, TOML lists in
--set, and a listener that can insist on being called by its own AE title."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from support import ServeProcess, dcmtk_tool, free_port, serve_env

from screener.cli import build_parser
from screener.config import load_settings


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_option_and_argument_has_help() -> None:
    """Every option and argument of every subcommand has a help text."""
    missing = [
        f"{name} {action.dest}"
        for name, sub in _subparsers(build_parser()).items()
        for action in sub._actions
        if action.help is None and not isinstance(action, argparse._HelpAction)
    ]
    assert missing == []


def test_help_texts_read_as_text() -> None:
    """The --help output of the CLI reads as plain text: no reST markup, no doubled percent signs,
    formats spelt out."""

    def help_of(*args: str) -> str:
        run = subprocess.run(
            [sys.executable, "-m", "screener.cli", *args, "--help"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0
        return run.stdout

    top = help_of()
    assert "``" not in top and "/etc/screener/screener.toml" in top
    assert "95% CI" in help_of("evaluate") and "%%" not in help_of("evaluate")
    assert "YYYY-MM-DD" in help_of("rescan")
    assert "90m" in help_of("worklist")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit", "-1"], "whole number"),
        (["--min-prob", "1.5"], "probability from 0 to 1"),
        (["--since", "yesterday"], "90m, 24h or 7d"),
    ],
)
def test_worklist_refuses_values_that_cannot_mean_anything(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """worklist refuses a negative limit, a probability outside 0..1 or an unreadable --since
    with a usage error (exit 2) saying what it expects."""
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["worklist", *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_worklist_since_takes_minutes() -> None:
    """worklist --since 90m means 90 minutes before now."""
    args = build_parser().parse_args(["worklist", "--since", "90m"])
    from screener.db import utcnow

    minutes = (utcnow() - args.since).total_seconds() / 60
    assert 89.9 < minutes < 91


def test_set_takes_a_toml_list_or_a_comma_list() -> None:
    """A list setting given with --set takes a TOML list or a comma-separated list alike."""
    for raw in ('["MODALITY1", "CT2"]', "MODALITY1,CT2"):
        settings = load_settings(None, {"listener.allowed_calling_aets": raw}, environ={})
        assert settings.listener.allowed_calling_aets == ["MODALITY1", "CT2"]


@pytest.mark.skipif(dcmtk_tool("echoscu") is None, reason="dcmtk's echoscu not installed")
def test_the_listener_can_require_its_own_called_ae_title(tmp_path: Path) -> None:
    """With listener.require_called_aet a C-ECHO to our AE title succeeds and one to another title
    is refused."""
    port = free_port()
    env = serve_env(
        tmp_path, f"sqlite:///{tmp_path / 's.db'}", port, screener_worker_enabled="false",
        screener_listener_require_called_aet="true",
    )  # fmt: skip
    serve = ServeProcess(tmp_path, env).start()

    def echo(called: str) -> int:
        return subprocess.run(
            [str(dcmtk_tool("echoscu")), "-to", "10", "-aec", called, "127.0.0.1", str(port)],
            capture_output=True, timeout=60,
        ).returncode  # fmt: skip

    try:
        assert echo("SCREENER") == 0
        assert echo("ANY-SCP") != 0
    finally:
        assert serve.terminate() == 0
