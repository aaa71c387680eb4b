"""The HL7 v2 channel: each result as an ORU^R01 (:mod:`screener.report.oru`) to a RIS over
MLLP, one TCP connection per batch, each message waiting for its ACK before the next.

MLLP (HL7 v2.5.1 Appendix C, the Minimal Lower Layer Protocol): a message travels as
``0x0B`` + the message + ``0x1C 0x0D``; the receiver answers each with an ACK in the same
framing (over TLS with ``hl7.tls``, the ``[tls]`` section's certificate and CAs). The ACK's
MSA-1 (HL7 table 0008, original and enhanced acknowledgment modes) decides:

* ``AA`` / ``CA`` (accept): delivered; the receipt records the ACK's own control ID (MSH-10)
  and MSA-2, the control ID it acknowledges;
* ``AE`` / ``CE`` (application error): the receiver judged the message itself wrong; the
  same message would fail the same way: permanent, dead-lettered at once;
* ``AR`` / ``CR`` (application reject): the receiver could not take it now (its own state,
  an unsupported processing ID it may be switched to...): transient, retried with backoff;
* no ACK within ``hl7.timeout_seconds``, a connection that closes, an ACK that cannot be read,
  or one acknowledging another control ID: transient.

An ACK is outside input: it is read up to :data:`MAX_ACK` bytes and only its MSA and ERR codes
are recorded, never its free text (it may echo PHI).
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pydicom

from screener.config import Settings
from screener.report.delivery import Delivery, Failure, Recorder, build_each, fail_each, record
from screener.report.destinations import Target
from screener.report.objects import finding_of
from screener.report.oru import build_oru, control_id

START_BLOCK, END_BLOCK, CARRIAGE_RETURN = b"\x0b", b"\x1c", b"\r"
#: Most bytes of one ACK: an ACK is a few segments; more is not an ACK.
MAX_ACK = 64 * 1024
#: Seconds to wait for a TCP connection: a receiver that is down must fail fast.
CONNECT_TIMEOUT = 3.0

ACCEPTED = frozenset({"AA", "CA"})
ERRORS = frozenset({"AE", "CE"})
REJECTS = frozenset({"AR", "CR"})


def frame(message: str) -> bytes:
    """One message in MLLP framing, UTF-8 (MSH-18 says so)."""
    return START_BLOCK + message.encode("utf-8") + END_BLOCK + CARRIAGE_RETURN


class AckError(Exception):
    """No readable ACK came back (transient)."""


def read_frame(sock: socket.socket, timeout: float) -> bytes:
    """The next MLLP-framed block from ``sock``, within ``timeout`` seconds and MAX_ACK bytes."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        end = data.find(END_BLOCK + CARRIAGE_RETURN)
        if end >= 0:
            start = data.find(START_BLOCK)
            if start < 0 or start > end:
                raise AckError("the answer is not MLLP-framed (no start block)")
            return data[start + 1 : end]
        if len(data) > MAX_ACK:
            raise AckError(f"no end of block within {MAX_ACK} bytes")
        left = deadline - time.monotonic()
        if left <= 0:
            raise AckError(f"no ACK within {timeout:g} s")
        sock.settimeout(left)
        try:
            chunk = sock.recv(8192)
        except TimeoutError:
            raise AckError(f"no ACK within {timeout:g} s") from None
        if not chunk:
            raise AckError("the receiver closed the connection before its ACK")
        data += chunk


@dataclass(frozen=True)
class Ack:
    """What an ACK says: MSA-1, MSA-2, its own MSH-10 and its ERR-3 codes."""

    code: str
    acknowledged_id: str
    control_id: str
    errors: tuple[str, ...] = ()


def _safe(value: str, limit: int = 40) -> str:
    """A code from outside, printable ASCII only, bounded."""
    return "".join(c for c in value if 0x20 < ord(c) < 0x7F)[:limit]


