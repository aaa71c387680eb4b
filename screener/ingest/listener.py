"""The DICOM listener: C-ECHO and C-STORE SCP (pynetdicom).

The C-STORE handler only checks, spools and enqueues (:class:`Acceptor`), and returns
Success only once the instance and its job are committed. Its failure statuses follow
PS3.4 Annex B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3> (Table B.2-1):

* ``0xA700`` Refused: Out of Resources — the spool disk is below ``storage.min_free_mb``,
  or the data set, complete, is over ``listener.max_dataset_mb`` as it inflates (Deflated
  Explicit VR Little Endian, PS3.5 A.5 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_A.5>) or as received (``dataset_too_large``)
* ``0xA900`` Error: Data Set does not match SOP Class — e.g. an image without Pixel Data
* ``0xC000`` Error: Cannot understand — an unparseable or truncated data set
* ``0x0122`` Refused: SOP Class not supported (PS3.7 C.4.2.1.1 <https://dicom.nema.org/medical/dicom/current/output/html/part07.html#sect_C.4.2.1.1>) — a storage SOP class
  that is not an image we screen (an SR, a CT, ...). Every storage SOP class is accepted at
  association time, so that such an instance gets this clear, recorded answer rather than a
  silently rejected presentation context.

A data set still arriving that passes ``listener.max_dataset_mb`` gets no status: the
association is aborted (A-ABORT) before more is read, and the refusal recorded
(:mod:`screener.ingest.oversize`).
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import structlog
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer

from screener.config import ListenerSettings, Settings
from screener.db import utcnow
from screener.dicomnet.netopts import tune_socket
from screener.errors import ConfigError, IngestError
from screener.ingest.accept import Acceptor
from screener.ingest.inflate import DatasetTooLarge, limit_bytes
from screener.ingest.oversize import ReceiveLimit
from screener.ingest.refusal import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    refusal_of,
)
from screener.ingest.sopclasses import IMAGE_STORAGE_SOP_CLASSES, VERIFICATION, transfer_syntaxes
from screener.ingest.stall import StalledStoreWatch
from screener.ingest.uids import uid_problem
from screener.runtime.wakeup import PipeEvent

log = structlog.get_logger(__name__)


def _calling_ae(event: Any) -> str:
    return str(event.assoc.requestor.ae_title).strip()


def _request_uid(event: Any) -> str | None:
    """The C-STORE request's Affected SOP Instance UID, if it is a valid UID (never log junk)."""
    uid = str(event.request.AffectedSOPInstanceUID or "").strip()
    return None if uid_problem(uid) else uid


