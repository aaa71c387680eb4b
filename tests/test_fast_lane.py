"""The fast lane's rule (tests/slowness.py): what starts something is marked slow, what does
not stays in ``./dev test --fast``."""

from __future__ import annotations

import textwrap
from pathlib import Path

from slowness import _shared_starting, _starting

MODULE = textwrap.dedent(
    """
    import subprocess
    from support import ServeProcess, build_dicom

    def _run_cli(*args):
        return subprocess.run(["screener", *args])

    def _helper_of_a_helper():
        return _run_cli("status")

    def test_in_a_child_process():
        _helper_of_a_helper()

    def test_with_a_serve(tmp_path):
        ServeProcess(tmp_path, {}).start()

    def test_with_a_daemon(running_daemon):
        running_daemon()

    def test_that_trains(main):
        main(["train", "--epochs", "1"])

    def test_pure(tmp_path):
        compose = {"services": {}}  # a variable named like the daemon's builder
        assert compose.get("services") == {} and build_dicom()
    """
)


def test_what_starts_something_is_found_through_helpers_and_fixtures(tmp_path: Path) -> None:
    """A test is slow when it, a helper it calls (at any depth) or a shared fixture it asks for
    starts a process, a server or a training; one that only names such things is not."""
    path = tmp_path / "test_sample.py"
    path.write_text(MODULE)
    slow = _starting(path, _shared_starting())
    tests = {name for name in slow if name.startswith("test_")}
    assert tests == {
        "test_in_a_child_process",
        "test_with_a_serve",
        "test_with_a_daemon",
        "test_that_trains",
    }
    assert {"_run_cli", "_helper_of_a_helper"} <= slow


def test_the_shared_fixtures_that_start_things_are_known() -> None:
    """The fixtures of conftest.py and the rescan/report helpers that start servers or
    processes count as starting something; the plain database and settings ones do not."""
    shared = _shared_starting()
    assert {"serve_process", "running_daemon", "dcmqrscp", "orthanc", "storescp"} <= shared
    assert not {"make_settings", "db_url", "sqlite_url", "dicom_file"} & shared
