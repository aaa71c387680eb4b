"""The web worklist under attack, over real sockets against `screener web`: sessions held on
the server (logout revokes a saved cookie, a changed password or idleness ends them), login
throttling per account and per address, the same work for unknown users, old hashes
upgraded, the trusted-proxy header believed only from a trusted proxy, roles, security
headers on every response, and the small ones (keys that are not numbers, text from query
strings, header mode without its header, no request path in refusal logs)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import secrets
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text, update
from support import ServeProcess, build_dicom, free_port, record_result, serve_env, wait_for

from screener.config import WebSettings
from screener.db import Database, utcnow
from screener.db.migrate import upgrade
from screener.db.models import WebCredential, WebSession
from screener.errors import ConfigError
from screener.ingest.accept import Acceptor
from screener.ingest.spool import Spool
from screener.web import auth
from screener.web.auth import SCRYPT_N, hash_password, verify_password
from screener.web.guard import Proxies
from screener.web.sessions import SessionStore

PASSWORD = "correct horse battery"
MODEL = ("screener-default", "0.1.0", "1.2.826.0.1.3680043.10.543.1")


@cache
def _hash() -> str:
    return hash_password(PASSWORD)


def _weak_hash(password: str, n: int = 2**14) -> str:
    """A hash as `screener web-password` made it before the cost was raised (N = 2^14)."""
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=8, p=1, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${n}$8$1${b64(salt).decode()}${b64(key).decode()}"


def _seed(db_url: str, settings: Any) -> str:
    """One scored study (accession ACC7) with a dead-lettered SR; returns its Study UID."""
    db = Database(db_url)
    upgrade(db)
    accepted = Acceptor(db, Spool(settings.storage.spool_dir, 0), settings).accept(
        build_dicom(seed=7), source="dicom"
    )
    record_result(db, accepted.sop_instance_uid, 0.9, 0.5, MODEL, accession="ACC7")
    with db.transaction() as s:
        s.execute(
            text(
                "insert into exports (result_id, destination, state, attempts, last_error, "
                "created_at) select id, 'PACS@127.0.0.1:1', 'dead', 8, 'refused', scored_at "
                "from results"
            )
        )
    db.dispose()
    return accepted.study_instance_uid


class Client:
    """A browser-like client: keeps cookies, reads the CSRF token from the last page, and
    sends from a chosen address (X-Forwarded-For, believed from loopback, the default trusted
    proxy)."""

    def __init__(self, base: str, address: str) -> None:
        self.base = urllib.parse.urlparse(base)
        self.address = address
        self.cookies: dict[str, str] = {}
        self.csrf = ""

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None, **headers: str
    ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection(self.base.netloc, timeout=60)
        body = urllib.parse.urlencode(form).encode() if form is not None else None
        sent = {
            "X-Forwarded-For": self.address,
            **{k.replace("_", "-"): v for k, v in headers.items()},
        }
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if body is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            page = response.read().decode(errors="replace")
            got = {k.lower(): v for k, v in response.getheaders()}
            for name, value in response.getheaders():
                if name.lower() == "set-cookie":
                    key, _, rest = value.partition("=")
                    self.cookies[key] = rest.split(";")[0].strip('"')
                    if "max-age=0" in value.lower() or "expires=thu, 01 jan 1970" in value.lower():
                        self.cookies.pop(key, None)
            if token := re.search(r'name="csrf" value="([^"]+)"', page):
                self.csrf = token.group(1)
            return response.status, got, page
        finally:
            conn.close()

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], str]:
        return self.request("GET", path, None, **headers)

    def post(
        self, path: str, form: dict[str, str], **headers: str
    ) -> tuple[int, dict[str, str], str]:
        return self.request("POST", path, {"csrf": self.csrf, **form}, **headers)

    def login(self, user: str, password: str = PASSWORD) -> int:
        self.get("/login")
        return self.post("/login", {"username": user, "password": password})[0]


@pytest.fixture
def web(
    tmp_path: Path, sqlite_url: str, make_settings: Callable[..., Any]
) -> Iterator[Callable[..., tuple[str, ServeProcess, str]]]:
    """`screener web` alone over a seeded database: alice is an administrator, bob reads."""

    def start(**settings: str) -> tuple[str, ServeProcess, str]:
        study = _seed(sqlite_url, make_settings(sqlite_url))
        port = free_port()
        env = serve_env(
            tmp_path,
            sqlite_url,
            free_port(),
            screener_web_port=str(port),
            screener_web_users=json.dumps(
                [f"alice:{_hash()}", f"bob:{_hash()}", f"dave:{_hash()}", f"erin:{_hash()}"]
            ),
            screener_web_admins=json.dumps(["alice"]),
            **settings,
        )
        proc = ServeProcess(tmp_path, env, command="web").start()
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(base), 30)
        return base, proc, study

    yield start


def _answers(base: str) -> bool:
    try:
        Client(base, "127.0.0.1").get("/static/screener.css")
        return True
    except OSError:
        return False


def _count(db_url: str, sql: str) -> int:
    engine = create_engine(db_url)
    try:
        with engine.connect() as c:
            return int(c.execute(text(sql)).scalar_one())
    finally:
        engine.dispose()


def test_logout_revokes_a_saved_cookie(web: Callable[..., Any]) -> None:
    """After logout, a copy of the session cookie saved before it opens nothing."""
    base, _, _ = web()
    alice = Client(base, "192.0.2.10")
    assert alice.login("alice") == 303
    saved = dict(alice.cookies)
    assert alice.get("/worklist")[0] == 200
    assert alice.post("/logout", {})[0] == 303
    thief = Client(base, "192.0.2.11")
    thief.cookies = saved
    status, headers, _ = thief.get("/worklist")
    assert status == 303 and headers["location"].startswith("/login")


def test_every_response_carries_the_security_headers(web: Callable[..., Any]) -> None:
    """Pages, films, refusals and the style sheet carry CSP (no inline script or style,
    frame-ancestors 'none'), nosniff and no-referrer; everything but the style sheet is
    no-store."""
    base, _, study = web()
    alice = Client(base, "192.0.2.20")
    assert alice.login("alice") == 303
    _, _, page = alice.get(f"/study/{study}")
    assert "<script" not in page and "style=" not in page and "<style" not in page
    sop = re.search(r"/image/([0-9.]+)\.png", page)
    assert sop is not None
    paths = ["/login", "/worklist", f"/study/{study}", f"/study/{study}/image/{sop.group(1)}.png",
             "/study/nosuchstudy", "/status", "/stats"]  # fmt: skip
    for path in paths:
        status, headers, _ = alice.get(path)
        assert status in (200, 404), path
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, path
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["referrer-policy"] == "no-referrer", path
        assert headers["cache-control"] == "no-store", path
    status, headers, _ = alice.get("/static/screener.css")
    assert status == 200 and headers["x-content-type-options"] == "nosniff"
    assert headers.get("cache-control") != "no-store"


def test_logins_are_throttled_per_account_and_per_address(web: Callable[..., Any]) -> None:
    """After 5 wrong passwords the right one is refused (429, Retry-After) for that account
    from anywhere and for any account from that address; another account elsewhere logs in."""
    base, proc, _ = web()
    guesser = Client(base, "198.51.100.7")
    for _ in range(5):
        assert guesser.login("dave", "wrong") == 200
    status, headers, _ = guesser.post("/login", {"username": "dave", "password": PASSWORD})
    assert status == 429 and int(headers["retry-after"]) >= 1
    elsewhere = Client(base, "198.51.100.8")
    assert elsewhere.login("dave") == 429  # the account waits, wherever the guess comes from
    assert guesser.login("erin") == 429  # the address waits, whichever account it tries
    assert Client(base, "198.51.100.9").login("erin") == 303
    assert "wrong" not in proc.log() and "dave" not in proc.log()  # no guesses, no names


def test_sessions_use_secure_cookies_behind_tls(web: Callable[..., Any]) -> None:
    """A login through a trusted proxy that terminated TLS gets a Secure, HttpOnly, SameSite
    cookie; X-Forwarded-Proto from a client that is not a trusted proxy is not believed."""
    base, _, _ = web(screener_web_trusted_proxies=json.dumps(["127.0.0.1"]))
    client = Client(base, "192.0.2.30")
    client.get("/login")
    _, headers, _ = client.post(
        "/login", {"username": "alice", "password": PASSWORD}, X_Forwarded_Proto="https"
    )
    cookie = headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    plain = Client(base, "192.0.2.31")
    plain.get("/login")
    _, headers, _ = plain.post("/login", {"username": "alice", "password": PASSWORD})
    assert "secure" not in headers["set-cookie"].lower()


def test_readers_read_and_administrators_resend(web: Callable[..., Any], sqlite_url: str) -> None:
    """A reader may not resend dead letters or queue uploads (403, nothing changes); an
    administrator resends them, recorded in the audit trail under their name."""
    base, _, _ = web()
    bob = Client(base, "192.0.2.40")
    assert bob.login("bob") == 303
    _, _, page = bob.get("/status")
    assert 'id="retry"' not in page
    assert bob.post("/exports/retry", {})[0] == 403
    assert _count(sqlite_url, "select count(*) from exports where state = 'dead'") == 1
    body, content_type = _multipart({"csrf": bob.csrf, "queue": "1"}, b"DICM" * 10)
    conn = http.client.HTTPConnection("127.0.0.1", urllib.parse.urlparse(base).port, timeout=60)
    conn.request("POST", "/upload", body=body, headers={
        "Content-Type": content_type, "X-Forwarded-For": bob.address,
        "Cookie": "; ".join(f"{k}={v}" for k, v in bob.cookies.items())})  # fmt: skip
    assert conn.getresponse().status == 403
    conn.close()
    alice = Client(base, "192.0.2.41")
    assert alice.login("alice") == 303
    alice.get("/status")
    assert alice.post("/exports/retry", {})[0] == 303
    assert _count(sqlite_url, "select count(*) from exports where state = 'pending'") == 1
    assert (
        _count(sqlite_url, "select count(*) from audit_events where actor = 'alice' "
               "and event = 'web_exports_retried'") == 1
    )  # fmt: skip


def _multipart(fields: dict[str, str], file: bytes) -> tuple[bytes, str]:
    from support import multipart_form

    return multipart_form(fields, file, "film.dcm")


def test_keys_and_query_strings_are_checked(web: Callable[..., Any]) -> None:
    """Keys that are not short ids answer 404 (not 500); ?recorded= and ?retried= show only
    what is true; an out-of-range min_prob is ignored; a refused request's path (which may
    hold an accession number) is not logged."""
    base, proc, study = web()
    alice = Client(base, "192.0.2.50")
    assert alice.login("alice") == 303
    for key in ("%23999999999999999999999", "%C2%B2", "999999999999999999999999", "%00"):
        assert alice.get(f"/study/{key}")[0] == 404, key
    _, _, page = alice.get("/status?retried=%3Cb%3E99%20hacked")
    assert "hacked" not in page and 'id="retried"' not in page
    _, _, page = alice.get("/worklist?status=all&min_prob=1.5")
    assert "ACC7" in page
    status, _, _ = alice.request("POST", "/study/ACC7/review", {"finding": "pneumonia"})
    assert status == 403
    _, _, page = alice.get(f"/study/{study}?recorded=pneumonia")
    assert 'id="recorded"' not in page  # no read yet: the URL alone says nothing
    alice.post(f"/study/{study}/review", {"finding": "pneumonia"})
    _, _, page = alice.get(f"/study/{study}?recorded=pneumonia")
    assert 'id="recorded"' in page
    assert "ACC7" not in proc.log()


def test_the_header_is_believed_only_from_a_trusted_proxy(web: Callable[..., Any]) -> None:
    """Header mode: the user header from an address that is not a trusted proxy, twice, with
    two names, or missing gets 401 with a plain explanation (no login loop); from the proxy,
    one name opens the pages."""
    base, _, _ = web(
        screener_web_trusted_user_header="X-Remote-User",
        screener_web_trusted_proxies=json.dumps(["192.0.2.99/32"]),
    )
    direct = Client(base, "198.51.100.1")
    status, _, page = direct.get("/worklist", X_Remote_User="chief-radiologist")
    assert status == 401 and "trusted reverse proxy" in page
    # the same request as if the proxy had sent it: uvicorn sees loopback, not 192.0.2.99
    assert direct.get("/login", X_Remote_User="alice")[0] == 401


def test_header_mode_behind_a_proxy_on_this_host(web: Callable[..., Any]) -> None:
    """With no trusted_proxies and a loopback host, loopback is the proxy: one header value
    opens the page; none, two, or a comma list are refused 401 without a redirect loop."""
    base, _, _ = web(screener_web_trusted_user_header="X-Remote-User")
    proxy = Client(base, "127.0.0.1")
    assert proxy.get("/worklist", X_Remote_User="alice")[0] == 200
    status, headers, page = proxy.get("/worklist")
    assert status == 401 and "location" not in headers and "X-Remote-User" in page
    assert proxy.get("/login")[0] == 401
    assert proxy.get("/worklist", X_Remote_User="alice, chief")[0] == 401
    conn = http.client.HTTPConnection("127.0.0.1", urllib.parse.urlparse(base).port, timeout=30)
    conn.putrequest("GET", "/worklist")
    conn.putheader("X-Remote-User", "chief")
    conn.putheader("X-Remote-User", "alice")
    conn.endheaders()
    assert conn.getresponse().status == 401
    conn.close()


def test_an_unsafe_header_set_up_is_refused_at_start() -> None:
    """trusted_user_header on a non-loopback address without trusted_proxies stops start-up;
    with a proxy named, or on loopback, it starts."""
    with pytest.raises(ConfigError, match="trusted_proxies"):
        Proxies(WebSettings(host="0.0.0.0", trusted_user_header="X-Remote-User"))
    Proxies(WebSettings(host="0.0.0.0", trusted_user_header="X-Remote-User",
                        trusted_proxies=["10.0.0.5"]))  # fmt: skip
    Proxies(WebSettings(host="127.0.0.1", trusted_user_header="X-Remote-User"))
    with pytest.raises(ConfigError, match="not an IP address"):
        Proxies(WebSettings(trusted_proxies=["proxy.example"]))


@pytest.fixture
def store_db(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    upgrade(db)
    yield db
    db.dispose()


def test_unknown_users_cost_one_hash_like_known_ones(
    store_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown user name is checked against a decoy hash of today's cost: one scrypt at
    N = 2^17, as for a known user (no user names told by timing)."""
    store = SessionStore(store_db, {"alice": _hash()}, 12, 30)
    auth.decoy_hash()
    costs: list[int] = []
    real = hashlib.scrypt

    def counted(*args: Any, **kw: Any) -> bytes:
        costs.append(kw["n"])
        return real(*args, **kw)

    monkeypatch.setattr(hashlib, "scrypt", counted)  # the module screener.web.auth uses
    assert not store.check_password("nobody", PASSWORD)
    assert not store.check_password("alice", "wrong")
    assert costs == [SCRYPT_N, SCRYPT_N]


