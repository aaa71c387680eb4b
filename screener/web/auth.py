"""Who may use the web worklist: users with scrypt-hashed passwords (``web.users``), or a
reverse proxy's authenticated-user header; and the CSRF token every form carries.

A password hash is ``scrypt$N$r$p$SALT$KEY`` (base64 salt and key; RFC 7914 scrypt from the
standard library), made by ``screener web-password NAME``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from screener.errors import ConfigError

_N, _R, _P = 2**14, 8, 1


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(key).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; a malformed hash matches nothing."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def parse_users(entries: list[str]) -> dict[str, str]:
    """``web.users`` entries ``NAME:HASH`` as a mapping; a malformed entry stops start-up."""
    users: dict[str, str] = {}
    for entry in entries:
        name, sep, stored = entry.partition(":")
        if not sep or not name.strip() or not stored.startswith("scrypt$"):
            raise ConfigError(
                "web.users: each entry is NAME:HASH, the line `screener web-password NAME` prints"
            )
        users[name.strip()] = stored
    return users


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same_token(given: str | None, expected: str | None) -> bool:
    return bool(given and expected) and hmac.compare_digest(str(given), str(expected))
