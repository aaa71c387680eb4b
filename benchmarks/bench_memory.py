"""Memory over a long backlog: the resident set of every `screener serve` process at the
1,000th and at the last scored film of a 10,000-film backlog (issue 12: within 10%).

    .venv/bin/python benchmarks/bench_memory.py [--films 10000]

The films are small CR images (224 px, 8 bit; the training JPEGs wrapped as DICOM, as in
bench_ingest.py), generated in a temporary folder and removed afterwards. They are pushed by
four dcmtk storescu associations to ``screener serve --no-worker``; then ``screener serve``
drains them (its worker process and decode pool included) while /proc is read.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_ingest import free_port, make_films, push, serve_env

REPO = Path(__file__).resolve().parents[1]


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return out


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def role(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"
    if "screener.cli serve" in cmd:
        return "serve (listener, exporter)"
    if "resource_tracker" in cmd:
        return "multiprocessing resource tracker"
    if "spawn_main" in cmd or "forkserver" in cmd:
        return "worker / decode process"
    return cmd[:40]


def snapshot(pid: int) -> dict[int, tuple[str, float]]:
    return {
        p: (role(p), mb) for p in tree(pid) if (mb := rss_mb(p)) is not None and p != os.getpid()
    }


def done(db: Path) -> int:
    with sqlite3.connect(db) as c:
        (n,) = c.execute("select count(*) from jobs where state in ('done', 'failed')").fetchone()
    return int(n)


def serve(run: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    log = (run / "serve.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "screener.cli", "serve", *args], env=env, stdout=log, stderr=log
    )
    deadline = time.monotonic() + 180
    marker = b'"worker_started"' if not args else b'"daemon_started"'
    while marker not in (run / "serve.log").read_bytes():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"serve did not start: {(run / 'serve.log').read_text()[-2000:]}")
        time.sleep(0.2)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--films", type=int, default=10_000)
    parser.add_argument("--early", type=int, default=1_000, help="the first snapshot's film")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        files = make_films(args.films, run / "films")
        port = free_port()
        env = serve_env(run, port, SCREENER_LOGGING_FORMAT="json")
        accept = serve(run, env, "--no-worker")
        start = time.perf_counter()
        push(port, files, 4, False, "SCREENER")
        print(f"{args.films} films pushed in {time.perf_counter() - start:.0f} s (storescu x4)")
        accept.terminate()
        accept.wait(120)
        daemon = serve(run, env)
        db = run / "db.sqlite"
        try:
            early: dict[int, tuple[str, float]] = {}
            start = time.perf_counter()
            while done(db) < args.films:
                if not early and done(db) >= args.early:
                    early = snapshot(daemon.pid)
                if time.perf_counter() - start > 3600:
                    raise SystemExit(f"{done(db)} of {args.films} scored in an hour")
                time.sleep(0.5)
            late = snapshot(daemon.pid)
            seconds = time.perf_counter() - start
        finally:
            daemon.terminate()
            daemon.wait(120)
        print(f"drained in {seconds:.0f} s ({args.films / seconds:.0f} films/s)")
        print(
            f"{'process':<34}{'pid':>8}{f'RSS @ {args.early}':>14}{f'RSS @ {args.films}':>15}{'change':>9}"
        )
        for pid, (name, before) in sorted(early.items()):
            after = late.get(pid, (name, float("nan")))[1]
            print(
                f"{name:<34}{pid:>8}{before:>11.0f} MB{after:>12.0f} MB{100 * (after - before) / before:>+8.1f}%"
            )
        for pid in sorted(set(late) - set(early)):
            print(f"{late[pid][0]:<34}{pid:>8}{'(new)':>14}{late[pid][1]:>12.0f} MB")


if __name__ == "__main__":
    main()
