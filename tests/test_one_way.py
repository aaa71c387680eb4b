"""One way to do each of two things the daemon and the web must agree on: a model is opened
for inference only by screener.model.opening.open_model (the training code, which builds and
re-reads its own bundles, aside), and the skip rule is written once, in
screener.ingest.skip, for the DICOM listener, the folder and the web's upload preview."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "screener"


def callers(function: str) -> set[str]:
    """Files (relative to the package) that call ``function`` by name."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
                if name == function:
                    found.add(str(path.relative_to(PACKAGE)))
    return found


def test_models_are_opened_one_way() -> None:
    """Outside the model package and training, nothing calls load_bundle or
    configure_inference itself: every inference path goes through open_model."""
    for function in ("load_bundle", "configure_inference"):
        outside = {f for f in callers(function) if not f.startswith(("model/", "training/"))}
        allowed = {"commands/families.py"} if function == "configure_inference" else set()
        assert outside <= allowed, f"{function} called outside open_model: {sorted(outside)}"
    assert {"work/scoring.py", "web/modelwork.py", "commands/predict.py",
            "commands/evaluate.py"} <= callers("open_model")  # fmt: skip


def test_the_skip_rule_is_written_once() -> None:
    """Selection and population are applied together only by SkipRule, which the acceptor
    and the web's upload preview both use."""
    assert callers("apply_selection") == {"ingest/skip.py"}
    assert callers("apply_population") == {"ingest/skip.py"}
    assert {"ingest/accept.py", "web/modelwork.py"} <= {
        f for f in callers("of") if "SkipRule" in (PACKAGE / f).read_text()
    }
