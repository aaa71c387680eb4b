"""``listener.processes = 2``: a second listener process shares the daemon's port
(``SO_REUSEPORT``), both take associations into the one database, one killed is restarted
and recorded, and none outlives ``screener serve``."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import threading
import zlib
from pathlib import Path
from typing import Any

import pytest
from support import ServeProcess, build_dicom, dcmtk_tool, free_port, serve_env, wait_for

from screener.ingest.listener import UidLocks

pytestmark = pytest.mark.slow

ASSOCIATIONS = 12


def _events(serve: ServeProcess, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in serve.log().splitlines() if line.startswith("{")]
    return [e for e in lines if e.get("event") == event]


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets ``pid`` holds open (from /proc/PID/fd)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _established_to(port: int) -> set[str]:
    """Inodes of the accepted (ESTABLISHED, state 01) connections to our ``port``."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01" and fields[9] != "0":
            found.add(fields[9])
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _store_over_held_associations(
    port: int, films: list[Path], held: dict[int, int], pids: list[int]
) -> list[int]:
    """Open one association per film, all at once; while they are open count, per pid, the
    accepted connections it holds into ``held``; send each film; release; the statuses."""
    from pydicom import dcmread
    from pynetdicom import AE

    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    meta = dcmread(films[0], stop_before_pixels=True).file_meta
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    assocs = [ae.associate("127.0.0.1", port, ae_title="SCREENER") for _ in films]
    try:
        assert all(a.is_established for a in assocs), "an association was not established"
        accepted = _established_to(port)
        for pid in pids:
            held[pid] = len(_socket_inodes(pid) & accepted)
        statuses = []
        for assoc, film in zip(assocs, films, strict=True):
            rsp = assoc.send_c_store(film)
            statuses.append(int(rsp.Status) if "Status" in rsp else -1)
    finally:
        for assoc in assocs:
            assoc.release()
    return statuses


@pytest.mark.timeout(300)
def test_two_listener_processes_share_the_port_and_a_killed_one_comes_back(
    tmp_path: Path,
) -> None:
    """Both listener processes hold accepted associations on the one port and every C-STORE
    is recorded; the extra one, killed, is restarted (an audit row says so) and takes
    associations again (pynetdicom's, then dcmtk storescu's); after ``serve`` stops no
    listener process is left."""
    port, db = free_port(), tmp_path / "s.db"
    env = serve_env(
        tmp_path, f"sqlite:///{db}", port,
        SCREENER_LISTENER_PROCESSES="2", SCREENER_LISTENER_MAX_ASSOCIATIONS="40",
        SCREENER_WORKER_ENABLED="false", SCREENER_STORAGE_PURGE_INTERVAL_MINUTES="0",
        SCREENER_WORKER_RESTART_BACKOFF_SECONDS="0.5",
    )  # fmt: skip
    films = []
    for i in range(3 * ASSOCIATIONS):
        films.append(tmp_path / f"f{i}.dcm")
        films[-1].write_bytes(build_dicom(sop_instance_uid=f"1.2.826.0.1.3680043.10.2424.{i}"))
    serve = ServeProcess(tmp_path, env).start()
    assert serve.proc is not None
    started = wait_for(lambda: _events(serve, "listener_process_started"), timeout=60)
    first = int(started[0]["pid"])
    held: dict[int, int] = {}
    statuses = _store_over_held_associations(
        port, films[:ASSOCIATIONS], held, [serve.proc.pid, first]
    )
    assert statuses == [0] * ASSOCIATIONS
    # the kernel spreads connections over the two sockets by their addresses: twelve all
    # landing on one of two has a chance of 1 in 2,048
    assert held[serve.proc.pid] > 0 and held[first] > 0, held
    assert held[serve.proc.pid] + held[first] == ASSOCIATIONS, held

    os.kill(first, signal.SIGKILL)
    again = wait_for(lambda: _events(serve, "listener_process_started")[1:], timeout=60)
    second = int(again[0]["pid"])
    assert second != first and not _alive(first)
    died = _events(serve, "listener_process_died")
    assert died and died[0]["why"] == "killed by SIGKILL"
    held = {}
    statuses = _store_over_held_associations(
        port, films[ASSOCIATIONS : 2 * ASSOCIATIONS], held, [serve.proc.pid, second]
    )
    assert statuses == [0] * ASSOCIATIONS
    assert held[second] > 0, held
    storescu = dcmtk_tool("storescu")
    if storescu is not None:  # and dcmtk's storescu, one association per film, all at once
        pushes = [
            subprocess.Popen(
                [storescu, "-aec", "SCREENER", "127.0.0.1", str(port), str(film)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for film in films[2 * ASSOCIATIONS :]
        ]
        for push in pushes:
            _, err = push.communicate(timeout=120)
            assert push.returncode == 0, err.decode()[-500:]
    stored = 3 * ASSOCIATIONS if storescu is not None else 2 * ASSOCIATIONS

    assert serve.terminate() == 0
    wait_for(lambda: not _alive(second), timeout=30)
    with sqlite3.connect(db) as c:
        (instances,) = c.execute("select count(*) from instances").fetchone()
        restarts = c.execute(
            "select reason, message from audit_events where event = 'process_restarted'"
        ).fetchall()
    assert instances == stored
    assert restarts == [("listener-1", "listener process killed by SIGKILL")]


def _hold(folder: str, uid: str, held: Any, release: Any) -> None:
    with UidLocks(folder).hold(uid):
        held.set()
        release.wait(30)


def test_one_uid_is_accepted_by_one_listener_process_at_a_time(tmp_path: Path) -> None:
    """While another process holds a SOP Instance UID's lock, a C-STORE of the same UID here
    waits for it, and one of another UID does not."""
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    uid, other = "1.2.826.0.1.3680043.10.2424.1", "1.2.826.0.1.3680043.10.2424.2"
    locks = UidLocks(tmp_path)
    assert locks.buckets > 1
    while zlib.crc32(other.encode()) % locks.buckets == zlib.crc32(uid.encode()) % locks.buckets:
        other += "1"
    holder = ctx.Process(target=_hold, args=(str(tmp_path), uid, held, release))
    holder.start()
    try:
        assert held.wait(60)
        with locks.hold(other):
            pass  # another bucket: not held up
        got = threading.Event()

        def same() -> None:
            with locks.hold(uid):
                got.set()

        waiter = threading.Thread(target=same, daemon=True)
        waiter.start()
        assert not got.wait(0.5), "the lock held by the other process did not hold this one"
        release.set()
        assert got.wait(30)
    finally:
        release.set()
        holder.join(30)
