"""Every speed figure of issue 12 in one run, one benchmark after the other (about 15 minutes
on 2 cores): ingest with its peers and end to end, the inference engines, the backlog drain
against its bound with the latency of single studies, and memory over a 10,000-film backlog.

    .venv/bin/python benchmarks/bench_all.py [--quick]

``--quick`` makes every part smaller (a smoke run, not figures to record).
Results of a run on this project's machine are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    q = args.quick
    parts = [
        ("bench_ingest.py", ["--films", "120" if q else "624", "--peers", "--end-to-end"]),
        ("bench_model.py", ["--n", "128" if q else "1036"]),
        (
            "bench_serve.py",
            ["--images", "64" if q else "600", "--latency-runs", "3" if q else "20"],
        ),
        (
            "bench_memory.py",
            ["--films", "400" if q else "10000", "--early", "100" if q else "1000"],
        ),
    ]
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M')}"
    )
    failed = []
    for script, extra in parts:
        print(f"\n=== {script} {' '.join(extra)}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / script), *extra], cwd=HERE.parent)
        print(f"=== {script}: {time.perf_counter() - start:.0f} s, exit {code}", flush=True)
        if code:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
