"""Shared fixtures: real databases (SQLite and the local PostgreSQL), real files, free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from screener.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get(
    "SCREENER_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def data_root() -> Path:
    return Path(os.environ.get("SCREENER_DATA") or REPO.parent / "shared" / "data").resolve()


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


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


def _fresh_pg_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    import psycopg

    name = f"screener_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{base}/{name}", drop


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL: a SQLite file, then a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'screener.db'}"
        return
    admin = request.getfixturevalue("postgres_admin")
    url, drop = _fresh_pg_database(admin)
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
        }
        values.update({k.replace("__", "."): v for k, v in overrides.items()})
        empty = tmp_path / "empty.toml"
        empty.write_text("")
        return load_settings(path=empty, overrides=values, environ={})

    return make


class ServeProcess:
    """``screener serve`` as a real child process, configured by environment variables."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.log_path = tmp_path / f"serve-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> ServeProcess:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "screener.cli", "serve", *extra],
                cwd=self.tmp_path,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: "daemon_started" in self.log() or self.proc.poll() is not None, 60)
        assert self.proc.poll() is None, f"screener serve exited early:\n{self.log()}"
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout=60)


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


def serve_env(tmp_path: Path, db_url: str, port: int, **extra: str) -> dict[str, str]:
    """Environment variables that configure a ``screener serve`` child in tmp_path."""
    env = {
        "SCREENER_DATABASE_URL": db_url,
        "SCREENER_LISTENER_HOST": "127.0.0.1",
        "SCREENER_LISTENER_PORT": str(port),
        "SCREENER_STORAGE_SPOOL_DIR": str(tmp_path / "spool"),
        "SCREENER_STORAGE_MIN_FREE_MB": "0",
        "SCREENER_WATCH_DIR": str(tmp_path / "incoming"),
        "SCREENER_WATCH_REJECTED_DIR": str(tmp_path / "rejected"),
        "SCREENER_WATCH_SETTLE_SECONDS": "0.3",
        "SCREENER_WORKER_POLL_SECONDS": "0.05",
        "SCREENER_LOGGING_FORMAT": "json",
        "SCREENER_CONFIG": str(tmp_path / "none.toml"),
    }
    (tmp_path / "none.toml").write_text("")
    env.update({k.upper(): v for k, v in extra.items()})
    return env


def build_dicom(
    *,
    sop_instance_uid: str | None = None,
    study_instance_uid: str | None = None,
    modality: str = "CR",
    body_part: str | None = "CHEST",
    view_position: str | None = "PA",
    sop_class_uid: str = "1.2.840.10008.5.1.4.1.1.1",  # CR Image Storage
    pixel_data: bool = True,
    rows: int = 64,
    columns: int = 64,
    seed: int = 0,
) -> bytes:
    """A small, valid DICOM Part 10 file (Explicit VR Little Endian) as bytes."""
    import io

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PHI-12345"
    ds.PatientBirthDate = "19700101"
    ds.AccessionNumber = "ACC1"
    ds.StudyDate = "20261122"
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if view_position is not None:
        ds.ViewPosition = view_position
    if pixel_data:
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.PixelData = (
            np.random.default_rng(seed)
            .integers(0, 4096, (rows, columns), dtype=np.uint16)
            .tobytes()
        )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def dicom_file(tmp_path: Path) -> Callable[..., Path]:
    """Write a built DICOM into tmp_path and return its path."""

    def make(name: str | None = None, **kw: Any) -> Path:
        path = tmp_path / "files" / (name or f"{uuid.uuid4().hex}.dcm")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(build_dicom(**kw))
        return path

    return make


def c_store(
    port: int,
    items: list[Path],
    *,
    calling_aet: str = "TESTSCU",
    called_aet: str = "SCREENER",
    sop_class: str | None = None,
) -> list[int]:
    """Send files over one real association with pynetdicom; return each C-STORE status."""
    from pydicom import dcmread
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # noqa: F401

    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    contexts = set()
    for item in items:
        meta = dcmread(item, stop_before_pixels=True, force=True)
        cls = sop_class or str(meta.file_meta.MediaStorageSOPClassUID)
        contexts.add((cls, str(meta.file_meta.TransferSyntaxUID)))
    for cls, ts in contexts:
        ae.add_requested_context(cls, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_aet)
    assert assoc.is_established, "association was not established"
    statuses = []
    try:
        for item in items:
            rsp = assoc.send_c_store(item)
            statuses.append(int(rsp.Status) if "Status" in rsp else -1)
    finally:
        assoc.release()
    return statuses


@pytest.fixture
def running_daemon(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Any]]:
    """Start an in-process daemon (listener + watcher, worker optional); stopped at teardown."""
    from screener.daemon import compose

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
