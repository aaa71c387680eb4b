"""Where SRs go: ``AE_TITLE@HOST:PORT`` entries of ``export.destinations``."""

from __future__ import annotations

from collections.abc import Iterable

from screener.errors import ConfigError
from screener.peers import Peer, parse_peer

#: A C-STORE SCP that receives our SRs.
Destination = Peer


def parse_destination(text: str, key: str = "export.destinations") -> Peer:
    """Parse one ``export.destinations`` entry (see :func:`screener.peers.parse_peer`)."""
    return parse_peer(text, key)


def parse_destinations(entries: Iterable[str]) -> list[Destination]:
    """All configured destinations, each once, in order."""
    parsed: list[Destination] = []
    for entry in entries:
        destination = parse_destination(entry)
        if destination in parsed:
            raise ConfigError(f"export.destinations lists {str(destination)!r} twice")
        parsed.append(destination)
    return parsed
