"""The hostile corpus through a running ``screener serve``: by C-STORE and by the watch folder.

The real daemon (its worker process, decode process and the shipped model) receives every
case of :mod:`hostile`: malformed pixel data, decompression bombs, bad UIDs, mislabelled
transfer syntaxes, an empty data set, and 16 valid films beside them. pynetdicom is the
sender, sending each file's bytes as they are (``send_c_store(path)`` does not decode them).
For every case: the C-STORE status, the job's final state and reason (or the refusal's
reason), and a C-ECHO answered right after; at the end, no process of the daemon above its
memory limit.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest
from hostile import EMPTY, NO_CONTEXT, Case, Sources, build_cases
from support import ServeProcess, free_port, serve_env, wait_for

CSTORE_ROOT = "1.2.826.0.1.3680043.10.1001"
FOLDER_ROOT = "1.2.826.0.1.3680043.10.1002"
#: The issue's bound for any process of the daemon (the worker with TensorFlow is ~1.4 GB).
MAX_RSS_BYTES = 3 << 30
DECODE_MEMORY_MB = 2048

pytestmark = [
    pytest.mark.slow,
    # building the hostile files makes pydicom warn about the very values under test
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _status_field(pid: int, field: str) -> str | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _peak_rss(pid: int) -> int:
    value = _status_field(pid, "VmHWM")  # e.g. "1400000 kB"
    return int(value.split()[0]) * 1024 if value else 0


def _address_space_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max address space"):
            return line.split()[3]
    return ""


def _c_store_case(port: int, case: Case, path: Path) -> tuple[int, int]:
    """Send one case on its own association; returns (C-STORE status, C-ECHO status)."""
    from pydicom import dcmread
    from pynetdicom import AE
    from pynetdicom.dimse_primitives import C_STORE

    ae = AE(ae_title="HOSTILE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 90  # a loaded CI host stalls
    ae.add_requested_context("1.2.840.10008.1.1")
    if case.name == EMPTY:
        sop_class, sop_uid, syntax = (
            "1.2.840.10008.5.1.4.1.1.1",
            f"{CSTORE_ROOT}.9.1",
            "1.2.840.10008.1.2.1",
        )
    else:
        meta = dcmread(path, stop_before_pixels=True, force=True).file_meta
        sop_class = str(meta.MediaStorageSOPClassUID)
        sop_uid = str(meta.MediaStorageSOPInstanceUID)
        syntax = str(meta.TransferSyntaxUID)
    ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="SCREENER")
    assert assoc.is_established, f"{case.name}: association refused"
    try:
        store_cx = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class]
        if not store_cx:
            status = NO_CONTEXT
        elif case.name == EMPTY:  # a request that announces a data set and sends none
            req = C_STORE()
            req.MessageID = 1
            req.AffectedSOPClassUID = sop_class
            req.AffectedSOPInstanceUID = sop_uid
            req.Priority = 2
            req.DataSet = io.BytesIO(b"")
            # pause the requestor's reactor as pynetdicom's own send_c_store does, so that
            # the response comes to us rather than to its handler of unsolicited messages
            assoc._reactor_checkpoint.clear()
            wait_for(lambda: assoc._is_paused, 5, interval=0.001)
            try:
                context_id = store_cx[0].context_id
                assert context_id is not None
                assoc.dimse.send_msg(req, context_id)
                _cx, rsp = assoc.dimse.get_msg(block=True)
            finally:
                assoc._reactor_checkpoint.set()
            code = rsp.Status if rsp is not None else None
            status = int(code) if code is not None else -1
        else:
            answer = assoc.send_c_store(path)
            status = int(answer.Status) if "Status" in answer else -1
        assert assoc.is_established, f"{case.name}: the association did not survive"
        echo = assoc.send_c_echo()
        echo_status = int(echo.Status) if "Status" in echo else -1
    finally:
        if assoc.is_established:
            assoc.release()
    return status, echo_status


def _rows(db_url: str, statement: Any) -> list[Any]:
    """Run one query against the daemon's database, on a connection of the test's own."""
    from screener.db import Database

    db = Database(db_url)
    try:
        with db.transaction() as session:
            return list(session.execute(statement).all())
    finally:
        db.dispose()


def _jobs_by_uid(db_url: str) -> dict[str, tuple[str, str | None]]:
    """SOP Instance UID -> (job state, reason)."""
    from sqlalchemy import select

    from screener.db import Instance, Job

    rows = _rows(
        db_url,
        select(Instance.sop_instance_uid, Job.state, Job.reason)
        .join(Job, Job.instance_id == Instance.id)
        .order_by(Job.id),
    )
    return {uid: (str(getattr(state, "value", state)), reason) for uid, state, reason in rows}


def _refusals(db_url: str) -> dict[str, str]:
    """SOP Instance UID -> the reason its C-STORE was refused."""
    from sqlalchemy import select

    from screener.db import AuditEvent

    rows = _rows(
        db_url,
        select(AuditEvent.sop_instance_uid, AuditEvent.reason).where(
            AuditEvent.event == "store_refused"
        ),
    )
    return {uid: reason for uid, reason in rows if uid}


def _rejected(db_url: str) -> dict[str, str]:
    """Rejected watch-folder files: content digest (from the rejected name) -> reason."""
    from sqlalchemy import select

    from screener.db import Job, JobState

    rows = _rows(db_url, select(Job.source_path, Job.reason).where(Job.state == JobState.REJECTED))
    return {Path(path).stem.split("-")[1]: reason for path, reason in rows if path}


def _unfinished(db_url: str) -> int:
    from sqlalchemy import func, select

    from screener.db import Job, JobState

    statement = (
        select(func.count())
        .select_from(Job)
        .where(Job.state.in_([JobState.QUEUED, JobState.PROCESSING]))
    )
    return int(_rows(db_url, statement)[0][0])


def test_hostile_corpus_through_a_running_daemon(
    db_url: str, tmp_path: Path, data_dir: Path, serve_process: Any
) -> None:
    """Every malformed input is refused or failed with its reason, the valid films beside
    them are scored, C-ECHO is answered after each, and no process passes its memory limit."""
    src = Sources(data_dir / "dicom" / "siim_chest_cr")
    cases = build_cases(src)
    assert len(cases) - sum(c.name.startswith("valid_") for c in cases) >= 60
    port = free_port()
    env = serve_env(
        tmp_path,
        db_url,
        port,
        SCREENER_WORKER_DECODE_MEMORY_MB=str(DECODE_MEMORY_MB),
        SCREENER_QUEUE_MAX_ATTEMPTS="2",
        SCREENER_RESCAN_SCHEDULE="",
    )
    serve: ServeProcess = serve_process(env).start()
    assert serve.proc is not None
    wait_for(lambda: "worker_started" in serve.log(), 120)

    # -- by C-STORE -------------------------------------------------------------------
    sent: dict[str, tuple[int, int]] = {}
    uids: dict[str, str] = {}
    for case in cases:
        data = case.build(CSTORE_ROOT)
        path = tmp_path / "cstore" / f"{case.name}.dcm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        sent[case.name] = _c_store_case(port, case, path)
        uids[case.name] = _sop_uid(CSTORE_ROOT, case)

    # -- by the watch folder ------------------------------------------------------------
    incoming = tmp_path / "incoming"
    digests: dict[str, str] = {}
    for case in cases:
        data = case.build(FOLDER_ROOT)
        digests[hashlib.sha256(data).hexdigest()[:16]] = case.name
        (incoming / f"{case.name}.dcm").write_bytes(data)

    def settled() -> bool:
        """Every dropped case has its outcome (a job or a rejection) and no job is in hand."""
        if any(incoming.iterdir()) or _unfinished(db_url) != 0:
            return False
        jobs, rejected = _jobs_by_uid(db_url), set(_rejected(db_url))
        named = {digests[d] for d in rejected if d in digests}
        return (
            all(case.name in named or _sop_uid(FOLDER_ROOT, case) in jobs for case in cases)
            and _unfinished(db_url) == 0
        )

    wait_for(settled, 300, interval=0.5)

    jobs = _jobs_by_uid(db_url)
    refusals = _refusals(db_url)
    rejected = {
        name: reason
        for digest, reason in _rejected(db_url).items()
        if (name := digests.get(digest)) is not None
    }
    problems: list[str] = []
    for case in cases:
        want = case.expect
        status, echo = sent[case.name]
        if echo != 0x0000:
            problems.append(f"{case.name}: C-ECHO after it answered {echo:#06x}")
        if status != want.status:
            problems.append(
                f"{case.name}: C-STORE status {status:#06x}, expected {want.status:#06x}"
            )
        uid = uids[case.name]
        if want.status == 0x0000:
            got = jobs.get(uid, ("missing", None))
            if got != (want.state, want.reason):
                problems.append(
                    f"{case.name}: C-STORE job {got}, expected {(want.state, want.reason)}"
                )
        elif want.status != NO_CONTEXT and refusals.get(uid) != want.reason:
            problems.append(f"{case.name}: refusal {refusals.get(uid)}, expected {want.reason}")
        folder_state, folder_reason = want.from_folder()
        if folder_state == "rejected":
            got_reason = rejected.get(case.name)
            if got_reason != folder_reason:
                problems.append(
                    f"{case.name}: folder rejected as {got_reason}, expected {folder_reason}"
                )
        else:
            got = jobs.get(_sop_uid(FOLDER_ROOT, case), ("missing", None))
            if got != (folder_state, folder_reason):
                problems.append(
                    f"{case.name}: folder job {got}, expected {(folder_state, folder_reason)}"
                )
    assert not problems, "\n".join(problems)
    assert refusals.get(uids[EMPTY]) is None or refusals[uids[EMPTY]] == "empty_data_set"
    assert "empty_data_set" in serve.log()

    # -- the daemon's processes: alive, logging JSON lines, none above its limit ----------
    assert serve.proc.poll() is None, "screener serve died"
    raw = [line for line in serve.log().splitlines() if line.strip() and not line.startswith("{")]
    assert not raw, "lines that are not JSON in the log:\n" + "\n".join(raw[:20])
    family = [serve.proc.pid, *_descendants(serve.proc.pid)]
    for pid in family:
        rss = _peak_rss(pid)
        assert rss < MAX_RSS_BYTES, f"process {pid} peaked at {rss / (1 << 30):.2f} GiB"
    decoders = [pid for pid in family if _address_space_limit(pid) != "unlimited"]
    assert decoders, "no decode process runs under an address-space limit"
    assert {_address_space_limit(pid) for pid in decoders} == {str(DECODE_MEMORY_MB << 20)}
    from pynetdicom import AE

    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="SCREENER")
    assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
    assoc.release()


def _sop_uid(root: str, case: Case) -> str:
    from hostile import _uids

    if case.name == EMPTY:
        return f"{CSTORE_ROOT}.9.1"
    return _uids(root, case.name)[0]
