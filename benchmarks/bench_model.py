"""Inference throughput of a model bundle on this machine (CPU unless a GPU is visible).

    .venv/bin/python benchmarks/bench_model.py [--model models/screener-default] [--n 256]

Prints images per second for ``Bundle.predict`` (preprocessing included) at several batch
sizes, and the preprocessing share alone. Synthetic canonical images; no data needed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from screener.model import load_bundle
from screener.model.preprocess import preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/screener-default")
    parser.add_argument("--n", type=int, default=256, help="images per measurement")
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.n, 224, 224), dtype=np.uint8)
    bundle.predict(images[:8])  # warm-up: graph tracing
    start = time.perf_counter()
    preprocess(images, bundle.preprocessing)
    pre = time.perf_counter() - start
    print(f"bundle {bundle.name} {bundle.version}, input {bundle.input_size} px")
    print(f"preprocessing only   {args.n / pre:8.1f} images/s")
    for batch in (1, 8, 32):
        start = time.perf_counter()
        for i in range(0, args.n, batch):
            bundle.predict(images[i : i + batch])
        elapsed = time.perf_counter() - start
        print(f"predict, batch {batch:>3}   {args.n / elapsed:8.1f} images/s")


if __name__ == "__main__":
    main()
