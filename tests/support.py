"""Plain test helpers (not fixtures), imported as ``from support import ...``.

They live here rather than in ``conftest.py`` because every test folder has its own
``conftest`` module and the name is ambiguous across folders.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, ParamSpec, TypeVar

REPO = Path(__file__).resolve().parents[1]
Params = ParamSpec("Params")
Peer = TypeVar("Peer", bound="ChildPeer")
PG_ADMIN_URL = os.environ.get(
    "SCREENER_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def shipped_bundle() -> Path:
    """The model bundle committed in models/ (``SCREENER_TEST_BUNDLE`` overrides, for development)."""
    return Path(os.environ.get("SCREENER_TEST_BUNDLE") or REPO / "models" / "screener-default")


def data_root() -> Path:
    return Path(os.environ.get("SCREENER_DATA") or REPO.parent / "shared" / "data").resolve()


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


#: how long a ``screener serve``/``web`` child may take to start (it takes about 2 s)
START_SECONDS = 60


class ServeProcess:
    """``screener serve`` (or ``screener web``) as a real child process, configured by
    environment variables."""

    #: every one started, so that conftest can kill what a failed test left running
    started: ClassVar[list[ServeProcess]] = []

    def __init__(self, tmp_path: Path, env: dict[str, str], command: str = "serve") -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.command = command  # or "web": `screener web` alone
        self.log_path = tmp_path / f"{command}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> ServeProcess:
        ready = "daemon_started" if self.command == "serve" else "web_started"
        with open(self.log_path, "wb") as log:
            self.proc = proc = subprocess.Popen(
                [sys.executable, "-m", "screener.cli", self.command, *extra],
                cwd=self.tmp_path,
                # faulthandler: a start-up that hangs is dumped (below) rather than guessed at
                env={**os.environ, "PYTHONFAULTHANDLER": "1", **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        ServeProcess.started.append(self)
        try:
            wait_for(lambda: ready in self.log() or proc.poll() is not None, START_SECONDS)
        except AssertionError:
            # SIGABRT makes faulthandler write every thread's stack to the log
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(timeout=30)
            raise AssertionError(
                f"screener {self.command} did not log {ready} within {START_SECONDS} s; its log, ending "
                f"with the stacks where it hung:\n{self.log()[-6000:]}"
            ) from None
        assert self.proc.poll() is None, f"screener {self.command} exited early:\n{self.log()}"
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


def screenshots() -> Path:
    """Where browser tests leave screenshots for a person to look at: var/test-screenshots/
    (or $SCREENER_SCREENSHOTS)."""
    repo = Path(__file__).resolve().parents[1]
    folder = Path(os.environ.get("SCREENER_SCREENSHOTS") or repo / "var" / "test-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


#: axe-core's browser build, installed from npm by ``./dev setup`` (tests/browser/package-lock.json)
AXE_JS = REPO / "tests" / "browser" / "node_modules" / "axe-core" / "axe.min.js"


def axe_violations(
    browser: Any, impacts: Iterable[str] = ("serious", "critical")
) -> list[dict[str, Any]]:
    """axe-core's violations of the page open in ``browser`` whose impact is in ``impacts``.

    axe.min.js is injected with WebDriver's execute_script: a script run by the driver (Chrome
    DevTools' Runtime.evaluate) is not subject to the page's Content-Security-Policy, which
    allows no script at all. Skips when axe-core is not installed (``./dev setup`` installs it
    where npm is), except under CI, where it fails.
    """
    import pytest

    if not AXE_JS.is_file():
        reason = f"axe-core is not installed at {AXE_JS} (./dev setup runs npm ci where npm is)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI needs it")
        pytest.skip(reason)
    browser.execute_script(AXE_JS.read_text(encoding="utf-8"))
    browser.set_script_timeout(120)
    results = browser.execute_async_script(
        """const done = arguments[arguments.length - 1];
        if (typeof axe === "undefined") { done({error: "axe-core did not load"}); return; }
        axe.run(document, {resultTypes: ["violations"]})
          .then(r => done({violations: r.violations, passes: r.passes.length}))
          .catch(e => done({error: String(e)}));"""
    )
    assert "error" not in results, results.get("error")
    assert results["passes"] > 0, "axe-core ran no rule that passed: it did not see the page"
    wanted = set(impacts)
    return [v for v in results["violations"] if v.get("impact") in wanted]


def assert_accessible(browser: Any, page: str) -> None:
    """No serious or critical axe-core violation on the page open in ``browser``; the
    assertion names each one, with the elements at fault."""
    violations = axe_violations(browser)
    assert not violations, f"{page}:\n" + "\n".join(
        f"{v['impact']} {v['id']}: {v['help']} at {node['target']}: {node.get('failureSummary', '')}"
        for v in violations
        for node in v["nodes"]
    )


def multipart_form(fields: dict[str, str], file: bytes, filename: str) -> tuple[bytes, str]:
    """A multipart/form-data body with ``fields`` and ``file`` as the field ``film`` (the
    upload page's form); returns the body and its Content-Type."""
    boundary = "screener-test-boundary"
    out = b""
    for key, value in fields.items():
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'
        ).encode()
    out += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="film"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    out += file + f"\r\n--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


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
        "SCREENER_MODEL_BUNDLE": str(shipped_bundle()),
        # The adult SIIM films stand in for chest films in tests of everything but the
        # guards, as at a site that validated the model on adults (tests/serve/test_guards.py).
        "SCREENER_POPULATION_MAX_AGE_YEARS": "120",
    }
    (tmp_path / "none.toml").write_text("")
    env.update({k.upper(): v for k, v in extra.items()})
    return env


