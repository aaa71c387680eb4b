"""The graph engine gives the eager Keras model's scores (issue 12: |dP| <= 1e-4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from screener.errors import ModelError
from screener.model.engine import named


def _films(chest_train: Path, n: int) -> np.ndarray:
    paths = (
        sorted((chest_train / "NORMAL").glob("*.jpeg"))[: n // 2]
        + sorted((chest_train / "PNEUMONIA").glob("*.jpeg"))[: n - n // 2]
    )
    return np.stack([np.asarray(Image.open(p).convert("L").resize((224, 224))) for p in paths])


def test_graph_and_eager_engines_agree(model_bundle: Path, chest_train: Path) -> None:
    """40 training films (and a batch of 33, across the 32-image chunking): the traced graph's
    probabilities within 1e-4 of eager Keras, the domain scores within 1e-3, the members'
    logits and the plain prediction too; the films are not all scored alike."""
    from screener.model import load_bundle

    images = _films(chest_train, 40)
    graph = load_bundle(model_bundle, engine="graph")
    eager = load_bundle(model_bundle, engine="eager")
    assert graph.engine == "graph" and eager.engine == "eager"
    for batch in (images, images[:33]):
        g, e = graph.assess(batch), eager.assess(batch)
        assert np.abs(g.probabilities - e.probabilities).max() <= 1e-4
        assert g.domain_scores is not None and e.domain_scores is not None
        assert np.abs(g.domain_scores - e.domain_scores).max() <= 1e-3
        assert np.abs(graph.predict(batch) - e.probabilities).max() <= 1e-4
        assert np.abs(graph.member_logits(batch) - eager.member_logits(batch)).max() <= 1e-3
    assert e.probabilities.std() > 0.05  # a real spread, so the agreement means something
    assert graph.predict(images[:0]).shape == (0,)


def test_an_unknown_engine_is_refused() -> None:
    """model.engine names a known engine; an unknown one is refused with a ModelError naming the
    setting."""
    assert named("eager") == "eager"
    with pytest.raises(ModelError, match=r"model\.engine"):
        named("tensorrt")
