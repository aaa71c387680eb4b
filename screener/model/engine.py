"""How a bundle's Keras model is run: one traced TensorFlow graph, or eager Keras calls.

``graph`` (the default) traces the whole forward pass once with ``tf.function`` — every
member's logit, their mean and the domain guard's pooled feature maps — and runs it as one
graph per batch. ``eager`` calls each Keras model in turn, as Keras does by itself: the
reference the graph was checked against (benchmarks/bench_model.py prints both, with the
largest difference in P(pneumonia); the bar is 1e-4, issue 12). Both run the same weights and
the same kernels; only Python's share of the work differs.

Engines measured and not used (benchmarks/RESULTS.md): XLA (``jit_compile=True``) was
slower on this CPU; LiteRT fp32 reproduced the scores but was not faster than the graph once
the guard's feature maps are outputs; int8 quantisation moved the scores far beyond the bar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from screener.errors import ModelError

Engine = Literal["graph", "eager"]
ENGINES: tuple[Engine, ...] = ("graph", "eager")

Floats = npt.NDArray[np.float64]
#: A forward pass: float32 network input -> (mean logits, pooled features per member/stage)
Forward = Callable[[npt.NDArray[np.float32]], tuple[Floats, list[Floats]]]
#: The plain model: float32 network input -> the network's output (probabilities)
Outputs = Callable[[npt.NDArray[np.float32]], Floats]


def _spec(input_shape: Sequence[int | None]) -> Any:
    import tensorflow as tf

    return tf.TensorSpec([None, *input_shape[1:]], tf.float32)


def outputs(model: Any, engine: Engine) -> Outputs:
    """The model's output for a batch, by ``engine``."""
    if engine == "eager":
        return lambda x: np.asarray(model(x, training=False), dtype=np.float64)
    import tensorflow as tf

    traced = tf.function(
        lambda x: model(x, training=False), input_signature=[_spec(model.input_shape)]
    )
    return lambda x: np.asarray(traced(tf.constant(x)), dtype=np.float64)


def member_outputs(members: Sequence[Any], engine: Engine) -> Outputs:
    """Each member's first output for a batch, shape ``(members, N, k)``."""
    if engine == "eager":
        return lambda x: np.stack(
            [np.asarray(m(x, training=False), dtype=np.float64) for m in members]
        )
    import tensorflow as tf

    def run(x: Any) -> Any:
        return tf.stack([m(x, training=False) for m in members])

    traced = tf.function(run, input_signature=[_spec(members[0].input_shape)])
    return lambda x: np.asarray(traced(tf.constant(x)), dtype=np.float64)


def forward(feature_models: Sequence[Any], engine: Engine) -> Forward:
    """Mean logit of the members and every (member, stage)'s globally pooled feature map.

    Each feature model has the member's logit as its first output and the guard's stages
    after it (:func:`screener.model.domain.feature_model`).
    """
    if engine == "eager":
        from screener.model.domain import pooled

        def eager(x: npt.NDArray[np.float32]) -> tuple[Floats, list[Floats]]:
            logits: list[Floats] = []
            features: list[Floats] = []
            for fm in feature_models:
                out = fm(x, training=False)
                logits.append(np.asarray(out[0], dtype=np.float64))
                features.extend(pooled(out[1:]))
            return np.mean(logits, axis=0), features

        return eager
    import tensorflow as tf

    def graph(x: Any) -> Any:
        outs = [fm(x, training=False) for fm in feature_models]
        # averaged and pooled in float64 as the eager path does: the guard's threshold is a
        # percentile of validation scores, and a film near it must fall the same way
        z = tf.reduce_mean(tf.stack([tf.cast(o[0], tf.float64) for o in outs]), axis=0)
        maps = [tf.cast(m, tf.float64) for o in outs for m in o[1:]]
        return z, [tf.reduce_mean(m, axis=(1, 2)) for m in maps]

    traced = tf.function(graph, input_signature=[_spec(feature_models[0].input_shape)])

    def run(x: npt.NDArray[np.float32]) -> tuple[Floats, list[Floats]]:
        z, features = traced(tf.constant(x))
        return np.asarray(z), [np.asarray(f) for f in features]

    return run


def named(name: str) -> Engine:
    """The engine ``model.engine`` names."""
    for engine in ENGINES:
        if engine == name:
            return engine
    raise ModelError(f"model.engine = {name!r}: choose one of {', '.join(ENGINES)}")
