"""``screener web-password NAME``: the ``NAME:HASH`` line for ``[web] users``."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from screener.config import Settings


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "web-password",
        help="hash a web user's password: prints the NAME:HASH entry for [web] users",
    )
    p.add_argument("name", help="the user's login name (also recorded as the reader of reviews)")
    p.add_argument(
        "--stdin", action="store_true", help="read the password from standard input (scripts)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.errors import ConfigError
    from screener.web.auth import hash_password

    name = args.name.strip()
    if not name or ":" in name:
        raise ConfigError("the user name must be non-empty and without ':'")
    if args.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise ConfigError("the two passwords differ")
    if len(password) < 8:
        raise ConfigError("use a password of at least 8 characters")
    print(f"{name}:{hash_password(password)}")
    return 0
