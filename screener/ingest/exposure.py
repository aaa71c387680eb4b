"""Whether the DICOM listener is open to anyone who can reach it.

A listener bound beyond loopback that accepts any calling AE title (``listener.allowed_calling_aets``
empty) over plain TCP (``listener.tls`` off) lets anyone on the network store studies and have
screener send the PACS an SR with demographics of their choosing. Screener still starts (a test
bench may want exactly that), but says so: a start-up warning (:func:`warn_if_open`) and a line
in ``screener status`` (from the serve heartbeat, which records :meth:`Exposure.as_dict`).

An allow-list alone is weak (PS3.8 7.1.1.5 <https://dicom.nema.org/medical/dicom/current/output/html/part08.html#sect_7.1.1.5>: the calling AE title is whatever the caller writes);
TLS with ``tls.ca_certificates`` set authenticates callers by certificate (PS3.15 B.9 <https://dicom.nema.org/medical/dicom/current/output/html/part15.html#sect_B.9>). Neither
is judged here beyond "some control is set"; the README's "Security" section says what to set.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from screener.config import ListenerSettings, TlsSettings

log = structlog.get_logger(__name__)

#: Host names that only ever mean this machine.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; False for 0.0.0.0, "" (every interface),
    another address, or any other host name (it may resolve to anything)."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Exposure:
    """The facts of how the listener can be reached and who it lets in (no PHI)."""

    host: str
    port: int
    loopback_only: bool
    allowed_calling_aets: int  # how many titles are allowed; 0 = any caller
    tls: bool
    client_certificates: bool  # TLS with tls.ca_certificates: callers must present one

    @property
    def open(self) -> bool:
        """Reachable beyond this machine by any caller, without TLS."""
        return not self.loopback_only and not self.allowed_calling_aets and not self.tls

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"open": self.open}


def listener_exposure(
    listener: ListenerSettings, tls: TlsSettings, port: int | None = None
) -> Exposure:
    """How ``listener`` is exposed; ``port``: the one actually bound (when listener.port = 0)."""
    return Exposure(
        host=listener.host,
        port=listener.port if port is None else port,
        loopback_only=is_loopback(listener.host),
        allowed_calling_aets=len(listener.allowed_calling_aets),
        tls=listener.tls,
        client_certificates=listener.tls and bool(tls.ca_certificates),
    )


def warn_if_open(listener: ListenerSettings, tls: TlsSettings) -> Exposure:
    """Log ``listener_open_to_any_caller`` (a warning with the facts) when the listener is open."""
    exposure = listener_exposure(listener, tls)
    if exposure.open:
        log.warning(
            "listener_open_to_any_caller",
            host=exposure.host,
            port=exposure.port,
            allowed_calling_aets=exposure.allowed_calling_aets,
            tls=exposure.tls,
            fix="set listener.allowed_calling_aets and listener.tls, or listener.host = 127.0.0.1",
        )
    return exposure
