"""Web logins held on the server (``web_sessions``) and password hashes re-made at today's
cost (``web_credentials``).

The browser's cookie carries a random token; the database keeps only its SHA-256, so a copy
of the database opens no one's session. A session ends when it is logged out (its row is
deleted: a saved copy of the cookie opens nothing), when ``web.session_hours`` have passed
since the login, when it has not been used for ``web.idle_minutes``, or when the user's
``web.users`` entry changed (a new password) or was removed. Every function here does
database work and is called from a worker thread, never on the web's event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete

from screener.db import Database, utcnow
from screener.db.engine import as_utc
from screener.db.models import WebCredential, WebSession
from screener.web.auth import (
    credential_of,
    decoy_hash,
    hash_password,
    needs_rehash,
    new_token,
    token_digest,
    verify_password,
)

#: ``seen_at`` is written at most this often per session (not on every request)
TOUCH_SECONDS = 60.0


@dataclass(frozen=True)
class Login:
    user: str
    csrf: str
    token_sha256: str


class SessionStore:
    def __init__(
        self, db: Database, users: dict[str, str], session_hours: float, idle_minutes: float
    ) -> None:
        self.db = db
        self.users = users
        self.lifetime = timedelta(hours=session_hours)
        self.idle = timedelta(minutes=idle_minutes)
        self.touch_seconds = min(TOUCH_SECONDS, idle_minutes * 60 / 4)

    def check_password(self, name: str, password: str) -> bool:
        """The password checked against the user's hash (the upgraded one while the entry is
        unchanged); an unknown user costs the same as a known one. A correct password under a
        hash of lower cost is re-hashed at today's cost and kept."""
        stored = self.users.get(name)
        if stored is None:
            verify_password(password, decoy_hash())
            return False
        source = credential_of(stored)
        with self.db.transaction() as session:
            upgraded = session.get(WebCredential, name)
            if upgraded is not None and upgraded.source == source:
                stored = upgraded.hash
        if not verify_password(password, stored):
            return False
        if needs_rehash(stored):
            rehashed = hash_password(password)
            with self.db.transaction() as session:
                row = session.get(WebCredential, name)
                if row is None:
                    session.add(
                        WebCredential(user=name, source=source, hash=rehashed, updated_at=utcnow())
                    )
                else:
                    row.source, row.hash, row.updated_at = source, rehashed, utcnow()
        return True

    def start(self, user: str) -> tuple[str, Login]:
        """A new session for ``user``; returns the cookie's token and the login. Sessions past
        their time are removed on the way."""
        token = new_token()
        now = utcnow()
        login = Login(user, new_token(), token_digest(token))
        with self.db.transaction() as session:
            session.execute(
                delete(WebSession).where(
                    (WebSession.expires_at < now) | (WebSession.seen_at < now - self.idle)
                )
            )
            session.add(
                WebSession(
                    token_sha256=login.token_sha256,
                    user=user,
                    credential=credential_of(self.users[user]),
                    csrf=login.csrf,
                    created_at=now,
                    seen_at=now,
                    expires_at=now + self.lifetime,
                )
            )
        return token, login

    def find(self, token: str | None) -> Login | None:
        """The live session of a cookie's token, its use recorded; None when there is none
        (never was, logged out, expired, idle too long, or the password changed)."""
        if not token or len(token) > 128:
            return None
        key = token_digest(token)
        now = utcnow()
        with self.db.transaction() as session:
            row = session.get(WebSession, key)
            if row is None:
                return None
            stored = self.users.get(row.user)
            if (
                stored is None
                or credential_of(stored) != row.credential
                or as_utc(row.expires_at) <= now
                or as_utc(row.seen_at) + self.idle <= now
            ):
                session.delete(row)
                return None
            if (now - as_utc(row.seen_at)).total_seconds() >= self.touch_seconds:
                row.seen_at = now
            return Login(row.user, row.csrf, key)

    def end(self, token_sha256: str) -> None:
        """Logout: the session's row is deleted, so no copy of its cookie opens anything."""
        with self.db.transaction() as session:
            session.execute(delete(WebSession).where(WebSession.token_sha256 == token_sha256))
