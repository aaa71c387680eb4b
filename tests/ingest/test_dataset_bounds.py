"""Data sets over ``listener.max_dataset_mb`` (256 MB, the default), through one running
``screener serve``: by C-STORE, the watch folder and the web's upload.

A 3 MB Deflated data set that inflates to 3 GiB is refused (A700; a rejected file; 422), never
inflated past the limit; a C-STORE streaming a 4 GB data set, or one PDU announcing 4 GB, is aborted
at the limit; a 2 GiB dropped file is rejected unread. All the while, no process of the daemon
passes :data:`MAX_RSS_BYTES` (sampled from /proc throughout, and each one's peak at the end),
the listener answers the next association, and real films, Deflated ones too, are scored.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hostile import CR, deflated_film, endless_film, write_deflate_bomb
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from support import ServeProcess, free_port, multipart_form, serve_env, wait_for

BOUNDS_ROOT = "1.2.826.0.1.3680043.10.1003"
#: The listener's limit under test: the shipped default.
LIMIT = 256 << 20
#: No process of the daemon may pass this (the largest is the worker, with TensorFlow and the
#: model: about 0.9 GB; serve itself peaks near 0.4 GB, holding a data set at the limit).
MAX_RSS_BYTES = 1536 << 20
#: What a sender may push past the limit before it sees the abort: socket buffers.
SEND_MARGIN = 64 << 20
#: A streaming sender that is not cut off by then has failed the test (it never sends 4 GB).
GIVE_UP_AFTER = 1 << 30
VERIFICATION = "1.2.840.10008.1.1"
WEB_USER = "carol"

#: building the bomb makes pydicom warn about the private element it holds
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# -- the bounded inflate, alone ---------------------------------------------------------


def test_check_size_measures_what_a_data_set_inflates_to(films: list[Path]) -> None:
    """A real Deflated film (650 KB, 1 MB inflated) passes a 2 MB limit and is refused under
    a 1 MB one; bytes longer than the limit are refused by their length; a film not Deflated
    has no stream to inflate."""
    from screener.ingest.inflate import MB, DatasetTooLarge, check_size, deflated_stream

    data = deflated_film(films[0], BOUNDS_ROOT, "unit_deflated")
    stream = deflated_stream(data)
    assert stream is not None and len(data) < MB
    check_size(data, 2 * MB)
    with pytest.raises(DatasetTooLarge, match="inflates to more than"):
        check_size(data, MB)
    with pytest.raises(DatasetTooLarge, match=f"is {len(data)} bytes"):
        check_size(data, len(data) - 1)
    assert deflated_stream(films[0].read_bytes()) is None  # Implicit VR Little Endian


def test_a_bomb_is_refused_by_parse_holding_a_chunk_at_most(tmp_path: Path) -> None:
    """parse() refuses a 64 MiB-inflating bomb under a 16 MB limit, as a Part 10 file and as
    a raw data set starting with its file meta (which pydicom would inflate too), while
    Python allocates no more than a few MB."""
    import tracemalloc

    from screener.ingest.accept import parse
    from screener.ingest.inflate import MB, DatasetTooLarge

    path = tmp_path / "bomb.dcm"
    write_deflate_bomb(path, BOUNDS_ROOT, inflated=64 << 20)
    data = path.read_bytes()
    for variant, allow_raw in ((data, False), (data[132:], True)):
        tracemalloc.start()
        try:
            with pytest.raises(DatasetTooLarge):
                parse(variant, allow_raw=allow_raw, max_bytes=16 * MB)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 * MB, f"{peak} bytes allocated"


# -- the daemon's memory, sampled from /proc ---------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _family(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += _children(current)
    return found


def _memory(pid: int) -> int:
    """The larger of the process's resident size now and its peak (VmRSS, VmHWM), in bytes."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    sizes = [int(m) * 1024 for m in re.findall(r"^Vm(?:RSS|HWM):\s+(\d+) kB", status, re.M)]
    return max(sizes, default=0)


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


