"""Ingest speed: instances/s that `screener serve` (worker off) takes from dcmtk's storescu,
and, with ``--end-to-end``, films/s from the first receipt to the last score (worker on).

Small CR films (224 px, 8-bit, uncompressed; the training JPEGs wrapped as DICOM) are pushed
by plain storescu on one association, and by four concurrent associations; each with Nagle's
algorithm left on in storescu (dcmtk's default) and with ``TCP_NODELAY=1`` in its environment.
Every run starts a fresh daemon with a fresh SQLite database and spool. With ``--peers`` the
same pushes go to dcmtk's storescp (raw files, no database), to pynetdicom's own server
answering Success at once (the floor under any pynetdicom handler) and to Debian's Orthanc.
Prints one table.

    .venv/bin/python benchmarks/bench_ingest.py --films 624 --peers --end-to-end
    .venv/bin/python benchmarks/bench_ingest.py --films 624 --processes

``--processes``: 1, 2 and 4 concurrent storescu (``TCP_NODELAY=1``) against
``listener.processes`` 1 and 2 (the daemon's listener and one more process on its port,
SO_REUSEPORT), each with the receiver's CPU per instance and the rate 16 cores would allow at
that cost; ``--postgres``: the same on a fresh database of the local PostgreSQL per run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_scale, for --postgres
DATA = Path(os.environ.get("SCREENER_DATA") or REPO.parent / "shared" / "data")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_films(n: int, out: Path) -> list[Path]:
    """``n`` small CR films from the training JPEGs (224 px, MONOCHROME2, 8 bit)."""
    import numpy as np
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sources = sorted((DATA / "chest_xray" / "train" / "NORMAL").glob("*.jpeg"))[:64]
    if not sources:
        raise SystemExit(f"no training JPEGs under {DATA} (set SCREENER_DATA)")
    pixels = [np.asarray(Image.open(p).convert("L").resize((224, 224))) for p in sources]
    out.mkdir(parents=True)
    paths = []
    for i in range(n):
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        ds.SOPInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "AP"
        ds.PatientAge, ds.StudyDate = "003Y", "20261128"
        ds.Rows = ds.Columns = 224
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = pixels[i % len(pixels)].tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out / f"f{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def cpu_seconds(pid: int | None) -> float:
    """CPU time of ``pid``, its descendants and its reaped children (``None``: this process)."""
    if pid is None:
        return time.process_time()
    ticks = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15]) / ticks  # utime stime cutime cstime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return total


def measured_push(
    pid: int | None, port: int, files: list[Path], streams: int, nodelay: bool, aet: str
) -> tuple[float, float]:
    """Seconds of the push and CPU seconds the receiver (``pid``'s tree) spent meanwhile."""
    before = cpu_seconds(pid)
    seconds = push(port, files, streams, nodelay, aet)
    return seconds, cpu_seconds(pid) - before


def push(port: int, files: list[Path], streams: int, nodelay: bool, aet: str) -> float:
    """Seconds for ``streams`` concurrent storescu processes to send ``files``."""
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    chunks = [files[i::streams] for i in range(streams)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["/usr/bin/storescu", "-aec", aet, "127.0.0.1", str(port), *map(str, chunk)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for chunk in chunks
    ]
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - t0


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    """Until ``port`` accepts a connection (60 s at most, and not after ``proc`` exits)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"{what} did not start") from None
            time.sleep(0.2)


def serve_env(run: Path, port: int, **extra: str) -> dict[str, str]:
    """The environment of a `screener serve` with its database and spool in ``run``, no
    configuration file, listening on 127.0.0.1:``port``, no watch folder, no rescans."""
    (run / "none.toml").write_text("")
    return {
        **os.environ,
        "SCREENER_CONFIG": str(run / "none.toml"),
        "SCREENER_DATABASE_URL": f"sqlite:///{run / 'db.sqlite'}",
        "SCREENER_STORAGE_SPOOL_DIR": str(run / "spool"),
        "SCREENER_STORAGE_PURGE_INTERVAL_MINUTES": "0",
        "SCREENER_WATCH_ENABLED": "false",
        "SCREENER_LISTENER_HOST": "127.0.0.1",
        "SCREENER_LISTENER_PORT": str(port),
        "SCREENER_RESCAN_SCHEDULE": "",
        **extra,
    }


def screener_run(
    work: Path,
    files: list[Path],
    streams: int,
    nodelay: bool,
    listeners: int = 1,
    postgres: bool = False,
) -> tuple[float, float]:
    """A fresh daemon (worker off) on a fresh SQLite database, or with ``postgres`` a fresh
    database on the local PostgreSQL (bench_scale's ``SCREENER_TEST_PG_ADMIN``)."""
    run = Path(tempfile.mkdtemp(dir=work))
    port = free_port()
    extra = {"SCREENER_LISTENER_PROCESSES": str(listeners)}
    pg_url = None
    if postgres:
        from bench_scale import pg_create

        pg_url = extra["SCREENER_DATABASE_URL"] = pg_create()
    env = serve_env(
        run, port, SCREENER_WORKER_ENABLED="false", SCREENER_LOGGING_LEVEL="warning", **extra
    )
    log = (run / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "screener.cli", "serve"], env=env, stdout=log, stderr=log
    )
    try:
        wait_listening(port, serve, f"serve ({run / 'serve.log'})")
        if listeners > 1:  # until the other listener processes are up (they log at warning)
            deadline = time.monotonic() + 60
            while len(_children(serve.pid)) < listeners - 1:
                if time.monotonic() > deadline:
                    raise SystemExit(f"listener processes did not start ({run / 'serve.log'})")
                time.sleep(0.2)
            time.sleep(2.0)  # a spawned child imports for a while before it binds
        measured = measured_push(serve.pid, port, files, streams, nodelay, "SCREENER")
    finally:
        serve.terminate()
        serve.wait(120)
        log.close()
    if pg_url is not None:
        import psycopg
        from bench_scale import pg_drop

        with psycopg.connect(pg_url.replace("+psycopg", "")) as conn:
            row = conn.execute("select count(*) from instances").fetchone()
            n = int(row[0]) if row else 0
        pg_drop(pg_url)
    else:
        import sqlite3

        with sqlite3.connect(run / "db.sqlite") as c:
            (n,) = c.execute("select count(*) from instances").fetchone()
    if n != len(files):
        raise SystemExit(f"{n} instances recorded of {len(files)} sent")
    shutil.rmtree(run, ignore_errors=True)
    return measured


def _children(pid: int) -> list[int]:
    """``pid``'s child processes but multiprocessing's resource tracker."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"resource_tracker" not in cmdline:
                found.append(int(child))
    return found


def storescp_run(work: Path, files: list[Path], streams: int, nodelay: bool) -> tuple[float, float]:
    out = Path(tempfile.mkdtemp(dir=work))
    port = free_port()
    scp = subprocess.Popen(
        ["/usr/bin/storescp", "--fork", "-od", str(out), "-aet", "STORESCP", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "TCP_NODELAY": "1"},  # as screener's listener does
    )  # fmt: skip
    time.sleep(0.5)
    try:
        return measured_push(scp.pid, port, files, streams, nodelay, "STORESCP")
    finally:
        scp.terminate()
        scp.wait(30)
        shutil.rmtree(out, ignore_errors=True)


def end_to_end(work: Path, files: list[Path], streams: int) -> tuple[float, float]:
    """Seconds from the first instance received to the last score, worker on, plain storescu,
    and the CPU seconds every serve process spent from the push to the last score."""
    import sqlite3
    from datetime import datetime

    run = Path(tempfile.mkdtemp(dir=work))
    port = free_port()
    env = serve_env(run, port, SCREENER_LOGGING_FORMAT="json")
    log_path = run / "serve.log"
    log = log_path.open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "screener.cli", "serve"], env=env, stdout=log, stderr=log
    )
    db = run / "db.sqlite"
    try:
        deadline = time.monotonic() + 180
        while b'"worker_started"' not in log_path.read_bytes():  # the model is loaded
            if time.monotonic() > deadline or serve.poll() is not None:
                raise SystemExit(f"serve did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        cpu_before = cpu_seconds(serve.pid)
        push(port, files, streams, False, "SCREENER")
        deadline = time.monotonic() + 1800
        while True:
            with sqlite3.connect(db) as c:
                (n,) = c.execute(
                    "select count(*) from jobs where state in ('done', 'failed')"
                ).fetchone()
            if n >= len(files):
                cpu = cpu_seconds(serve.pid) - cpu_before
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{n} of {len(files)} scored in 30 min")
            time.sleep(0.2)
        with sqlite3.connect(db) as c:
            first, last, results = c.execute(
                "select (select min(received_at) from instances), max(scored_at), count(*) "
                "from results"
            ).fetchone()
    finally:
        serve.terminate()
        serve.wait(120)
        log.close()
    if results != len(files):
        raise SystemExit(f"{results} results of {len(files)} films")
    shutil.rmtree(run, ignore_errors=True)
    return (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds(), cpu


def orthanc_run(work: Path, files: list[Path], streams: int, nodelay: bool) -> tuple[float, float]:
    """Debian's Orthanc (SQLite index, files on disk), options as in /etc/orthanc/orthanc.json."""
    import json

    out = Path(tempfile.mkdtemp(dir=work))
    port, http = free_port(), free_port()
    config = {
        "Name": "bench", "StorageDirectory": str(out), "IndexDirectory": str(out),
        "Plugins": [], "HttpPort": http, "RemoteAccessAllowed": False,
        "DicomAet": "ORTHANC", "DicomPort": port, "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True, "SaveJobs": False,
    }  # fmt: skip
    (out / "orthanc.json").write_text(json.dumps(config))
    orthanc = subprocess.Popen(
        ["/usr/sbin/Orthanc", str(out / "orthanc.json")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_listening(port, orthanc, "Orthanc")
        return measured_push(orthanc.pid, port, files, streams, nodelay, "ORTHANC")
    finally:
        orthanc.terminate()
        orthanc.wait(60)
        shutil.rmtree(out, ignore_errors=True)


def pynetdicom_run(
    work: Path, files: list[Path], streams: int, nodelay: bool
) -> tuple[float, float]:
    """pynetdicom's own association server answering Success at once (nothing kept), with
    screener's socket tuning: the floor under any handler pynetdicom runs."""
    from functools import partial

    from pynetdicom import AE, AllStoragePresentationContexts, evt

    from screener.dicomnet.netopts import tune_socket

    ae = AE("NOOP")
    ae.maximum_pdu_size = 0
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax)
    port = free_port()
    handlers: list[Any] = [
        (evt.EVT_C_STORE, lambda event: 0x0000),
        (evt.EVT_CONN_OPEN, partial(tune_socket, quick_ack=True)),
    ]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    assert server is not None
    try:
        return measured_push(None, port, files, streams, nodelay, "NOOP")
    finally:
        server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, default=624)
    parser.add_argument("--peers", action="store_true", help="also time dcmtk's storescp")
    parser.add_argument(
        "--end-to-end", action="store_true", help="also time receipt to score, worker on"
    )
    parser.add_argument(
        "--processes",
        action="store_true",
        help="instead: 1, 2 and 4 senders (TCP_NODELAY=1) against 1 and 2 listener processes",
    )
    parser.add_argument(
        "--postgres", action="store_true", help="--processes on the local PostgreSQL instead"
    )
    parser.add_argument("--senders", default="1,2,4", help="--processes: sender counts")
    parser.add_argument(
        "--repeat", type=int, default=1, help="--processes: the whole series this many times"
    )
    args = parser.parse_args()
    if not os.access("/usr/bin/storescu", os.X_OK):
        raise SystemExit("dcmtk's /usr/bin/storescu is needed (apt-get install dcmtk)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = make_films(args.films, work / "films")
        print(
            f"ingest of {len(files)} CR films (224 px, 8 bit, Explicit VR LE), {os.cpu_count()} cores"
        )
        print(
            f"{'receiver':<28}{'sender':<34}{'seconds':>9}{'instances/s':>13}"
            f"{'receiver CPU ms/instance':>26}"
        )
        if args.processes:
            senders = [int(n) for n in args.senders.split(",")]
            for _ in range(args.repeat):  # interleaved, so that a change of load shows
                listener_processes(work, files, args.postgres, senders)
            return
        runs = [(1, False), (1, True), (4, False), (4, True)]
        receivers: list[tuple[str, Callable[..., tuple[float, float]]]] = [
            ("screener serve (worker off)", screener_run)
        ]
        if args.peers:
            receivers.append(("dcmtk storescp (raw files)", storescp_run))
            receivers.append(("pynetdicom, no-op handler", pynetdicom_run))
            if os.access("/usr/sbin/Orthanc", os.X_OK):
                receivers.append(("Orthanc (Debian)", orthanc_run))
        for name, fn in receivers:
            for streams, nodelay in runs:
                sender = f"storescu x{streams}, " + (
                    "TCP_NODELAY=1" if nodelay else "Nagle on (default)"
                )
                seconds, cpu = fn(work, files, streams, nodelay)
                print(
                    f"{name:<28}{sender:<34}{seconds:>9.1f}{len(files) / seconds:>13.0f}"
                    f"{1000 * cpu / len(files):>26.2f}"
                )
        if args.end_to_end:
            cores = os.cpu_count() or 1
            print(
                f"end to end, worker on (first receipt to last score){'':>8}films/s"
                f"{'serve CPU ms/film':>26}  bound: {cores} cores / CPU per film"
            )
            for streams in (1, 4):
                seconds, cpu = end_to_end(work, files, streams)
                sender = f"storescu x{streams}, Nagle on (default)"
                per_film = cpu / len(files)
                print(
                    f"{'screener serve':<28}{sender:<34}{seconds:>9.1f}{len(files) / seconds:>13.0f}"
                    f"{1000 * per_film:>26.2f}  {cores / per_film:.0f} films/s"
                )


def listener_processes(work: Path, files: list[Path], postgres: bool, senders: list[int]) -> None:
    """``listener.processes`` 1 and 2 against 1, 2 and 4 concurrent storescu (TCP_NODELAY=1),
    worker off; the receiver's CPU (serve and its children) per instance, and what that CPU
    cost allows a host of 16 cores (the senders and the database elsewhere)."""
    print(
        f"{'database':<12}{'listener.processes':<20}{'senders':>8}{'seconds':>9}"
        f"{'instances/s':>13}{'CPU ms/instance':>17}{'16-core bound/s':>17}"
    )
    for database in ("postgresql",) if postgres else ("sqlite",):
        for streams in senders:
            for listeners in (1, 2):
                seconds, cpu = screener_run(
                    work, files, streams, True, listeners, database == "postgresql"
                )
                per = cpu / len(files)
                print(
                    f"{database:<12}{listeners:<20}{streams:>8}{seconds:>9.1f}"
                    f"{len(files) / seconds:>13.0f}{1000 * per:>17.2f}{16 / per:>17.0f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
