"""Who may use the web worklist: users with scrypt-hashed passwords (``web.users``), or a
trusted reverse proxy's authenticated-user header; login throttling; the CSRF token.

A password hash is ``scrypt$N$r$p$SALT$KEY`` (base64 salt and key; RFC 7914 scrypt from the
standard library), made by ``screener web-password NAME``. New hashes use N = 2^17, r = 8
(OWASP's password storage guidance); an entry made with a lower cost is re-made at this
cost at the next successful login and kept in the database (:mod:`screener.web.sessions`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

from screener.errors import ConfigError

#: scrypt cost of new hashes: N = 2^17, r = 8, p = 1 (128 MiB, about 0.3 s a hash here)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**17, 8, 1
#: the largest N a stored hash may ask for (a hostile or mistyped entry cannot ask for more)
MAX_N = 2**20
#: scrypt needs 128 * N * r bytes; OpenSSL refuses above ``maxmem``
_MAXMEM = 128 * MAX_N * 8 + (1 << 20)

#: at most this many hashes are computed at once (each takes 128 MiB): more wait their turn
_HASHING = threading.BoundedSemaphore(2)


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    with _HASHING:
        key = hashlib.scrypt(
            password.encode(),
            salt=salt,
            n=SCRYPT_N,
            r=SCRYPT_R,
            p=SCRYPT_P,
            dklen=32,
            maxmem=_MAXMEM,
        )
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(key).decode()}"


def _parts(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return None
        cost = (int(n), int(r), int(p))
        if not (1 < cost[0] <= MAX_N and 1 <= cost[1] <= 32 and 1 <= cost[2] <= 16):
            return None
        return (*cost, base64.b64decode(salt, validate=True), base64.b64decode(key, validate=True))
    except (ValueError, TypeError):
        return None


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; a malformed hash matches nothing."""
    parts = _parts(stored)
    if parts is None:
        return False
    n, r, p, salt, expected = parts
    try:
        with _HASHING:
            got = hashlib.scrypt(
                password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=_MAXMEM
            )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got, expected)


def needs_rehash(stored: str) -> bool:
    """True for a hash made with less than today's scrypt cost."""
    parts = _parts(stored)
    return parts is not None and (parts[0], parts[1]) < (SCRYPT_N, SCRYPT_R)


_decoy: list[str] = []


def decoy_hash() -> str:
    """A hash of no one's password at today's cost: an unknown user name is checked against
    it, so that it costs the same time as a known one (no user names told by timing)."""
    if not _decoy:
        _decoy.append(hash_password(secrets.token_urlsafe(16)))
    return _decoy[0]


def credential_of(stored: str) -> str:
    """The SHA-256 of a ``web.users`` hash: what a session and an upgraded hash are tied to,
    so that a changed entry (a new password) ends them."""
    return hashlib.sha256(stored.encode()).hexdigest()


def parse_users(entries: list[str]) -> dict[str, str]:
    """``web.users`` entries ``NAME:HASH`` as a mapping; a malformed entry stops start-up."""
    users: dict[str, str] = {}
    for entry in entries:
        name, sep, stored = entry.partition(":")
        if not sep or not name.strip() or _parts(stored) is None or len(name.strip()) > 64:
            raise ConfigError(
                "web.users: each entry is NAME:HASH (a name of at most 64 characters), the line "
                "`screener web-password NAME` prints"
            )
        users[name.strip()] = stored
    return users


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


def parse_networks(entries: Iterable[str], key: str = "web.trusted_proxies") -> list[Network]:
    networks: list[Network] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"{key}: {entry!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24)"
            ) from None
    return networks


def is_loopback_host(host: str) -> bool:
    """True for a listening address only this machine can reach."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False


def in_networks(address: str | None, networks: Iterable[Network]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


class LoginThrottle:
    """Failed logins per key (a user name, a client address): after ``free`` failures, the
    next attempt must wait ``base`` seconds, doubling with each further failure up to ``cap``
    (OWASP authentication guidance: throttle per account and per source). An attempt while
    waiting is refused without checking the password. Held in memory (a restart forgets it),
    for at most ``keys`` keys (the oldest forgotten first)."""

    def __init__(
        self, free: int = 5, base: float = 1.0, cap: float = 900.0, keys: int = 10_000
    ) -> None:
        self.free, self.base, self.cap, self.keys = free, base, cap, keys
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait(self, *keys: str) -> float:
        """Seconds until an attempt for all of ``keys`` may be made (0: now)."""
        now = time.monotonic()
        with self._lock:
            return max(
                (max(0.0, self._failures[k][1] - now) for k in keys if k in self._failures),
                default=0.0,
            )

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                count = self._failures.pop(key, (0, 0.0))[0] + 1
                delay = (
                    0.0
                    if count < self.free
                    else min(self.cap, self.base * 2 ** (count - self.free))
                )
                self._failures[key] = (count, now + delay)
            while len(self._failures) > self.keys:
                self._failures.popitem(last=False)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_token(given: str | None, expected: str | None) -> bool:
    return bool(given and expected) and hmac.compare_digest(str(given), str(expected))