@dataclass
class MemoryWatch:
    """Samples every process of the daemon ten times a second; keeps each one's peak."""

    pid: int
    peaks: dict[int, tuple[int, str]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.sample()

    def sample(self) -> None:
        for pid in _family(self.pid):
            size = _memory(pid)
            if size > self.peaks.get(pid, (0, ""))[0]:
                self.peaks[pid] = (size, _name(pid))

    def assert_bounded(self) -> None:
        self.sample()
        over = {pid: peak for pid, peak in self.peaks.items() if peak[0] >= MAX_RSS_BYTES}
        assert not over, "processes over the bound: " + "; ".join(
            f"{pid} {size / (1 << 30):.2f} GiB ({name})" for pid, (size, name) in over.items()
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# -- the daemon ----------------------------------------------------------------------------


@dataclass
class Daemon:
    serve: ServeProcess
    port: int
    web_port: int
    db_url: str
    incoming: Path
    rejected: Path
    memory: MemoryWatch

    def check(self) -> None:
        """`screener serve` runs still, and none of its processes passed the bound."""
        assert self.serve.proc is not None
        assert self.serve.proc.poll() is None, "screener serve died:\n" + self.serve.log()[-3000:]
        self.memory.assert_bounded()

    def rows(self, statement: Any) -> list[Any]:
        from screener.db import Database

        db = Database(self.db_url)
        try:
            with db.transaction() as session:
                return list(session.execute(statement).all())
        finally:
            db.dispose()

    def job(self, sop_instance_uid: str) -> tuple[str, str | None] | None:
        from sqlalchemy import select

        from screener.db import Instance, Job

        found = self.rows(
            select(Job.state, Job.reason)
            .join(Instance, Job.instance_id == Instance.id)
            .where(Instance.sop_instance_uid == sop_instance_uid)
        )
        if not found:
            return None
        state, reason = found[-1]
        return str(getattr(state, "value", state)), reason

    def scored(self, sop_instance_uid: str) -> None:
        """Wait for the instance's job to end; it must end ``done``."""
        wait_for(lambda: (self.job(sop_instance_uid) or ("",))[0] in ("done", "failed"), 120)
        assert self.job(sop_instance_uid) == ("done", None), self.job(sop_instance_uid)

    def refusals(self) -> list[tuple[str | None, str, str]]:
        """(SOP Instance UID, reason, message) of every refused store."""
        from sqlalchemy import select

        from screener.db import AuditEvent

        return [
            tuple(row)
            for row in self.rows(
                select(AuditEvent.sop_instance_uid, AuditEvent.reason, AuditEvent.message).where(
                    AuditEvent.event == "store_refused"
                )
            )
        ]

    def rejected_jobs(self) -> dict[str, str]:
        """Rejected watch-folder files: content digest (from the rejected name) -> reason."""
        from sqlalchemy import select

        from screener.db import Job, JobState

        rows = self.rows(select(Job.source_path, Job.reason).where(Job.state == JobState.REJECTED))
        return {Path(path).stem.split("-")[1]: reason for path, reason in rows if path}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Daemon]:
    """One `screener serve` (listener, watch folder, web behind a trusted proxy header, the
    worker) on SQLite, with the default listener.max_dataset_mb, watched for memory."""
    tmp = tmp_path_factory.mktemp("bounds")
    port, web_port = free_port(), free_port()
    db_url = f"sqlite:///{tmp / 'screener.db'}"
    env = serve_env(
        tmp,
        db_url,
        port,
        screener_web_port=str(web_port),
        screener_web_trusted_user_header="X-Remote-User",
        screener_web_admins=json.dumps([WEB_USER]),  # may queue an upload
        screener_rescan_schedule="",
    )
    serve = ServeProcess(tmp, env).start()
    assert serve.proc is not None
    # this module's tests share it: ended below, not after each test by conftest
    ServeProcess.started.remove(serve)
    memory = MemoryWatch(serve.proc.pid)
    try:
        wait_for(lambda: "worker_started" in serve.log(), 120)
        yield Daemon(serve, port, web_port, db_url, tmp / "incoming", tmp / "rejected", memory)
    finally:
        memory.stop()
        if serve.proc.poll() is None:
            serve.kill()


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3 MB Deflated CR file whose data set inflates to 3 GiB."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.dcm"
    write_deflate_bomb(path, BOUNDS_ROOT)
    assert path.stat().st_size < 4 << 20
    return path


@pytest.fixture(scope="module")
def films(data_dir: Path) -> list[Path]:
    """Real chest films in a native transfer syntax (NIH DX, Implicit VR Little Endian)."""
    found = [data_dir / "dicom" / "nih_dx_header_variants" / f"test{n}.dcm" for n in (1, 2, 3)]
    assert all(path.is_file() for path in found)
    return found


# -- senders ----------------------------------------------------------------------------


def _associate(port: int, contexts: list[tuple[str, str]], handlers: Any = None) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title="BOUNDS")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 90  # a loaded CI host stalls
    ae.add_requested_context(VERIFICATION)
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCREENER", evt_handlers=handlers or [])
    assert assoc.is_established, "association refused"
    return assoc


