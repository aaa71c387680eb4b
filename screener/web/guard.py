"""What stands between the network and the web worklist's pages: who the visitor is (a
server-side session, or a trusted proxy's header), the request-body limit, and the response
headers every page carries.

Trusted proxies (``web.trusted_proxies``, loopback when empty) are the only clients whose
``web.trusted_user_header``, ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed;
anyone else sending them is ignored (the header) or refused (401, in header mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from screener.config import WebSettings
from screener.errors import ConfigError
from screener.web.auth import LOOPBACK, Network, in_networks, is_loopback_host, parse_networks

log = structlog.get_logger(__name__)

SESSION_COOKIE = "screener_session"
#: the CSRF token of a visitor without a session (the login form; header mode), also sent
#: as a cookie and compared with the form's (double submit)
CSRF_COOKIE = "screener_csrf"


@dataclass(frozen=True)
class Visitor:
    """Who made a request: ``user`` None when no one is logged in (``refusal`` then says why,
    in header mode); ``csrf`` the token its forms carry; ``session`` the server-side
    session's key (password mode)."""

    user: str | None
    csrf: str
    admin: bool = False
    session: str | None = None
    refusal: str | None = None


class Proxies:
    """``web.trusted_proxies``, and what a request says once they are taken into account."""

    def __init__(self, settings: WebSettings) -> None:
        self.networks: tuple[Network, ...] = (
            tuple(parse_networks(settings.trusted_proxies)) or LOOPBACK
        )
        self.header = settings.trusted_user_header.strip()
        self.secure_cookies = settings.secure_cookies
        if self.header and not settings.trusted_proxies and not is_loopback_host(settings.host):
            raise ConfigError(
                f"web.trusted_user_header = {self.header!r} with web.host = {settings.host!r}: "
                "anyone who reaches that address could name any user in the header; set "
                "web.trusted_proxies to the reverse proxy's address, or listen on loopback "
                "behind a proxy on this host"
            )

    def peer(self, request: Request) -> str | None:
        return request.client.host if request.client else None

    def trusted(self, request: Request) -> bool:
        return in_networks(self.peer(request), self.networks)

    def client_address(self, request: Request) -> str:
        """The address that made the request: a trusted proxy's ``X-Forwarded-For`` (its
        rightmost address that is not a trusted proxy), else the TCP peer."""
        peer = self.peer(request) or "unknown"
        if not self.trusted(request):
            return peer
        hops = [
            hop.strip()
            for value in request.headers.getlist("x-forwarded-for")
            for hop in value.split(",")
            if hop.strip()
        ]
        for hop in reversed(hops):
            if not in_networks(hop, self.networks):
                return hop[:64]
        return peer

    def https(self, request: Request) -> bool:
        """Served over TLS: our own, or a trusted proxy's (``X-Forwarded-Proto: https``)."""
        if self.secure_cookies or request.url.scheme == "https":
            return True
        proto = request.headers.get("x-forwarded-proto", "").strip().lower()
        return self.trusted(request) and proto == "https"

    def header_user(self, request: Request) -> tuple[str | None, str | None]:
        """Header mode: (the user, None), or (None, why the request is refused)."""
        if not self.trusted(request):
            return None, (
                "this web worklist takes its user from a trusted reverse proxy "
                "(web.trusted_proxies); this request did not come through it"
            )
        values = request.headers.getlist(self.header)
        if not values:
            return None, (
                f"the reverse proxy sent no {self.header} header: it must authenticate the "
                "user and name them in it"
            )
        value = values[0].strip()
        if len(values) != 1 or "," in value:
            return None, f"{self.header} must be sent exactly once, with one user name"
        if not value or len(value) > 64 or not value.isprintable():
            return None, f"{self.header} must name a user (1-64 printable characters)"
        return value, None


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse (413) a request whose body is over ``max_bytes``: by its Content-Length before
    reading, and by counting as it arrives (a chunked body declares no length)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = PlainTextResponse(
            f"the upload is larger than web.max_upload_mb ({self.max_bytes >> 20} MB)",
            status_code=413,
        )
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            log.warning("web_request_too_large", method=scope.get("method"))
            await refusal(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            log.warning("web_request_too_large", method=scope.get("method"))
            if not started:
                await refusal(scope, receive, send)


#: No script at all, styles and images from us (films of an upload come as data: URIs), no
#: framing (clickjacking), forms post only to us (CSP Level 3, W3C).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


class SecurityHeaders:
    """Headers on every response: the CSP above, ``X-Content-Type-Options: nosniff``,
    ``Referrer-Policy: no-referrer`` (a study URL holds an accession number),
    ``X-Frame-Options: DENY`` for older browsers, and ``Cache-Control: no-store`` on
    everything but the style sheet (films must not stay in a shared reading-room PC's cache)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if static or k.lower() != b"cache-control"
                ]
                headers += [
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                ]
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
