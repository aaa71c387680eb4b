"""The screener command line: a DICOM daemon that flags chest X-rays for a second read.

Each sub-command lives in its own module under :mod:`screener.commands` and exposes
``register(subparsers)``; its handler is ``run(args, settings) -> int``. Heavy imports
(TensorFlow) happen inside handlers only, so ``screener status`` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from screener import __version__
from screener.errors import ConfigError, ScreenerError

#: The sub-command modules, in the order ``screener --help`` lists them.
COMMANDS = (
    "serve",
    "worker",
    "db",
    "status",
    "exports",
    "purge",
    "rescan",
    "worklist",
    "show",
    "review",
    "stats",
    "echo",
    "train",
    "evaluate",
    "families",
    "guard",
    "reference",
    "calibrate",
    "commission",
    "predict",
    "web",
    "web_password",
    "site",
)


def _parse_set(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"--set expects SECTION.KEY=VALUE, got {text!r}")
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="screener", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"screener {__version__}")
    parser.add_argument(
        "--config",
        help="TOML settings file (default: $SCREENER_CONFIG, else ./screener.toml, else "
        "/etc/screener/screener.toml)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        type=_parse_set,
        metavar="SECTION.KEY=VALUE",
        help="override one setting (repeatable); beats environment and file",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"screener.commands.{name}")
        module.register(sub)
    for command in sub.choices.values():  # also accepted after the command: `serve --set k=v`
        command.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        command.add_argument(
            "--set",
            dest="overrides",
            action="append",
            type=_parse_set,
            default=argparse.SUPPRESS,
            metavar="SECTION.KEY=VALUE",
            help="override one setting (repeatable)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from screener.config import load_settings
    from screener.runtime.logs import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = dict(args.overrides)
    overrides.update({k: v for k, v in getattr(args, "setting_flags", {}).items() if v is not None})
    try:
        settings = load_settings(args.config, overrides)
    except ScreenerError as exc:
        print(f"screener: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.logging)
    try:
        code: int = args.func(args, settings)
    except ConfigError as exc:  # a setting that cannot work (a port in use, a folder): 2
        print(f"screener {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except ScreenerError as exc:  # the operation failed (a peer, the database, the data): 1
        print(f"screener {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `screener worklist | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code


if __name__ == "__main__":
    raise SystemExit(main())
