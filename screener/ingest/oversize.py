"""A DIMSE message that passes ``listener.max_dataset_mb`` while it arrives: the association
is aborted and what was buffered is dropped.

pynetdicom keeps a message's data set in memory until its last fragment, and reads every PDU
whole before looking at it (the PDU length field has 4 bytes: one P-DATA-TF PDU may announce
4 GB). No handler sees a message before it is complete, so a C-STORE whose data set never
ends would fill the daemon's memory. :class:`ReceiveLimit`, bound to ``EVT_CONN_OPEN``, sits
under pynetdicom's reads of the association's socket: before a PDU's body is read, it adds
the length the PDU's header announces to what the message being received holds already
(``assoc.dimse.message``, as :mod:`screener.ingest.stall` reads it: the command set and the
data set). A PDU that would take it past the limit is never read: an A-ABORT PDU goes to the
peer (PS3.8 9.3.8 <https://dicom.nema.org/medical/dicom/current/output/html/part08.html#sect_9.3.8>, source: DICOM UL service-user), the buffered bytes are dropped, and the
read returns nothing, which pynetdicom takes for the transport closing (PS3.8 9.2 <https://dicom.nema.org/medical/dicom/current/output/html/part08.html#sect_9.2> Evt17): it
closes the connection and ends the association. All of it runs in the association's reader
thread and waits on nothing (``assoc.abort()``, called outside an event handler, would wait
for that very thread to stop: a deadlock). ``on_too_large`` records the refusal.

This reaches into pynetdicom's DUL (``dul.socket.recv``, ``dimse.message``); the tests in
``tests/ingest/test_dataset_bounds.py`` pin it over real sockets.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import structlog
from pynetdicom.pdu import A_ABORT_RQ

from screener.ingest.uids import uid_problem

log = structlog.get_logger(__name__)

#: Bytes pynetdicom reads first of every PDU: its type, a reserved byte and its length.
PDU_HEADER = 6

#: (calling AE title, SOP Instance UID of the C-STORE if valid, bytes the message would hold)
OnTooLarge = Callable[[str, str | None, int], None]


def _buffered(message: Any) -> int:
    """Bytes ``message`` (a DIMSE message being decoded) holds in memory."""
    if message is None:
        return 0
    held = 0
    for name in ("encoded_command_set", "data_set"):
        buffer = getattr(message, name, None)
        if isinstance(buffer, io.BytesIO):
            held += buffer.tell()  # written sequentially: the position is the size
    return held


def _sop_instance_uid(message: Any) -> str | None:
    """The Affected SOP Instance UID of the request, once its command set is decoded and
    if it is a valid UID (never log junk)."""
    command = getattr(message, "command_set", None)
    if command is None:
        return None
    uid = str(command.get("AffectedSOPInstanceUID", "") or "").strip()
    return None if uid_problem(uid) else uid


def _abort_pdu() -> bytes:
    pdu = A_ABORT_RQ()
    pdu.source = 0x00  # PS3.8 Table 9-26 <https://dicom.nema.org/medical/dicom/current/output/html/part08.html#table_9-26>: DICOM UL service-user (initiated abort)
    pdu.reason_diagnostic = 0x00  # not significant for a service-user abort
    return bytes(pdu.encode())


class ReceiveLimit:
    """``EVT_CONN_OPEN`` handler: no DIMSE message of the association may hold more than
    ``limit`` bytes."""

    def __init__(self, limit: int, on_too_large: OnTooLarge) -> None:
        self.limit = limit
        self.on_too_large = on_too_large

    def __call__(self, event: Any) -> None:
        assoc = event.assoc
        holder = getattr(getattr(assoc, "dul", None), "socket", None)
        if holder is None:
            return
        read = holder.recv

        def recv(nr_bytes: int) -> bytearray:
            message = getattr(assoc.dimse, "message", None)
            if _buffered(message) + nr_bytes > self.limit:  # a read past the limit: not done
                self._cut_off(assoc, holder, message, _buffered(message) + nr_bytes)
                return bytearray()  # pynetdicom: the transport closed (Evt17)
            data: bytearray = read(nr_bytes)
            if nr_bytes == PDU_HEADER and len(data) == PDU_HEADER:
                # PS3.8 9.3.1 <https://dicom.nema.org/medical/dicom/current/output/html/part08.html#sect_9.3.1>: type, reserved, length; a PDU that would pass the limit is
                # refused here, before its body is asked for (pynetdicom then closes quietly)
                held = _buffered(message) + PDU_HEADER + int.from_bytes(data[2:6], "big")
                if held > self.limit:
                    self._cut_off(assoc, holder, message, held)
                    return bytearray()
            return data

        holder.recv = recv  # this association's socket only

    def _cut_off(self, assoc: Any, holder: Any, message: Any, held: int) -> None:
        """Abort: tell the peer, drop what the message holds, record why."""
        calling = str(assoc.requestor.ae_title).strip()
        uid = _sop_instance_uid(message)
        if message is not None:
            message.encoded_command_set = io.BytesIO()
            message.data_set = io.BytesIO()
        assoc.dimse.message = None
        holder.send(_abort_pdu())
        try:
            self.on_too_large(calling, uid, held)
        except Exception:  # thread boundary: the association ends all the same
            log.exception("oversize_record_failed", calling_ae_title=calling)


__all__ = ["OnTooLarge", "ReceiveLimit"]
