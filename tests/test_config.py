"""Settings: precedence, validation messages, and the documented defaults file."""

from __future__ import annotations

from pathlib import Path

import pytest

from screener.config import load_settings, render_default_toml
from screener.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_precedence_cli_over_env_over_file_over_default(tmp_path: Path) -> None:
    """A command-line override beats the environment, which beats the file, which beats the default."""
    cfg = tmp_path / "s.toml"
    cfg.write_text('[listener]\nport = 2000\nae_title = "FILE"\nmax_associations = 3\n')
    env = {"SCREENER_LISTENER_PORT": "3000", "SCREENER_LISTENER_AE_TITLE": "ENV"}
    s = load_settings(cfg, {"listener.port": "4000"}, env)
    assert s.listener.port == 4000  # command line
    assert s.listener.ae_title == "ENV"  # environment
    assert s.listener.max_associations == 3  # file
    assert s.listener.network_timeout == 60.0  # default


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"listener.port": "70000"}, "listener.port = 70000 is invalid: must be at most 65535"),
        ({"listener.port": "eleven"}, "listener.port = 'eleven' is invalid: expected an integer"),
        ({"storage.duplicate_policy": "newest"}, "allowed values are keep_first, replace"),
        ({"listener.ae_title": "A" * 17}, "an AE title is 1-16 characters"),
        ({"database.url": "mysql://x"}, "must start with sqlite:... or postgresql..."),
        ({"nope.key": "1"}, "unknown setting 'nope.key'"),
    ],
)
def test_invalid_value_names_key_value_and_rule(
    overrides: dict[str, str], fragment: str, tmp_path: Path
) -> None:
    """An invalid value raises ConfigError naming the key, the value and what is allowed."""
    empty = tmp_path / "e.toml"
    empty.write_text("")
    with pytest.raises(ConfigError) as info:
        load_settings(empty, overrides, {})
    assert fragment in str(info.value)


def test_invalid_environment_value_is_reported(tmp_path: Path) -> None:
    """A bad SCREENER_* variable stops start-up like a bad file value."""
    empty = tmp_path / "e.toml"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"worker\.max_batch = 0 is invalid: must be at least 1"):
        load_settings(empty, None, {"SCREENER_WORKER_MAX_BATCH": "0"})


def test_unknown_key_in_file_is_rejected(tmp_path: Path) -> None:
    """A misspelt key in the file is an error, not silently ignored."""
    cfg = tmp_path / "s.toml"
    cfg.write_text("[listener]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"unknown setting listener\.prot"):
        load_settings(cfg, None, {})


def test_shipped_screener_toml_documents_every_default() -> None:
    """screener.toml at the repository root is exactly the rendered schema defaults."""
    assert (REPO / "screener.toml").read_text() == render_default_toml()
    assert load_settings(REPO / "screener.toml", None, {}) == load_settings(
        REPO / "screener.toml", None, {}
    )


def test_cli_reports_invalid_setting_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """`screener --set listener.port=0 status` stops with exit status 2 and names the key."""
    from screener.cli import main

    assert main(["--set", "listener.port=0", "status"]) == 2
    assert "listener.port = 0 is invalid: must be at least 1" in capsys.readouterr().err


def test_set_is_accepted_after_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`screener status --set ...` applies the override like `screener --set ... status`."""
    from screener.cli import main

    assert main(["status", "--set", "listener.port=0"]) == 2
    assert "listener.port = 0 is invalid" in capsys.readouterr().err
