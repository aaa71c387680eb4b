"""One module per ``screener`` sub-command: ``register(subparsers)`` and ``run(args, settings)``."""

from __future__ import annotations

import argparse
from typing import Any


def setting_flag(parser: argparse.ArgumentParser, flag: str, key: str, help: str, **kw: Any) -> None:
    """Add a named flag that overrides setting ``key`` (SECTION.KEY), as ``--set`` would."""

    class _Store(argparse.Action):
        def __call__(self, p: Any, ns: argparse.Namespace, values: Any, opt: Any = None) -> None:
            flags = dict(getattr(ns, "setting_flags", {}) or {})
            flags[key] = self.const if self.nargs == 0 else values
            ns.setting_flags = flags

    parser.add_argument(flag, action=_Store, help=f"{help} (setting {key})", **kw)