def test_an_old_hash_is_upgraded_at_the_next_login(store_db: Database) -> None:
    """A correct password under an N = 2^14 entry is re-hashed at N = 2^17 and kept; the
    upgrade answers for that entry until the entry changes (a new password), which it then
    no longer opens."""
    weak = _weak_hash(PASSWORD)
    assert SessionStore(store_db, {"bob": weak}, 12, 30).check_password("bob", PASSWORD)
    with store_db.transaction() as s:
        row = s.get(WebCredential, "bob")
        assert row is not None and row.hash.startswith(f"scrypt${SCRYPT_N}$8$1$")
        assert verify_password(PASSWORD, row.hash)
    store = SessionStore(store_db, {"bob": weak}, 12, 30)
    assert store.check_password("bob", PASSWORD) and not store.check_password("bob", "x")
    changed = SessionStore(store_db, {"bob": _weak_hash("new password")}, 12, 30)
    assert not changed.check_password("bob", PASSWORD)
    assert changed.check_password("bob", "new password")


def test_sessions_end_on_a_new_password_and_when_idle(store_db: Database) -> None:
    """A session ends when the user's web.users entry changes, and when unused for
    web.idle_minutes; the database keeps only the token's digest."""
    store = SessionStore(store_db, {"bob": _hash()}, 12, 30)
    token, login = store.start("bob")
    assert store.find(token) == login
    with store_db.transaction() as s:
        assert s.get(WebSession, token) is None  # the token itself is not stored
    assert SessionStore(store_db, {"bob": _weak_hash("new")}, 12, 30).find(token) is None
    assert store.find(token) is None  # and it stays ended
    token, _ = store.start("bob")
    with store_db.transaction() as s:
        s.execute(update(WebSession).values(seen_at=utcnow() - timedelta(minutes=31)))
    assert store.find(token) is None
