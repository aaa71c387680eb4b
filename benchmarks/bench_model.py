"""Inference engines for a model bundle on this machine: speed, and whether they reproduce
the Keras scores (issue 12: |dP| <= 1e-4 on the validation split).

    .venv/bin/python benchmarks/bench_model.py [--model DIR ...] [--n 1036] [--no-litert]

For each bundle, on the films of its own validation split (recomputed from model.json; the
training data must be present, see README), one row per engine:

* Keras per image: a naive scorer, ``model(x)`` on one film at a time (the peer);
* ``eager``: Keras calls on batches of 32 (``model.engine = "eager"``, the reference);
* ``graph``: one traced TensorFlow graph per batch (``model.engine = "graph"``, the default);
* LiteRT fp32 (XNNPACK) of the same graph, measured here only (not an engine screener runs).

Each row is ``Bundle.assess`` work: the score and the domain guard's features in one pass,
preprocessing included; images/s at batch 32 (1 for the naive scorer), the milliseconds of
the whole machine per film, and the largest |dP| and |d domain score| against ``eager``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from screener.model import Bundle, load_bundle
from screener.model.bundle import _activation, raw_pneumonia
from screener.model.engine import forward as engine_forward
from screener.model.preprocess import preprocess

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SCREENER_DATA") or REPO.parent / "shared" / "data")


def validation_films(bundle: Bundle, n: int) -> np.ndarray:
    from screener.training import data
    from screener.training.guard import bundle_split

    _, val, root = bundle_split(bundle, DATA / "chest_xray" / "train")
    return np.asarray(data.load_images(root, val[:n]))


def timed(run: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[float, np.ndarray, np.ndarray]:
    run()  # warm-up: tracing, kernel selection
    start = time.perf_counter()
    p, g = run()
    return time.perf_counter() - start, p, g


def in_batches(
    bundle: Bundle, images: np.ndarray, forward: Callable[[Any], tuple[Any, list[Any]]], batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """P(pneumonia) and domain scores through ``forward`` (mean logit, pooled features)."""
    assert bundle.guard is not None
    probs, scores = [], []
    for i in range(0, len(images), batch):
        x = preprocess(images[i : i + batch], bundle.preprocessing)
        z, features = forward(x)
        z = np.asarray(z, dtype=np.float64)
        probs.append(
            bundle.calibration.apply(raw_pneumonia(_activation(z, bundle.task), bundle.task))
        )
        scores.append(bundle.guard.score([np.asarray(f, dtype=np.float64) for f in features]))
    return np.concatenate(probs), np.concatenate(scores)


def litert_forward(bundle: Bundle) -> Callable[[Any], tuple[Any, list[Any]]] | None:
    """The graph engine's function converted to LiteRT fp32 and run by its interpreter."""
    import tensorflow as tf

    from screener.model.architectures import members_of
    from screener.model.domain import feature_model

    assert bundle.guard is not None
    fms = [feature_model(m, bundle.guard.layers) for m in members_of(bundle.model)]

    def graph(x: Any) -> Any:
        outs = [fm(x, training=False) for fm in fms]
        z = tf.reduce_mean(tf.stack([o[0] for o in outs]), axis=0)
        feats = [tf.reduce_mean(m, axis=(1, 2)) for o in outs for m in o[1:]]
        return tf.concat([z, *feats], axis=1)  # one output: no question of output order

    size = bundle.input_size
    channels = fms[0].input_shape[-1]
    widths = [int(m.shape[-1]) for fm in fms for m in fm.outputs[1:]]
    spec = tf.TensorSpec([None, size, size, channels], tf.float32)
    fn = tf.function(graph, input_signature=[spec])
    try:
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [fn.get_concrete_function()], fn
        )
        interpreter = tf.lite.Interpreter(
            model_content=converter.convert(), num_threads=os.cpu_count()
        )
    except Exception as exc:  # the converter is optional here; say why and go on
        print(f"  (LiteRT not measured: {str(exc)[:120]})")
        return None
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    shape: list[int] = []

    def run(x: Any) -> tuple[Any, list[Any]]:
        if list(x.shape) != shape:
            interpreter.resize_tensor_input(inp["index"], list(x.shape))
            interpreter.allocate_tensors()
            shape[:] = list(x.shape)
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"]).astype(np.float64)
        cuts = np.cumsum([1, *widths])
        return y[:, :1], np.split(y, cuts[:-1], axis=1)[1:]

    return run


def measure(model: str, n: int, litert: bool) -> None:
    from screener.model.architectures import members_of
    from screener.model.domain import feature_model

    eager = load_bundle(model, engine="eager")
    graph = load_bundle(model, engine="graph")
    if eager.guard is None:
        raise SystemExit(f"{model}: no domain guard; this benchmark measures assess")
    images = validation_films(eager, n)
    cores = os.cpu_count() or 1
    print(
        f"bundle {eager.name} {eager.version}, input {eager.input_size} px, "
        f"{len(images)} validation films, {cores} cores, TensorFlow on every core"
    )
    print(
        f"{'engine':<34}{'batch':>6}{'images/s':>10}{'ms/film':>9}{'max |dP|':>11}{'max |d guard|':>15}"
    )
    fms = [feature_model(m, eager.guard.layers) for m in members_of(eager.model)]

    eager_forward = engine_forward(fms, "eager")  # the reference, as the bundle runs it

    def row(
        name: str, batch: int, count: int, run: Callable[[], tuple[np.ndarray, np.ndarray]]
    ) -> None:
        seconds, p, g = timed(run)
        print(
            f"{name:<34}{batch:>6}{count / seconds:>10.1f}{1000 * seconds / count:>9.2f}"
            f"{np.abs(p - ref_p[:count]).max():>11.1e}{np.abs(g - ref_g[:count]).max():>15.1e}"
        )

    ref_p, ref_g = in_batches(eager, images, eager_forward, 32)
    few = images[: min(len(images), 128)]
    row(
        "Keras per image (naive peer)",
        1,
        len(few),
        lambda: in_batches(eager, few, eager_forward, 1),
    )
    row(
        "eager = Keras, batches (reference)",
        32,
        len(images),
        lambda: in_batches(eager, images, eager_forward, 32),
    )

    def graph_assess() -> tuple[np.ndarray, np.ndarray]:
        a = graph.assess(images)
        assert a.domain_scores is not None
        return a.probabilities, a.domain_scores

    row("graph = tf.function (default)", 32, len(images), graph_assess)
    if litert and (forward := litert_forward(eager)) is not None:
        row(
            "LiteRT fp32, XNNPACK (not used)",
            32,
            len(images),
            lambda: in_batches(eager, images, forward, 32),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=None, help="bundle (repeatable)")
    parser.add_argument("--n", type=int, default=1036, help="validation films (at most)")
    parser.add_argument("--no-litert", action="store_true", help="skip the LiteRT row")
    args = parser.parse_args()
    if not (DATA / "chest_xray" / "train").is_dir():
        raise SystemExit(
            f"the training films are needed for the validation split ({DATA}; set SCREENER_DATA)"
        )
    for model in args.model or [str(REPO / "models" / "screener-default")]:
        measure(model, args.n, not args.no_litert)


if __name__ == "__main__":
    main()