class _SharedPortServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, its socket bound with ``SO_REUSEPORT`` (Linux 3.9+)."""

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class UidLocks:
    """One C-STORE of a SOP Instance UID at a time across listener processes.

    The accept path serializes arrivals of one UID with thread locks (a duplicate's file is
    removed, and must not be the one another arrival has just recorded under the same name);
    those do not reach another process. With ``listener.processes`` > 1 each C-STORE also
    holds an exclusive ``flock`` on one of ``buckets`` lock files (by a stable hash of the
    request's Affected SOP Instance UID) in ``folder``: a second open of the file conflicts
    with the first, in another thread or another process alike.
    """

    def __init__(self, folder: str | Path, buckets: int = 64) -> None:
        self.folder = Path(folder)
        self.buckets = buckets
        self.folder.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def hold(self, uid: str | None) -> Iterator[None]:
        if uid is None:  # no valid UID in the request: the data set will be refused anyway
            yield
            return
        bucket = zlib.crc32(uid.encode()) % self.buckets
        with open(self.folder / f"{bucket:02d}.lock", "ab") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


class Listener:
    """A pynetdicom association server bound to the accept path."""

    def __init__(
        self,
        settings: ListenerSettings,
        acceptor: Acceptor,
        ssl_context: ssl.SSLContext | None = None,
        *,
        reuse_port: bool = False,
    ) -> None:
        """``ssl_context``: DICOM TLS only on this port (:func:`screener.dicomnet.tls.server_context`).

        ``reuse_port``: bind with ``SO_REUSEPORT`` so that ``listener.processes`` listeners
        share the port, the kernel handing each new association to one of them.
        """
        self.settings = settings
        self.reuse_port = reuse_port
        self._uid_locks = (
            UidLocks(Path(acceptor.settings.storage.spool_dir) / ".listener-locks")
            if reuse_port
            else None
        )
        self.acceptor = acceptor
        self.ssl_context = ssl_context
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.maximum_associations = settings.max_associations
        self.ae.network_timeout = settings.network_timeout
        self.ae.acse_timeout = settings.network_timeout
        self.ae.dimse_timeout = settings.network_timeout
        if settings.allowed_calling_aets:
            self.ae.require_calling_aet = list(settings.allowed_calling_aets)
        self.ae.require_called_aet = settings.require_called_aet
        self.ae.add_supported_context(VERIFICATION)
        for sop_class in sorted(IMAGE_STORAGE_SOP_CLASSES):
            self.ae.add_supported_context(sop_class, transfer_syntaxes(settings.prefer_compressed))
        uncompressed = [
            ExplicitVRLittleEndian,
            ImplicitVRLittleEndian,
            DeflatedExplicitVRLittleEndian,
        ]
        for context in AllStoragePresentationContexts:
            syntax = context.abstract_syntax
            if syntax is not None and syntax not in IMAGE_STORAGE_SOP_CLASSES:
                self.ae.add_supported_context(syntax, uncompressed)
        self._server: ThreadedAssociationServer | None = None
        self._stalls = StalledStoreWatch(self.ae, self._on_stalled)
        self._receive_limit = ReceiveLimit(limit_bytes(settings.max_dataset_mb), self._on_too_large)
        self._in_flight = 0
        self.last_store_at: datetime | None = None  # the last C-STORE answered Success
        self._lock = threading.Lock()

    @property
    def bound(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        assert self._server is not None, "listener not started"
        return int(self._server.server_address[1])

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_C_ECHO, self._on_c_echo),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_CONN_OPEN, partial(tune_socket, quick_ack=True)),
            (evt.EVT_CONN_OPEN, self._receive_limit),
        ]
        try:
            if self.reuse_port:
                self._server = self._start_shared(handlers)
            else:
                self._server = self.ae.start_server(
                    (self.settings.host, self.settings.port),
                    block=False,
                    evt_handlers=handlers,
                    ssl_context=self.ssl_context,
                )
        except OSError as exc:  # EADDRINUSE, EACCES (a port below 1024), EADDRNOTAVAIL
            raise ConfigError(
                f"listener.port = {self.settings.port}: cannot listen on "
                f"{self.settings.host}:{self.settings.port} ({exc.strerror}); another screener "
                "or DICOM service may hold it: choose another with --port or listener.port"
            ) from None
        self._stalls.start()
        log.info(
            "listener_started",
            ae_title=self.settings.ae_title,
            host=self.settings.host,
            port=self.port,
            tls=self.ssl_context is not None,
            allowed_calling_aets=self.settings.allowed_calling_aets or "any",
        )

    def _start_shared(self, handlers: list[Any]) -> ThreadedAssociationServer:
        """``AE.start_server(block=False)`` with a socket bound with ``SO_REUSEPORT``."""
        server = self.ae.make_server(
            (self.settings.host, self.settings.port),
            evt_handlers=handlers,
            ssl_context=self.ssl_context,
            server_class=_SharedPortServer,
        )
        thread = threading.Thread(target=server.serve_forever, name="listener", daemon=True)
        thread.start()
        self.ae._servers.append(server)  # so that AE.shutdown() stops it, as start_server's
        return server

    def stop(self, grace_seconds: float = 30.0) -> None:
        """Stop accepting, let in-flight stores finish (bounded), then close associations.

        In flight means a C-STORE handler running, or a message partly received (a data set
        arriving). An idle association, or a connection that never associated (a port probe),
        is not waited for: it is closed at once, and its sender, having no answer pending,
        loses nothing.
        """
        if self._server is None:
            return
        self._stalls.stop()
        self._server.shutdown()  # stop accepting new associations
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline:
            with self._lock:
                busy = self._in_flight
            if busy == 0 and not self._receiving():
                break
            time.sleep(0.05)
        self.ae.shutdown()
        self._server = None
        log.info("listener_stopped")

    def _receiving(self) -> bool:
        """True while some association holds a partly received DIMSE message."""
        return any(
            getattr(getattr(assoc, "dimse", None), "message", None) is not None
            for assoc in list(self.ae.active_associations)
        )

    # -- handlers -------------------------------------------------------------------

    def _on_c_echo(self, event: Any) -> int:
        log.info("echo_received", calling_ae_title=_calling_ae(event))
        return STATUS_SUCCESS

    def _on_accepted(self, event: Any) -> None:
        log.info(
            "association_accepted",
            calling_ae_title=_calling_ae(event),
            accepted_contexts=len(event.assoc.accepted_contexts),
            rejected_contexts=len(event.assoc.rejected_contexts),
        )

    def _on_rejected(self, event: Any) -> None:
        calling = _calling_ae(event)
        allowed = self.settings.allowed_calling_aets
        if allowed and calling not in allowed:
            reason = "calling_ae_not_recognised"
            message = f"calling AE title {calling!r} is not in listener.allowed_calling_aets"
        else:
            reason = "association_rejected"
            message = (
                f"association from {calling!r} rejected (e.g. listener.max_associations reached)"
            )
        log.warning("association_rejected", calling_ae_title=calling, reason=reason)
        self.acceptor.record_refusal(
            reason, message, event="association_rejected", calling_ae_title=calling
        )

    def _on_stalled(self, calling: str, sop_uid: str | None) -> None:
        self._refuse(
            STATUS_CANNOT_UNDERSTAND,
            "empty_data_set",
            "the C-STORE request announced a data set but none followed",
            sop_uid,
            calling,
        )

    def _on_too_large(self, calling: str, sop_uid: str | None, held: int) -> None:
        """A message cut off by :class:`ReceiveLimit`: the association is being aborted."""
        limit = self.settings.max_dataset_mb
        message = (
            f"A-ABORT: the data set passed listener.max_dataset_mb ({limit} MB) while it "
            f"arrived ({held} bytes with the next PDU); the association was aborted"
        )
        log.warning(
            "store_refused",
            status="A-ABORT",
            reason=DatasetTooLarge.reason,
            error=message,
            bytes_held=held,
            sop_instance_uid=sop_uid,
            calling_ae_title=calling,
        )
        self.acceptor.record_refusal(
            DatasetTooLarge.reason, message, sop_instance_uid=sop_uid, calling_ae_title=calling
        )

    def _on_c_store(self, event: Any) -> int:
        calling = _calling_ae(event)
        sop_uid = _request_uid(event)
        with self._lock:
            self._in_flight += 1
        try:
            data = event.encoded_dataset(include_meta=True)
            if self._uid_locks is None:
                self.acceptor.accept(data, source="dicom", calling_ae_title=calling)
            else:
                with self._uid_locks.hold(sop_uid):
                    self.acceptor.accept(data, source="dicom", calling_ae_title=calling)
            self.last_store_at = utcnow()
            return STATUS_SUCCESS
        except IngestError as exc:
            status, reason = refusal_of(exc)
            return self._refuse(status, reason, exc, sop_uid, calling)
        except Exception as exc:  # stage boundary: a database outage must not kill the listener
            log.exception("store_failed", sop_instance_uid=sop_uid, calling_ae_title=calling)
            return self._refuse(STATUS_OUT_OF_RESOURCES, "internal_error", exc, sop_uid, calling)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _refuse(
        self, status: int, reason: str, exc: BaseException | str, sop_uid: str | None, calling: str
    ) -> int:
        """Log and record a refused C-STORE; returns the status to answer."""
        log.warning(
            "store_refused",
            status=f"0x{status:04X}",
            reason=reason,
            error=str(exc),
            sop_instance_uid=sop_uid,
            calling_ae_title=calling,
        )
        self.acceptor.record_refusal(
            reason, f"0x{status:04X}: {exc}", sop_instance_uid=sop_uid, calling_ae_title=calling
        )
        return status


def listener_process_main(
    settings: Settings, index: int, port: int, parent_pid: int, wake: PipeEvent | None = None
) -> None:
    """Entry point of one extra listener process (``listener.processes`` > 1).

    Its own pynetdicom AE on ``port`` (``SO_REUSEPORT``, beside the daemon's), its own
    database connections and accept path on the shared database and spool; ``wake`` wakes
    the workers when a job is queued. It dies with the daemon (``parent_pid``); SIGTERM
    stops it as :meth:`Listener.stop` does (in-flight stores finish); Ctrl-C, which reaches
    the whole process group, is left to the daemon.
    """
    import dataclasses

    from screener.db import Database
    from screener.dicomnet.tls import server_context
    from screener.ingest.spool import Spool
    from screener.runtime.lifecycle import die_with_parent
    from screener.runtime.logs import configure_logging

    die_with_parent(parent_pid)
    stop = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    configure_logging(settings.logging)
    db = Database(settings.database.url)
    acceptor = Acceptor(
        db,
        Spool(settings.storage.spool_dir, settings.storage.min_free_mb),
        settings,
        on_queued=wake.set if wake is not None else None,
    )
    tls = server_context(settings.tls) if settings.listener.tls else None
    listener = Listener(
        dataclasses.replace(settings.listener, port=port), acceptor, tls, reuse_port=True
    )
    listener.start()
    log.info("listener_process_started", index=index, pid=os.getpid())
    stop.wait()
    listener.stop()
    db.dispose()
