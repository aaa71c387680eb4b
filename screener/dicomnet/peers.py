"""DICOM peers given as ``AE_TITLE@HOST:PORT`` (export destinations, the PACS to rescan)."""

from __future__ import annotations

from dataclasses import dataclass

from screener.errors import ConfigError

#: exports.destination holds the canonical form; the column is 64 characters wide.
MAX_LENGTH = 64


@dataclass(frozen=True)
class Peer:
    """A DICOM peer: its AE title, host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


def parse_peer(text: str, key: str) -> Peer:
    """Parse ``AE_TITLE@HOST:PORT`` (an IPv6 host in brackets); ConfigError names the rule broken."""
    entry = text.strip()
    rule = "expected AE_TITLE@HOST:PORT, e.g. PACS@10.0.0.5:104"
    ae_title, at, address = entry.partition("@")
    host, colon, port_text = address.rpartition(":")
    if not at or not colon or not host or not port_text:
        raise ConfigError(f"{key} entry {text!r} is invalid: {rule}")
    # PS3.5 6.2 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_6.2>: an AE title is 1-16 characters of the default repertoire, no backslash
    if not (0 < len(ae_title) <= 16) or "\\" in ae_title or not ae_title.isascii():
        raise ConfigError(
            f"{key} entry {text!r} is invalid: AE title {ae_title!r} must be 1-16 ASCII "
            "characters without backslash (PS3.5 6.2)"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(
            f"{key} entry {text!r} is invalid: port {port_text!r} is not a number"
        ) from None
    if not 0 < port < 65536:
        raise ConfigError(f"{key} entry {text!r} is invalid: port {port} is not in 1-65535")
    peer = Peer(ae_title, host, port)
    if len(str(peer)) > MAX_LENGTH:
        raise ConfigError(f"{key} entry {text!r} is invalid: longer than {MAX_LENGTH} characters")
    return peer