def parse_ack(block: bytes) -> Ack:
    """The MSH-10, MSA and ERR-3 codes of one ACK; AckError when it is not one."""
    text = block.decode("utf-8", errors="replace")
    segments = [s for s in text.replace("\n", "\r").split("\r") if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise AckError("the answer is not an HL7 message (no MSH)")
    sep = segments[0][3]
    component = segments[0][4]
    msh = segments[0].split(sep)
    msa = next((s.split(sep) for s in segments if s.startswith("MSA" + sep)), None)
    if msa is None or len(msa) < 3:
        raise AckError("the answer has no MSA segment")
    errors = tuple(
        _safe(s.split(sep)[3].split(component)[0])
        for s in segments
        if s.startswith("ERR" + sep) and len(s.split(sep)) > 3
    )
    return Ack(
        code=_safe(msa[1], 2),
        acknowledged_id=_safe(msa[2]),
        control_id=_safe(msh[9]) if len(msh) > 9 else "",
        errors=tuple(e for e in errors if e),
    )


def outcome(ack: Ack, sent_id: str) -> Failure | None:
    """None when ``ack`` accepts the message ``sent_id``, else why not (see the module docstring)."""
    if ack.acknowledged_id != sent_id:
        return Failure("the ACK acknowledges another message control ID (MSA-2)")
    detail = f" (ERR-3 {', '.join(ack.errors)})" if ack.errors else ""
    if ack.code in ACCEPTED:
        return None
    if ack.code in ERRORS:
        return Failure(f"the receiver answered {ack.code}: application error{detail}", True)
    if ack.code in REJECTS:
        return Failure(f"the receiver answered {ack.code}: application reject{detail}")
    return Failure(f"the ACK's MSA-1 {ack.code!r} is not an acknowledgment code")


def receipt(ack: Ack) -> str:
    """What ``exports list`` shows of a delivered message."""
    return f"{ack.code} MSA-2 {ack.acknowledged_id} ACK MSH-10 {ack.control_id}"


class Hl7Channel:
    """ORU^R01 messages to one ``mllp://HOST:PORT`` receiver."""

    def __init__(
        self, target: Target, settings: Settings, tls_context: ssl.SSLContext | None = None
    ) -> None:
        host, _, port = target.address.removeprefix("mllp://").rpartition(":")
        self.address = target.address
        self.host, self.port = host.strip("[]"), int(port)
        self.settings = settings
        self.tls_context = tls_context

    def _build(self, delivery: Delivery) -> tuple[str, bytes]:
        header = pydicom.dcmread(delivery.spool_path, stop_before_pixels=True)
        message = build_oru(delivery, header, finding_of(delivery.result), self.settings.hl7)
        return control_id(delivery.object_uid), frame(message)

    def send(self, deliveries: Sequence[Delivery], recorder: Recorder) -> tuple[int, bool]:
        """One connection; each message's ACK recorded before the next is sent."""
        built = build_each(deliveries, self._build, recorder, noun="the ORU^R01")
        if not built:
            return 0, True
        timeout = self.settings.hl7.timeout_seconds
        try:
            sock = socket.create_connection(
                (self.host, self.port), timeout=min(CONNECT_TIMEOUT, timeout)
            )
            if self.tls_context is not None:  # the handshake: a refused certificate is an OSError
                sock = self.tls_context.wrap_socket(sock, server_hostname=self.host)
        except OSError as exc:
            unreachable = Failure(f"cannot connect to {self.address} ({type(exc).__name__})")
            fail_each(recorder, built, unreachable)
            return 0, False
        delivered = 0
        with sock:
            broken: str | None = None
            for delivery, (sent_id, data) in built:
                if broken is not None:  # the connection is unusable: the rest wait for a retry
                    recorder.failed(delivery, Failure(broken))
                    continue
                try:
                    sock.settimeout(timeout)
                    sock.sendall(data)
                    ack = parse_ack(read_frame(sock, timeout))
                except (OSError, AckError) as exc:
                    broken = f"no ACK from {self.address}: {exc}"
                    recorder.failed(delivery, Failure(broken))
                    continue
                delivered += record(recorder, delivery, outcome(ack, sent_id), receipt(ack))
        return delivered, True
