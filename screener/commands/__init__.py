"""One module per ``screener`` sub-command: ``register(subparsers)`` and ``run(args, settings)``."""

from __future__ import annotations

import argparse
from typing import Any


def setting_flag(
    parser: argparse.ArgumentParser, flag: str, key: str, help: str, **kw: Any
) -> None:
    """Add a named flag that overrides setting ``key`` (SECTION.KEY), as ``--set`` would."""

    class _Store(argparse.Action):
        def __call__(self, p: Any, ns: argparse.Namespace, values: Any, opt: Any = None) -> None:
            flags = dict(getattr(ns, "setting_flags", {}) or {})
            flags[key] = self.const if self.nargs == 0 else values
            ns.setting_flags = flags

    parser.add_argument(flag, action=_Store, help=f"{help} (setting {key})", **kw)


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain text table, columns padded to their widest cell."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def format_age(hours: float) -> str:
    minutes = int(hours * 60)
    if minutes < 60:
        return f"{minutes}m"
    if minutes < 48 * 60:
        return f"{minutes // 60}h{minutes % 60:02d}m"
    return f"{minutes // 1440}d{(minutes % 1440) // 60}h"
