"""Fixtures for the SR and export tests: real source images, a real dcmtk storescp, results."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt
from sqlalchemy import select
from support import (
    ChildPeer,
    build_dicom,
    data_root,
    dcmtk_tool,
    free_port,
    listening,
    stopping,
)

from screener.config import Settings
from screener.db import Database, Export, Job, Result, utcnow
from screener.db.migrate import upgrade
from screener.ingest.accept import Acceptor
from screener.ingest.spool import Spool
from screener.report.export import plan_exports

MODEL_UID = "1.2.826.0.1.3680043.8.498.11223344556677889900"


def source_images() -> list[Path]:
    """Real chest images: two SIIM CRs (JPEG Baseline) and the NIH DX header variant test1."""
    root = data_root() / "dicom"
    return [
        *sorted((root / "siim_chest_cr").glob("*.dcm"))[:2],
        root / "nih_dx_header_variants" / "test1.dcm",
    ]


@pytest.fixture
def real_sources() -> list[Path]:
    """The real source images; skip, naming the path, when the shared data is absent."""
    paths = source_images()
    missing = [p for p in paths if not p.is_file()]
    if not paths or missing:
        pytest.skip(f"real DICOM sources not found under {data_root() / 'dicom'} (SCREENER_DATA)")
    return paths


def need_tool(name: str) -> str:
    path = dcmtk_tool(name)
    if path is None:
        pytest.skip(f"{name} not installed (dcmtk / dicom3tools)")
    return path


@pytest.fixture
def dciodvfy() -> Callable[[Path], list[str]]:
    """Run dicom3tools' dciodvfy on a file; return its Error lines."""
    tool = need_tool("dciodvfy")

    def run(path: Path) -> list[str]:
        proc = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
        lines = (proc.stdout + proc.stderr).splitlines()
        return [line for line in lines if line.startswith("Error")]

    return run


@pytest.fixture
def dsrdump() -> Callable[..., str]:
    """Run dcmtk's dsrdump on a file (with options, e.g. ``+U8``); assert it exits 0 and
    return what it printed."""
    tool = need_tool("dsrdump")

    def run(path: Path, *options: str) -> str:
        argv = [tool, *options, str(path)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"dsrdump {path} failed: {proc.stderr}"
        return proc.stdout

    return run


class StoreSCP(ChildPeer):
    """A dcmtk storescp on loopback; every received instance is a file in ``out``."""

    def __init__(self, port: int, out: Path, ae_title: str = "PACS") -> None:
        super().__init__(out, port)
        self.out, self.ae_title = out, ae_title

    @property
    def destination(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def start(self) -> StoreSCP:
        # +uf: a unique file per received instance, so a duplicate send is a second file
        argv = [need_tool("storescp"), "-od", str(self.out), "-aet", self.ae_title, "+xa", "+uf"]
        with open(self.out.parent / f"storescp-{self.port}.log", "ab") as log:
            ready = partial(listening, self.port)
            self.launch([*argv, str(self.port)], ready, stdout=log, stderr=subprocess.STDOUT)
        return self

    def files(self) -> list[Path]:
        return sorted(p for p in self.out.iterdir() if p.is_file())


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Callable[..., StoreSCP]]:
    """Factory for storescp peers (not started); every one is killed at teardown."""

    def make(port: int | None = None, ae_title: str = "PACS") -> StoreSCP:
        port = port or free_port()
        return StoreSCP(port, tmp_path / f"pacs-{port}", ae_title)

    yield from stopping(make)


@dataclass
class Screened:
    """A database with accepted instances, each with a result (and planned exports)."""

    db: Database
    settings: Settings
    result_ids: list[int]

    def exports(self, payload: str | None = None) -> list[Export]:
        """Its export rows in the order they were planned (only those of ``payload``, if given)."""
        query = select(Export).order_by(Export.id)
        if payload is not None:
            query = query.where(Export.payload == payload)
        with self.db.transaction() as session:
            return list(session.scalars(query))


def add_results(
    settings: Settings,
    n: int,
    *,
    probability: float = 0.83,
    plan: bool = True,
    sources: list[bytes] | None = None,
) -> Screened:
    """Accept ``n`` built CR images (or the Part 10 files ``sources``, in order) through the
    real accept path, store a result for each."""
    db = Database(settings.database.url)
    upgrade(db)
    acceptor = Acceptor(db, Spool(settings.storage.spool_dir, 0), settings)
    ids = []
    for i in range(n):
        data = sources[i] if sources is not None else build_dicom(seed=i)
        accepted = acceptor.accept(data, source="dicom")
        assert accepted.job_id is not None
        with db.transaction() as session:
            job = session.get(Job, accepted.job_id)
            assert job is not None and job.instance_id is not None
            now = utcnow()
            result = Result(
                job_id=job.id,
                instance_id=job.instance_id,
                frame_number=1,
                probability=probability,
                label="pneumonia" if probability >= 0.5 else "normal",
                threshold=0.5,
                model_name="screener-densenet121",
                model_version="1.0.0",
                model_uid=MODEL_UID,
                queued_at=now - timedelta(seconds=2),
                started_at=now - timedelta(seconds=1),
                scored_at=now,
            )
            session.add(result)
            session.flush()
            if plan:
                plan_exports(session, result, settings)
            ids.append(result.id)
    return Screened(db, settings, ids)


@pytest.fixture
def model_uid() -> str:
    return MODEL_UID


@pytest.fixture
def screened() -> Iterator[Callable[..., Screened]]:
    """Factory for :func:`add_results`; databases are disposed at teardown."""
    made: list[Screened] = []

    def make(settings: Settings, n: int, **kw: Any) -> Screened:
        s = add_results(settings, n, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.db.dispose()


@pytest.fixture
def pynetdicom_scp() -> Iterator[Callable[..., tuple[int, list[str]]]]:
    """A pynetdicom C-STORE SCP answering a fixed status; yields (port, received UIDs)."""
    servers: list[Any] = []

    def start(status: int, sop_classes: list[str] | None = None) -> tuple[int, list[str]]:
        received: list[str] = []

        def on_store(event: Any) -> int:
            received.append(str(event.request.AffectedSOPInstanceUID))
            return status

        ae = AE(ae_title="PACS")
        if sop_classes is None:
            ae.supported_contexts = AllStoragePresentationContexts
        for sop_class in sop_classes or []:
            ae.add_supported_context(sop_class)
        port = free_port()
        server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )
        servers.append((ae, server))
        return port, received

    yield start
    for ae, server in servers:
        server.shutdown()
        ae.shutdown()
