"""What screener ships besides code: the Alembic migrations and the default model bundle.

The repository keeps them at its top level (``migrations/``, ``models/``); the wheel carries
them inside the package as ``screener/migrations`` and ``screener/bundles`` (see
``pyproject.toml``). Both places are looked up here, the installed one first, so a checkout,
an editable install and a wheel installed anywhere find the same files.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from screener.errors import ConfigError, ModelError

#: The bundle ``model.bundle = ""`` (the default) stands for.
DEFAULT_BUNDLE = "screener-default"

_SOURCE_TREE = Path(__file__).resolve().parents[1]


def _candidates(installed: str, source: str) -> list[Path]:
    here = Path(str(resources.files("screener"))) / installed
    return [here, _SOURCE_TREE / source]


def migrations_dir() -> Path:
    """The Alembic script folder (``$SCREENER_MIGRATIONS`` overrides it)."""
    env = os.environ.get("SCREENER_MIGRATIONS")
    candidates = [Path(env)] if env else _candidates("migrations", "migrations")
    for path in candidates:
        if (path / "env.py").is_file():
            return path
    raise ConfigError(
        f"migrations folder not found (looked in {', '.join(map(str, candidates))}): "
        "reinstall screener from its wheel or source tree, or set SCREENER_MIGRATIONS"
    )


def shipped_bundle(name: str = DEFAULT_BUNDLE) -> Path:
    """The folder of a model bundle shipped with screener."""
    candidates = [p / name for p in _candidates("bundles", "models")]
    for path in candidates:
        if (path / "model.json").is_file():
            return path
    raise ModelError(
        f"the shipped model bundle {name!r} is not installed (looked in "
        f"{', '.join(map(str, candidates))}): reinstall screener or set model.bundle"
    )