def part10(ds: Any) -> bytes:
    """``ds`` as a DICOM Part 10 file in Explicit VR Little Endian."""
    import io

    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


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
    study_description: str | None = None,
) -> bytes:
    """A small, valid DICOM Part 10 file (Explicit VR Little Endian) as bytes."""

    import numpy as np
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

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
    ds.StudyTime = "081500"
    if study_description is not None:
        ds.StudyDescription = study_description
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
    return part10(ds)


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


def run_screener(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `screener` CLI in a child process, configured by ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "screener.cli", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def storescu(port: int, files: list[Path] | list[str]) -> None:
    """dcmtk's storescu with the profile in deploy/, as the README has it; every store must succeed."""
    tool = dcmtk_tool("storescu")
    assert tool is not None, "dcmtk's storescu is not installed"
    sent = subprocess.run(
        [
            tool,
            "-aec",
            "SCREENER",
            "-xf",
            str(REPO / "deploy" / "storescu-screener.cfg"),
            "Screener",
            "-to",
            "30",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sent.returncode == 0 and "Failed" not in sent.stderr, sent.stderr


def dcmtk_tool(name: str) -> str | None:
    """dcmtk's ``name`` (``/usr/bin`` first), never pynetdicom's same-named script in the venv."""
    system = Path("/usr/bin") / name
    if os.access(system, os.X_OK):
        return str(system)
    found = shutil.which(name)
    if found is None or Path(found).resolve().is_relative_to(Path(sys.prefix).resolve()):
        return None
    return found


def sr_source_uids(sr: Any) -> list[str]:
    """SOP Instance UIDs of the images an SR data set cites as evidence (PS3.3 C.17.2)."""
    return [
        str(ref.ReferencedSOPInstanceUID)
        for evidence in sr.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in evidence.get("ReferencedSeriesSequence", [])
        for ref in series.get("ReferencedSOPSequence", [])
    ]


def sr_deliveries(files: Iterable[Path]) -> tuple[Counter[str], Counter[str]]:
    """Received SR files counted per SR SOP Instance UID and per referenced source image.

    Only meaningful when the receiver keeps every copy (dcmtk ``storescp +uf``); other
    instances (e.g. a Secondary Capture) in the folder are not counted.
    """
    from pydicom import dcmread

    per_sr: Counter[str] = Counter()
    per_source: Counter[str] = Counter()
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        if str(ds.SOPClassUID).startswith("1.2.840.10008.5.1.4.1.1.88."):
            per_sr[str(ds.SOPInstanceUID)] += 1
            per_source.update(sr_source_uids(ds))
    return per_sr, per_source


def film_dicom(
    pixels: Any,
    *,
    patient_age: str | None = None,
    body_part: str = "CHEST",
    view_position: str = "AP",
    accession: str = "PED1",
) -> bytes:
    """An 8-bit MONOCHROME2 CR film (Explicit VR Little Endian) around a grey ``uint8`` array."""

    import numpy as np
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    array = np.ascontiguousarray(pixels, dtype=np.uint8)
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.PatientName = "Doe^Child"
    ds.PatientID = "PHI-67890"
    ds.AccessionNumber = accession
    ds.StudyDate = "20261128"
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view_position
    if patient_age is not None:
        ds.PatientAge = patient_age
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PixelData = array.tobytes()
    return part10(ds)


def fresh_pg_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    """A new, empty PostgreSQL database: its URL and a function that drops it."""
    import psycopg

    name = f"screener_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{base}/{name}", drop


def record_result(
    db: Any,
    sop_instance_uid: str,
    probability: float,
    threshold: float,
    model: tuple[str, str, str],
    *,
    label: str | None = None,
    domain_score: float | None = None,
    received_hours_ago: float = 0.0,
    accession: str | None = None,
) -> None:
    """Finish an accepted instance's job with a result, as a worker would record it."""
    from datetime import timedelta

    from sqlalchemy import select

    from screener.db import Instance, Job, Result, utcnow

    with db.transaction() as s:
        inst = s.scalars(
            select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
        ).one()
        if received_hours_ago:
            inst.received_at = utcnow() - timedelta(hours=received_hours_ago)
        if accession is not None:
            inst.study.accession_number = accession
        job = s.scalars(select(Job).where(Job.instance_id == inst.id)).one()
        job.state = "done"
        now = utcnow()
        s.add(
            Result(
                job_id=job.id,
                instance_id=inst.id,
                frame_number=1,
                probability=float(probability),
                label=label or ("pneumonia" if probability >= threshold else "normal"),
                threshold=threshold,
                domain_score=domain_score,
                model_name=model[0],
                model_version=model[1],
                model_uid=model[2],
                queued_at=now,
                started_at=now,
                scored_at=now,
            )
        )


def kill_mid_call(
    work: Any, call: str, fifo: Path, pid_of: Callable[[], int | None]
) -> tuple[int, list[Any]]:
    """Make ``work.call(call, fifo)`` block reading a FIFO no one writes, SIGKILL the child
    that serves it (``pid_of``) mid-call, and return that pid and what the call raised."""
    import threading

    from screener.web.modelwork import ModelWorkFailed

    os.mkfifo(fifo)
    failures: list[ModelWorkFailed] = []

    def blocked_call() -> None:
        try:
            work.call(call, str(fifo))
        except ModelWorkFailed as exc:
            failures.append(exc)

    caller = threading.Thread(target=blocked_call)
    caller.start()
    first = int(wait_for(pid_of, 60))
    os.kill(first, signal.SIGKILL)
    caller.join(60)
    return first, failures


class Storescp:
    """dcmtk's storescp as the PACS on loopback; every received instance is a file in ``out``."""

    def __init__(self, out: Path) -> None:
        tool = dcmtk_tool("storescp")
        assert tool is not None, "dcmtk's storescp is not installed"
        out.mkdir(parents=True)
        self.out, self.port = out, free_port()
        self.proc = subprocess.Popen(
            [tool, "-od", str(out), "-aet", "PACS", "+xa", "+uf", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: listening(self.port) or self.proc.poll() is not None, 20)
        assert self.proc.poll() is None, "storescp exited at start"

    @property
    def destination(self) -> str:
        return f"PACS@127.0.0.1:{self.port}"

    def files(self) -> list[Path]:
        return sorted(p for p in self.out.iterdir() if p.is_file())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class ChildPeer:
    """A test peer run as a child process on loopback (a receiver, a server): its port, the
    folder of what it keeps, started and waited for until it is ready, killed at teardown."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder, self.port = folder, port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(
        self, argv: list[str], ready: Callable[[], bool], timeout: float = 20, **popen: Any
    ) -> None:
        """Start ``argv`` (``popen``: where its output goes) and wait until ``ready()``; one
        that exits first fails, naming its program."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = proc = subprocess.Popen(argv, **popen)
        wait_for(lambda: ready() or proc.poll() is not None, timeout)
        program = Path(argv[1] if argv[0] == sys.executable else argv[0]).name
        assert proc.poll() is None, f"{program} exited at start"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None


def stopping(make: Callable[Params, Peer]) -> Iterator[Callable[Params, Peer]]:
    """A peer factory fixture's body (``yield from stopping(make)``): the test gets ``make``;
    every peer it made is stopped at teardown."""
    made: list[Peer] = []

    def tracked(*args: Params.args, **kwargs: Params.kwargs) -> Peer:
        made.append(make(*args, **kwargs))
        return made[-1]

    yield tracked
    for peer in made:
        peer.stop()


def export_states(db_url: str) -> dict[str, int]:
    """SR deliveries counted by state (pending, delivered, dead, shadow) in that database."""
    from sqlalchemy import func, select

    from screener.db import Database, Export

    db = Database(db_url)
    try:
        with db.transaction() as session:
            rows = session.execute(select(Export.state, func.count()).group_by(Export.state))
            return {str(s): int(n) for s, n in rows}
    finally:
        db.dispose()


def exporter_refuses(settings: Any, message: str) -> None:
    """Building the exporter for ``settings`` stops with a ConfigError matching ``message``."""
    import pytest

    from screener.db import Database
    from screener.errors import ConfigError
    from screener.report.export import Exporter

    db = Database(settings.database.url)
    try:
        with pytest.raises(ConfigError, match=message):
            Exporter(db, settings)
    finally:
        db.dispose()


def scoring_site(
    tmp_path: Path, db_url: str, make_settings: Callable[..., Any], model_bundle: Path
) -> tuple[Path, dict[str, Any], Any, Any, Any]:
    """A copy of the shipped bundle configured over a migrated database, and the acceptor that
    takes films into it: (bundle, its metadata, settings, database, acceptor)."""
    import shutil

    from screener.db import Database
    from screener.db.migrate import upgrade
    from screener.ingest.accept import Acceptor
    from screener.ingest.spool import Spool
    from screener.model.bundle import read_metadata

    bundle = tmp_path / "bundle"
    shutil.copytree(model_bundle, bundle)
    settings = make_settings(db_url, model__bundle=str(bundle))
    db = Database(db_url)
    upgrade(db)
    acceptor = Acceptor(db, Spool(settings.storage.spool_dir, 0), settings)
    return bundle, read_metadata(bundle), settings, db, acceptor
