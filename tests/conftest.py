"""Shared fixtures: real databases (SQLite and the local PostgreSQL), real files, free ports;
and the ``slow`` mark, given at collection to every test that starts something.

Plain helpers are in ``support.py``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from slowness import starts_something
from support import (
    PG_ADMIN_URL,
    ServeProcess,
    build_dicom,
    data_root,
    free_port,
    fresh_pg_database,
    shipped_bundle,
)

from screener.config import Settings, load_settings


@pytest.fixture(scope="session")
def model_bundle() -> Path:
    """The shipped bundle; its absence is a failure, not a skip: the project ships it."""
    path = shipped_bundle()
    assert (path / "model.json").is_file(), f"no model bundle at {path}"
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder; tests that need it skip, naming where they looked."""
    root = data_root()
    if not (root / "dicom").is_dir():
        pytest.skip(f"shared data not found at {root} (set SCREENER_DATA)")
    return root


@pytest.fixture(scope="session")
def dicom_dir(data_dir: Path) -> Path:
    return data_dir / "dicom"


def _postgres_available() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as exc:
        return str(exc)


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    problem = _postgres_available()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is required in CI: {problem}")
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} not reachable: {problem}")
    return PG_ADMIN_URL


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL: a SQLite file, then a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'screener.db'}"
        return
    admin = request.getfixturevalue("postgres_admin")
    url, drop = fresh_pg_database(admin)
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'screener.db'}"


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings rooted in tmp_path, listening on 127.0.0.1 with a free port."""

    def make(db_url: str | None = None, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database.url": db_url or f"sqlite:///{tmp_path / 'screener.db'}",
            "listener.host": "127.0.0.1",
            "listener.port": free_port(),
            "storage.spool_dir": str(tmp_path / "spool"),
            "storage.min_free_mb": 0,
            "watch.dir": str(tmp_path / "incoming"),
            "watch.rejected_dir": str(tmp_path / "rejected"),
            "watch.settle_seconds": 0.3,
            "watch.poll_seconds": 0.05,
            "worker.poll_seconds": 0.05,
            "worker.max_wait_ms": 20,
            "logging.format": "json",
            # adult films stand in for chest films except in the guard tests (see serve_env)
            "population.max_age_years": 120,
        }
        values.update({k.replace("__", "."): v for k, v in overrides.items()})
        empty = tmp_path / "empty.toml"
        empty.write_text("")
        return load_settings(path=empty, overrides=values, environ={})

    return make


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], ServeProcess]]:
    started: list[ServeProcess] = []

    def make(env: dict[str, str]) -> ServeProcess:
        p = ServeProcess(tmp_path, env)
        started.append(p)
        return p

    yield make
    for p in started:
        if p.proc is not None and p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(timeout=30)


@pytest.fixture
def dicom_file(tmp_path: Path) -> Callable[..., Path]:
    """Write a built DICOM into tmp_path and return its path."""

    def make(name: str | None = None, **kw: Any) -> Path:
        path = tmp_path / "files" / (name or f"{uuid.uuid4().hex}.dcm")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(build_dicom(**kw))
        return path

    return make


@pytest.fixture
def running_daemon(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Any]]:
    """Start an in-process daemon (listener + watcher, worker optional); stopped at teardown."""
    from screener.serve.daemon import compose

    started: list[Any] = []

    def start(db_url: str | None = None, **overrides: Any) -> Any:
        overrides.setdefault("worker__enabled", False)
        daemon = compose(make_settings(db_url, **overrides))
        daemon.start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture(autouse=True)
def _logging_as_found() -> Iterator[None]:
    """A test that runs a command in-process (main() configures structlog: its level filter
    and sinks) leaves structlog as it found it, so the next test's capture_logs sees every
    event whatever order the tests run in."""
    import structlog

    config = structlog.get_config()
    yield
    structlog.configure(**config)


@pytest.fixture(autouse=True)
def _no_serve_outlives_its_test() -> Iterator[None]:
    """A test that fails half-way must not leave a `screener serve` child running."""
    yield
    for serve in ServeProcess.started:
        if serve.proc is not None and serve.proc.poll() is None:
            serve.proc.kill()
            serve.proc.wait(timeout=30)
    ServeProcess.started.clear()


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, driven by Selenium through Debian's chromedriver."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(
            "Debian's chromium and chromium-driver are needed (apt-get install chromium chromium-driver)"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.set_page_load_timeout(120)
    driver.implicitly_wait(60)  # an element is looked for until the page that has it is loaded
    try:
        yield driver
    finally:
        driver.quit()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that starts something (``./dev test --fast`` leaves them out)."""
    del config
    for item in items:
        if item.get_closest_marker("slow") is None and starts_something(item):
            item.add_marker(pytest.mark.slow)
