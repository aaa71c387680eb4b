"""Inference throughput of a model bundle on this machine (CPU unless a GPU is visible).

    .venv/bin/python benchmarks/bench_model.py [--model DIR ...] [--n 256]

Prints images per second for ``Bundle.predict`` (preprocessing included) at several batch
sizes, the preprocessing share alone, and ``Bundle.assess`` (what the worker runs: the score
and the domain guard in one pass) with the milliseconds per film. Several ``--model``
folders are measured one after the other in the same run, so their costs compare.
Synthetic canonical images; no data needed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from screener.model import load_bundle
from screener.model.preprocess import preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=None, help="bundle (repeatable)")
    parser.add_argument("--n", type=int, default=256, help="images per measurement")
    args = parser.parse_args()
    for model in args.model or ["models/screener-default"]:
        measure(model, args.n)


def measure(model: str, n: int) -> None:
    bundle = load_bundle(model)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 224, 224), dtype=np.uint8)
    bundle.predict(images[:8])  # warm-up: graph tracing
    start = time.perf_counter()
    preprocess(images, bundle.preprocessing)
    pre = time.perf_counter() - start
    print(f"bundle {bundle.name} {bundle.version}, input {bundle.input_size} px")
    print(f"preprocessing only   {n / pre:8.1f} images/s")
    for batch in (1, 8, 32):
        start = time.perf_counter()
        for i in range(0, n, batch):
            bundle.predict(images[i : i + batch])
        elapsed = time.perf_counter() - start
        print(f"predict, batch {batch:>3}   {n / elapsed:8.1f} images/s")
    bundle.assess(images[:8])
    start = time.perf_counter()
    for i in range(0, n, 32):
        bundle.assess(images[i : i + 32])
    elapsed = time.perf_counter() - start
    print(
        f"assess, batch  32   {n / elapsed:8.1f} images/s = {1000 * elapsed / n:.1f} ms per film "
        f"(score + domain guard: {bundle.guard is not None})"
    )


if __name__ == "__main__":
    main()