def _store_file(port: int, path: Path) -> int:
    """C-STORE the file's data set as its bytes are (never decoded here), then C-ECHO on the
    same association; returns the C-STORE status."""
    from pynetdicom import _config

    meta = read_file_meta_info(path)  # a Deflated data set is not inflated here
    contexts = [(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))]
    assoc = _associate(port, contexts)
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # the bytes after the file meta, as they are
    try:
        rsp = assoc.send_c_store(path)
        status = int(rsp.Status) if "Status" in rsp else -1
        assert assoc.is_established, "the association did not survive the store"
        assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        if assoc.is_established:
            assoc.release()
    return status


def _p_data_tf(context_id: int, control: int, fragment: bytes) -> bytes:
    """One P-DATA-TF PDU carrying one PDV (PS3.8 9.3.5, E.2)."""
    item = bytes((context_id, control)) + fragment
    pdv = struct.pack(">I", len(item)) + item
    return struct.pack(">BBI", 0x04, 0x00, len(pdv)) + pdv


def _c_store_command(sop_instance_uid: str) -> bytes:
    """A C-STORE-RQ command set announcing a data set (Implicit VR Little Endian)."""
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode

    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = CR
    req.AffectedSOPInstanceUID = sop_instance_uid
    req.Priority = 2
    req.DataSet = io.BytesIO(b"\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    encoded = encode(message.command_set, True, True)
    assert encoded is not None
    return encoded


def _stream(port: int, *, one_pdu: bool) -> tuple[str, int, bool]:
    """Associate, send a C-STORE-RQ whose Pixel Data announce 4 GB, and stream zeros after it
    (in PDUs of the size the listener accepts, or as the value of one PDU announcing 4 GB)
    until the listener aborts or :data:`GIVE_UP_AFTER` bytes are sent. Returns the SOP
    Instance UID, the data-set bytes sent and whether an A-ABORT PDU came back."""
    from pynetdicom import evt
    from pynetdicom.pdu import A_ABORT_RQ

    aborted = threading.Event()

    def on_pdu(event: Any) -> None:  # pynetdicom's reader thread reads the listener's PDUs
        if isinstance(event.pdu, A_ABORT_RQ):
            aborted.set()

    ds, head = endless_film(BOUNDS_ROOT + (".2" if one_pdu else ".1"))
    assoc = _associate(port, [(CR, ExplicitVRLittleEndian)], [(evt.EVT_PDU_RECV, on_pdu)])
    context_id = next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == CR)
    sock: socket.socket = assoc.dul.socket.socket
    sock.settimeout(60)
    sent = 0
    try:
        sock.sendall(_p_data_tf(context_id, 0x03, _c_store_command(str(ds.SOPInstanceUID))))
        if one_pdu:  # one PDU announcing 4 GB; its PDV starts with the data set's header
            sock.sendall(struct.pack(">BBI", 0x04, 0x00, 0xFFFFFFF0))
            sock.sendall(struct.pack(">I", 0xFFFFFFEC) + bytes((context_id, 0x00)) + head)
            chunk = bytes(1 << 20)
        else:  # PS3.8 D.1: PDVs no longer than the listener's Maximum Length Received
            fragment = assoc.acceptor.maximum_length - 6
            sock.sendall(_p_data_tf(context_id, 0x00, head))
            chunk = _p_data_tf(context_id, 0x00, bytes(fragment))
        sent = len(head)
        while sent < GIVE_UP_AFTER and not aborted.is_set():
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:  # reset or closed by the listener
        pass
    aborted.wait(10)
    if assoc.is_established:
        assoc.abort()
    return str(ds.SOPInstanceUID), sent, aborted.is_set()


