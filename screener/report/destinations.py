"""Where exports go, and over which channel: the export queue's destinations.

Each row of ``exports`` names its destination as a string, and the string says the channel:

* ``AE_TITLE@HOST:PORT`` -- DICOM C-STORE (``export.destinations``);
* ``https://HOST/dicom-web`` (or ``http://``) -- DICOMweb STOW-RS to that service's base
  URL (``export.destinations``; PS3.18 10.5 <https://dicom.nema.org/medical/dicom/current/output/html/part18.html#sect_10.5>);
* ``mllp://HOST:PORT`` -- an HL7 v2 ORU^R01 over MLLP (``hl7.destinations``);
* ``fhir+https://HOST/fhir`` (or ``fhir+http://``) -- a FHIR R4 transaction Bundle POSTed to
  that base URL (``fhir.base_url``, stored with the ``fhir+`` prefix so that it is never taken
  for a STOW-RS service).

Results go to every destination; a radiologist's read (an IHE AIRAI assessment SR) goes to
the DICOM ones (C-STORE and STOW-RS) only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from screener.config import Settings
from screener.dicomnet.peers import Peer, parse_peer
from screener.errors import ConfigError

#: A C-STORE SCP that receives our SRs.
Destination = Peer

#: The channels, by the name ``screener exports list`` and the metrics show.
DIMSE, STOW, HL7, FHIR = "dimse", "stow", "hl7", "fhir"
CHANNELS = (DIMSE, STOW, HL7, FHIR)
#: Channels that carry DICOM objects (the AI result SR, an assessment SR, a capture).
DICOM_CHANNELS = (DIMSE, STOW)

FHIR_PREFIX = "fhir+"
MLLP_SCHEME = "mllp"
#: exports.destination is VARCHAR(512)
MAX_ADDRESS = 512


@dataclass(frozen=True)
class Target:
    """One destination: its channel and its address as stored in ``exports.destination``."""

    channel: str
    address: str

    def __str__(self) -> str:
        return self.address


def parse_destination(text: str, key: str = "export.destinations") -> Peer:
    """Parse one ``AE_TITLE@HOST:PORT`` entry (see :func:`screener.dicomnet.peers.parse_peer`)."""
    return parse_peer(text, key)


def parse_target(text: str, key: str = "export.destinations") -> Target:
    """The channel and the normalised address of one destination (see the module docstring)."""
    text = text.strip()
    if len(text) > MAX_ADDRESS:
        raise ConfigError(f"{key}: a destination is at most {MAX_ADDRESS} characters")
    lowered = text.lower()
    if lowered.startswith(FHIR_PREFIX):
        return Target(FHIR, FHIR_PREFIX + _http_url(text[len(FHIR_PREFIX) :], key))
    if lowered.startswith(("http://", "https://")):
        return Target(STOW, _http_url(text, key))
    if lowered.startswith(MLLP_SCHEME + "://"):
        parts = urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or not 0 < port < 65536:
            raise ConfigError(f"{key}: {text!r} is not mllp://HOST:PORT")
        if parts.path not in ("", "/") or parts.query or parts.username:
            raise ConfigError(f"{key}: {text!r} is not mllp://HOST:PORT (nothing after the port)")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return Target(HL7, f"{MLLP_SCHEME}://{host}:{port}")
    return Target(DIMSE, str(parse_destination(text, key)))


def _http_url(text: str, key: str) -> str:
    """An http(s) base URL without credentials, query or fragment, with no trailing slash."""
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}: {text!r} is not an http:// or https:// URL")
    if parts.username or parts.password:
        raise ConfigError(
            f"{key}: {parts.scheme}://{parts.hostname}... holds credentials; give them in a file "
            "(see the channel's settings), never in the URL"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"{key}: {text!r} must not have a query or a fragment")
    try:
        parts.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"{key}: {text!r} has an invalid port") from exc
    return f"{parts.scheme.lower()}://{parts.netloc}{parts.path.rstrip('/')}"


def parse_destinations(entries: Iterable[str], key: str = "export.destinations") -> list[Target]:
    """All configured destinations of one setting, each once, in order."""
    parsed: list[Target] = []
    for entry in entries:
        target = parse_target(entry, key)
        if target in parsed:
            raise ConfigError(f"{key} lists {target.address!r} twice")
        parsed.append(target)
    return parsed


def result_targets(settings: Settings) -> list[Target]:
    """Every destination of a scored image's result, over every channel."""
    targets = parse_destinations(settings.export.destinations)
    for target in parse_destinations(settings.hl7.destinations, "hl7.destinations"):
        if target.channel != HL7:
            raise ConfigError(f"hl7.destinations: {target.address!r} is not mllp://HOST:PORT")
        targets.append(target)
    if settings.fhir.base_url:
        targets.append(parse_target(FHIR_PREFIX + settings.fhir.base_url, "fhir.base_url"))
    return targets


def dicom_targets(settings: Settings) -> list[Target]:
    """The destinations that take DICOM objects (C-STORE and STOW-RS)."""
    return [
        t for t in parse_destinations(settings.export.destinations) if t.channel in DICOM_CHANNELS
    ]
