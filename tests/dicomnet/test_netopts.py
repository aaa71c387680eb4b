"""Socket options of associations: TCP_NODELAY, and the quick-ACK socket the listener uses so
that senders that leave Nagle on (dcmtk's default) are not held 40 ms per C-STORE. The speed
itself is measured in benchmarks/bench_ingest.py, not here."""

from __future__ import annotations

import socket
from types import SimpleNamespace

from screener.dicomnet.netopts import QuickAckSocket, tune_socket


def _pair() -> tuple[socket.socket, socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    server.close()
    return accepted, client


def _event(sock: socket.socket) -> SimpleNamespace:
    return SimpleNamespace(
        assoc=SimpleNamespace(dul=SimpleNamespace(socket=SimpleNamespace(socket=sock)))
    )


def test_the_listener_socket_gets_nodelay_and_quick_acks_and_still_reads() -> None:
    """A listener's accepted socket gets TCP_NODELAY and quick ACKs, keeps its timeout and still
    carries data both ways."""
    accepted, client = _pair()
    accepted.settimeout(5.0)
    event = _event(accepted)
    tune_socket(event, quick_ack=True)
    tuned = event.assoc.dul.socket.socket
    try:
        assert isinstance(tuned, QuickAckSocket) and accepted.fileno() == -1  # taken over
        assert tuned.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert tuned.gettimeout() == 5.0
        client.sendall(b"A-ASSOCIATE-RQ")
        assert tuned.recv(100) == b"A-ASSOCIATE-RQ"
        tuned.sendall(b"A-ASSOCIATE-AC")
        assert client.recv(100) == b"A-ASSOCIATE-AC"
    finally:
        tuned.close()
        client.close()


def test_an_outgoing_association_gets_nodelay_only() -> None:
    """An outgoing association's socket gets TCP_NODELAY and is not replaced by a quick-ACK socket."""
    accepted, client = _pair()
    event = _event(client)
    tune_socket(event)
    try:
        assert event.assoc.dul.socket.socket is client
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        accepted.close()
        client.close()
