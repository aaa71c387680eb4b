"""Socket options for DICOM associations (pynetdicom leaves them at the system defaults).

Nagle's algorithm against delayed ACKs costs up to 40 ms per request/response exchange of
small PDUs on Linux; benchmarks/bench_ingest.py measures it (dcmtk's storescu leaves Nagle on
unless ``TCP_NODELAY=1`` is in its environment).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import Any

#: Linux's TCP_QUICKACK (absent elsewhere: then only TCP_NODELAY is set).
QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class QuickAckSocket(socket.socket):
    """A TCP socket that re-arms TCP_QUICKACK before every read (Linux clears it as it goes).

    A sender that leaves Nagle's algorithm on (dcmtk's storescu by default) holds the small
    last segment of each message until the previous one is acknowledged, and Linux delays
    that acknowledgement up to 40 ms: one stall per C-STORE. Acknowledging at once is what a
    receiver can do about it (measured in benchmarks/bench_ingest.py).
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if QUICKACK is not None:
            with contextlib.suppress(OSError):
                self.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
        return super().recv(bufsize, flags)


def tune_socket(event: Any, *, quick_ack: bool = False) -> None:
    """``EVT_CONN_OPEN`` handler: TCP_NODELAY (our PDUs go at once, whatever the peer's ACK
    timing) and, with ``quick_ack`` on a plain TCP connection, the quick-ACK socket above in
    place of pynetdicom's before it first reads (the listener's associations)."""
    try:
        holder = event.assoc.dul.socket
        sock = holder.socket
    except AttributeError:
        return
    if not isinstance(sock, socket.socket):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if (
        not quick_ack
        or QUICKACK is None
        or isinstance(sock, ssl.SSLSocket)
        or type(sock) is not socket.socket
    ):
        return  # TLS keeps its own socket (pynetdicom checks for SSLSocket)
    timeout = sock.gettimeout()
    quick = QuickAckSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    quick.settimeout(timeout)
    holder.socket = quick
