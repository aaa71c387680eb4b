"""Where SRs go: ``AE_TITLE@HOST:PORT`` entries of ``export.destinations``."""

from __future__ import annotations

from collections.abc import Iterable

from screener.dicomnet.peers import Peer, parse_peer
from screener.errors import ConfigError

#: A C-STORE SCP that receives our SRs.
Destination = Peer


def parse_destination(text: str, key: str = "export.destinations") -> Peer:
    """Parse one ``export.destinations`` entry (see :func:`screener.dicomnet.peers.parse_peer`)."""
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
