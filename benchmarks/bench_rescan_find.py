"""A rescan's C-FIND answer of 100,000 studies: time and memory, streamed and gathered.

    .venv/bin/python benchmarks/bench_rescan_find.py [--studies 100000]

A pynetdicom C-FIND SCP in its own process (tests/rescan/find_scp.py) answers the STUDY-level
query with ``--studies`` studies. In a fresh child process each, the client takes the answer
as the rescan now does (:meth:`PacsClient.iter_studies`, ``FIND_CHUNK`` studies at a time,
each chunk checked against an empty SQLite database by ``backlog.missing_studies``), and
gathered into one sorted list as before (:meth:`PacsClient.find_studies`). Prints seconds and
the child's peak resident memory (``ru_maxrss``) above what it held before the query.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = """
import json, resource, sys, time
from datetime import datetime, timedelta
from itertools import islice
from screener.db import Database
from screener.db.migrate import upgrade
from screener.rescan import backlog
from screener.rescan.query import PacsClient, parse_pacs
from screener.rescan.run import FIND_CHUNK
port, mode, url = int(sys.argv[1]), sys.argv[2], sys.argv[3]
db = Database(url)
upgrade(db)
client = PacsClient(parse_pacs(f"PACS@127.0.0.1:{port}"), "SCREENER", 600)
now = datetime.now()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if mode == "streamed":
    studies, found, missing = client.iter_studies(now - timedelta(days=1), now, ["CR"]), 0, 0
    while chunk := list(islice(studies, FIND_CHUNK)):
        found += len(chunk)
        missing += len(backlog.missing_studies(db, [m.study_instance_uid for m in chunk]))
else:
    matches = client.find_studies(now - timedelta(days=1), now, ["CR"])
    found = len(matches)
    missing = len(backlog.missing_studies(db, [m.study_instance_uid for m in matches]))
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"found": found, "missing": missing, "seconds": seconds,
                  "rss_before_kb": before, "rss_peak_kb": peak}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(mode: str, studies: int, work: Path) -> dict[str, float]:
    port = _free_port()
    scp = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "rescan" / "find_scp.py"), str(port), str(studies)]
    )
    try:
        for _ in range(600):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        url = f"sqlite:///{work / f'{mode}.db'}"
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(port), mode, url],
            cwd=REPO, capture_output=True, text=True, timeout=3600, check=True,
        )  # fmt: skip
        result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
        return result
    finally:
        scp.terminate()
        scp.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--modes", default="streamed,gathered")
    args = parser.parse_args()
    print(f"C-FIND answer of {args.studies:,} studies (pynetdicom SCP, one process)")
    print(f"{'client':<36}{'found':>9}{'seconds':>9}{'peak RSS above start, MB':>26}")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            r = run(mode, args.studies, Path(tmp))
            label = {"streamed": "streamed (iter_studies, 1,000/chunk)", "gathered": "gathered (find_studies, as before)"}[mode]  # fmt: skip
            grew = (r["rss_peak_kb"] - r["rss_before_kb"]) / 1024
            print(f"{label:<36}{int(r['found']):>9,}{r['seconds']:>9.1f}{grew:>26.1f}", flush=True)


if __name__ == "__main__":
    main()