def _upload(web_port: int, data: bytes) -> tuple[int, bytes]:
    """POST ``data`` to the upload page with "queue" ticked, as a user behind a trusted proxy."""
    headers = {"X-Remote-User": WEB_USER}
    conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=180)
    try:
        conn.request("GET", "/upload", headers=headers)
        page = conn.getresponse()
        cookie = page.getheader("set-cookie", "").split(";")[0]
        token = re.search(rb'name="csrf" value="([^"]+)"', page.read())
        assert token, "no CSRF token on the upload page"
        body, content_type = multipart_form(
            {"csrf": token.group(1).decode(), "queue": "1"}, data, "upload.dcm"
        )
        conn.request(
            "POST",
            "/upload",
            body=body,
            headers={**headers, "Cookie": cookie, "Content-Type": content_type},
        )
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def _real_film(films: list[Path], tmp: Path, name: str, index: int = 0) -> tuple[Path, str]:
    """A real film under new UIDs, Deflated (as a file in ``tmp``); returns it and its UID."""
    path = tmp / f"{name}.dcm"
    path.write_bytes(deflated_film(films[index], BOUNDS_ROOT, name))
    return path, str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# -- the tests ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_deflate_bomb_by_c_store_is_refused_a700(
    daemon: Daemon, bomb: Path, films: list[Path], tmp_path: Path
) -> None:
    """The 3 GiB-inflating data set is answered A700 (dataset_too_large, recorded), the
    association goes on (C-ECHO), and a film sent after it is scored."""
    assert _store_file(daemon.port, bomb) == 0xA700
    uid = str(read_file_meta_info(bomb).MediaStorageSOPInstanceUID)
    refused = [r for r in daemon.refusals() if r[0] == uid]
    assert [r[1] for r in refused] == ["dataset_too_large"], refused
    assert "inflates to more than listener.max_dataset_mb (256 MB)" in refused[0][2]
    film, film_uid = _real_film(films, tmp_path, "after_bomb_cstore")
    assert _store_file(daemon.port, film) == 0x0000
    daemon.scored(film_uid)
    daemon.check()


@pytest.mark.slow
def test_a_deflate_bomb_and_a_huge_file_in_the_watch_folder_are_rejected(
    daemon: Daemon, bomb: Path, films: list[Path], tmp_path: Path
) -> None:
    """Dropped, the bomb and a 2 GiB file (sparse, never read whole) are moved to the rejected
    folder with their reason (dataset_too_large), and a film dropped after them is scored."""
    import hashlib

    huge = tmp_path / "huge.dcm"
    with huge.open("wb") as f:
        f.truncate(2 << 30)
    digests = {hashlib.sha256(bomb.read_bytes()).hexdigest()[:16]: "bomb"}
    with huge.open("rb") as read:
        digests[hashlib.file_digest(read, "sha256").hexdigest()[:16]] = "huge"
    (daemon.incoming / "bomb.dcm").write_bytes(bomb.read_bytes())
    huge.rename(daemon.incoming / "huge.dcm")

    def rejected() -> dict[str, str]:
        jobs = daemon.rejected_jobs()
        return {name: jobs[d] for d, name in digests.items() if d in jobs}

    wait_for(lambda: len(rejected()) == 2, 120, interval=0.2)
    assert rejected() == {"bomb": "dataset_too_large", "huge": "dataset_too_large"}
    reasons = sorted(p.read_text() for p in daemon.rejected.glob("*.reason.txt"))
    assert sum("reason: dataset_too_large" in text for text in reasons) == 2
    assert any("inflates to more than" in text for text in reasons)
    assert any(f"the file is {2 << 30} bytes" in text for text in reasons)
    film, film_uid = _real_film(films, tmp_path, "after_bomb_folder", 1)
    (daemon.incoming / "film.dcm").write_bytes(film.read_bytes())
    daemon.scored(film_uid)
    daemon.check()


