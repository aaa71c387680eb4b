"""Helpers and fixtures for the rescan tests (re-exported by conftest.py): real PACS (dcmtk's
dcmqrscp, Debian's Orthanc), chest films to load into them, a tiny model bundle, and a migrated
database with an accept path to fill it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from orthanc_process import OrthancProcess, orthanc_binary, orthanc_config
from support import (  # noqa: F401
    REPO,
    build_dicom,
    c_store,
    data_root,
    dcmtk_tool,
    free_port,
    listening,
    serve_env,
    wait_for,
)

from screener.config import Settings
from screener.db import Database
from screener.db.migrate import upgrade
from screener.ingest.accept import Acceptor
from screener.ingest.spool import Spool

PACS_AE = "PACS"


@dataclass
class Dcmqrscp:
    """A running dcmqrscp: AE title ``PACS`` on 127.0.0.1:``port``."""

    port: int
    folder: Path
    proc: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"{PACS_AE}@127.0.0.1:{self.port}"

    def store(self, files: list[Path]) -> None:
        """Load files into the PACS with dcmtk's storescu (as they are: JPEG stays JPEG)."""
        result = subprocess.run(
            [
                str(dcmtk_tool("storescu")),
                "-xy",
                "-aet",
                "LOADER",
                "-aec",
                PACS_AE,
                "127.0.0.1",
                str(self.port),
            ]
            + [str(f) for f in files],
            capture_output=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")

    def log(self) -> str:
        path = self.folder / "dcmqrscp.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its forked children
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture
def dcmqrscp(tmp_path: Path) -> Iterator[Callable[..., Dcmqrscp]]:
    """Start dcmqrscp with a storage area and the given move destinations (AE title -> port)."""
    if dcmtk_tool("dcmqrscp") is None or dcmtk_tool("storescu") is None:
        pytest.skip("dcmtk (dcmqrscp, storescu) is not installed")
    started: list[Dcmqrscp] = []

    def start(destinations: dict[str, int]) -> Dcmqrscp:
        folder = tmp_path / "pacs"
        storage = folder / "storage"
        storage.mkdir(parents=True)
        port = free_port()
        hosts = "\n".join(
            f"dest{n} = ({ae}, 127.0.0.1, {p})" for n, (ae, p) in enumerate(destinations.items())
        )
        # Format: /etc/dcmtk/dcmqrscp.cfg and dcmtk's dcmqrcnf.txt.
        config = folder / "dcmqrscp.cfg"
        config.write_text(
            f"NetworkTCPPort  = {port}\nMaxPDUSize      = 16384\nMaxAssociations = 16\n\n"
            f"HostTable BEGIN\n{hosts}\nHostTable END\n\n"
            "VendorTable BEGIN\nVendorTable END\n\n"
            f"AETable BEGIN\n{PACS_AE} {storage} RW (200, 1024mb) ANY\nAETable END\n"
        )
        with open(folder / "dcmqrscp.log", "wb") as log:
            proc = subprocess.Popen(
                # +xy / -xy: take and send 8-bit JPEG as it is, the films' own transfer syntax
                [str(dcmtk_tool("dcmqrscp")), "-c", str(config), "+xy", "-xy", "-v"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pacs = Dcmqrscp(port, folder, proc)
        started.append(pacs)
        wait_for(lambda: listening(port) or proc.poll() is not None, 20)
        assert proc.poll() is None, f"dcmqrscp exited early:\n{pacs.log()}"
        return pacs

    yield start
    for pacs in started:
        pacs.stop()


@dataclass
class Orthanc(OrthancProcess):
    """A running Orthanc: AE title ``ORTHANC`` on 127.0.0.1:``dicom_port``, REST on ``http_port``."""

    dicom_port: int
    http_port: int

    AE = "ORTHANC"

    @property
    def address(self) -> str:
        return f"{self.AE}@127.0.0.1:{self.dicom_port}"

    def rest(self, path: str, body: Any = None) -> Any:
        """GET (or POST ``body`` as JSON) on Orthanc's REST API; the decoded JSON answer."""
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data)
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())

    def download(self, instance_id: str) -> bytes:
        import urllib.request

        url = f"http://127.0.0.1:{self.http_port}/instances/{instance_id}/file"
        with urllib.request.urlopen(url, timeout=30) as answer:
            return bytes(answer.read())

    def store(self, files: list[Path]) -> None:
        """Load files into Orthanc over DICOM with dcmtk's storescu."""
        result = subprocess.run(
            [
                str(dcmtk_tool("storescu")),
                "-xy",
                "-aet",
                "LOADER",
                "-aec",
                self.AE,
                "127.0.0.1",
                str(self.dicom_port),
            ]
            + [str(f) for f in files],
            capture_output=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Start Debian's Orthanc on loopback, its only known modality screener (C-MOVE target)."""
    binary = orthanc_binary()
    if binary is None or dcmtk_tool("storescu") is None:
        pytest.skip("Orthanc (Debian package orthanc) or dcmtk's storescu is not installed")
    started: list[Orthanc] = []

    def start(screener_port: int) -> Orthanc:
        folder = tmp_path / "orthanc"
        folder.mkdir()
        dicom_port, http_port = free_port(), free_port()
        # Options as documented in Debian's /etc/orthanc/orthanc.json; no plug-ins.
        config = {
            **orthanc_config(folder, "screener-test", http_port),
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": Orthanc.AE,
            "DicomPort": dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {"screener": ["SCREENER", "127.0.0.1", screener_port]},
            "SynchronousCMove": True,
        }
        pacs = Orthanc.launch(
            binary,
            folder,
            config,
            [dicom_port, http_port],
            dicom_port=dicom_port,
            http_port=http_port,
        )
        started.append(pacs)
        return pacs

    yield start
    for pacs in started:
        pacs.stop()


@pytest.fixture(scope="session")
def siim_films() -> list[Path]:
    """The SIIM chest CR films (Secondary Capture, JPEG Baseline); skips when absent."""
    folder = data_root() / "dicom" / "siim_chest_cr"
    files = sorted(folder.glob("*.dcm"))
    if len(files) < 4:
        pytest.skip(f"SIIM chest films not found at {folder} (set SCREENER_DATA)")
    return files


@pytest.fixture
def recent_copies(tmp_path: Path, siim_films: list[Path]) -> Callable[..., list[Path]]:
    """Copies of SIIM films as new studies dated an hour ago (new UIDs, same pixels).

    The copies are decompressed: dcmqrscp offers its C-MOVE sub-operations one presentation
    context per SOP class (JPEG first, then uncompressed); our listener chooses uncompressed
    from such a list, and dcmqrscp cannot decompress JPEG to send it (A702).
    """
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    def make(count: int, *, modality: str = "CR", offset: int = 0) -> list[Path]:
        when = datetime.now() - timedelta(hours=1)
        out = tmp_path / "copies"
        out.mkdir(exist_ok=True)
        paths: list[Path] = []
        for n, source in enumerate(siim_films[offset : offset + count]):
            ds = dcmread(source)
            ds.decompress()
            ds.StudyInstanceUID = generate_uid()
            ds.SeriesInstanceUID = generate_uid()
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.StudyDate = f"{when:%Y%m%d}"
            ds.StudyTime = f"{when:%H%M%S}"
            ds.AccessionNumber = f"RS{offset + n:04d}"
            ds.Modality = modality
            path = out / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths

    return make


def study_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture
def model_bundle(tmp_path: Path) -> Callable[[str], Path]:
    """A bundle folder holding only a model.json with the given uid (enough for --rescore)."""

    def make(uid: str) -> Path:
        folder = tmp_path / "bundle"
        folder.mkdir(exist_ok=True)
        (folder / "model.json").write_text(
            json.dumps(
                {
                    "name": "tiny",
                    "version": "2.0.0",
                    "uid": uid,
                    "threshold": 0.5,
                    "input_size": 64,
                    "preprocessing": {},
                }
            )
        )
        return folder

    return make


@dataclass
class Store:
    """A migrated database and the accept path into it, without a daemon."""

    settings: Settings
    db: Database
    acceptor: Acceptor


@pytest.fixture
def store(make_settings: Callable[..., Settings], db_url: str) -> Iterator[Callable[..., Store]]:
    """Settings over ``db_url`` (SQLite, then PostgreSQL), the schema upgraded, an Acceptor."""
    opened: list[Database] = []

    def make(**overrides: Any) -> Store:
        settings = make_settings(db_url, **overrides)
        db = Database(settings.database.url)
        upgrade(db)
        opened.append(db)
        spool = Spool(settings.storage.spool_dir, settings.storage.min_free_mb)
        return Store(settings, db, Acceptor(db, spool, settings))

    yield make
    for db in opened:
        db.dispose()