@pytest.mark.slow
def test_a_deflate_bomb_uploaded_to_the_web_is_refused(
    daemon: Daemon, bomb: Path, films: list[Path], tmp_path: Path
) -> None:
    """Uploaded with "queue" ticked, the bomb is neither assessed nor queued: 422 with
    dataset_too_large for both; the web model process and the daemon stay small, and a
    film sent after it is scored."""
    status, page = _upload(daemon.web_port, bomb.read_bytes())
    assert status == 422, page[-1500:]
    text = page.decode(errors="replace")
    assert re.search(r'id="upload-error">[^<]*\(dataset_too_large\)', text), text[-1500:]
    assert re.search(r'id="queued">[^<]*\(dataset_too_large\)', text), text[-1500:]
    film, film_uid = _real_film(films, tmp_path, "after_bomb_web", 2)
    assert _store_file(daemon.port, film) == 0x0000
    daemon.scored(film_uid)
    daemon.check()


@pytest.mark.slow
@pytest.mark.parametrize("one_pdu", [False, True], ids=["streamed", "one-4GB-pdu"])
def test_a_4_gb_c_store_is_aborted_at_the_limit(
    daemon: Daemon, films: list[Path], tmp_path: Path, one_pdu: bool
) -> None:
    """A C-STORE whose data set announces 4 GB, streamed in PDUs the listener accepts or sent
    as one PDU announcing 4 GB, is aborted (A-ABORT) once it would pass the limit, with no more
    than socket buffers sent beyond it; the refusal is recorded, the listener serves the
    next association and a film sent then is scored."""
    started = time.monotonic()
    uid, sent, aborted = _stream(daemon.port, one_pdu=one_pdu)
    assert aborted, f"no A-ABORT after {sent} bytes"
    assert sent < (SEND_MARGIN if one_pdu else LIMIT + SEND_MARGIN), f"{sent} bytes sent"
    refused = wait_for(lambda: [r for r in daemon.refusals() if r[0] == uid], 10)
    assert [r[1] for r in refused] == ["dataset_too_large"]
    assert refused[0][2].startswith("A-ABORT: the data set passed listener.max_dataset_mb")
    assert time.monotonic() - started < 120
    film, film_uid = _real_film(films, tmp_path, f"after_stream_{int(one_pdu)}")
    assert _store_file(daemon.port, film) == 0x0000
    daemon.scored(film_uid)
    daemon.check()


@pytest.mark.slow
def test_deflated_real_films_are_scored_by_c_store_and_folder(
    daemon: Daemon, films: list[Path], tmp_path: Path
) -> None:
    """Real films in Deflated Explicit VR Little Endian pass the bounded inflate and are
    scored, by C-STORE and from the watch folder."""
    by_store, store_uid = _real_film(films, tmp_path, "deflated_cstore", 1)
    by_folder, folder_uid = _real_film(films, tmp_path, "deflated_folder", 2)
    assert _store_file(daemon.port, by_store) == 0x0000
    (daemon.incoming / "deflated.dcm").write_bytes(by_folder.read_bytes())
    daemon.scored(store_uid)
    daemon.scored(folder_uid)
    daemon.check()
