"""C-STORE requests whose data set never comes: answered C000 at once, the slot freed.

PS3.7 9.3.1.1 <https://dicom.nema.org/medical/dicom/current/output/html/part07.html#sect_9.3.1.1> / 6.3.1: a C-STORE-RQ whose Command Data Set Type (0000,0800) is not 0x0101
is followed by its data set. A sender that announces one and sends nothing (an empty data
set from a broken or hostile SCU) leaves pynetdicom waiting for fragments that never come,
and the sender waiting for our response: both sit until ``network_timeout`` holding one of
``max_associations``. No real sender leaves a gap between the command and the first
data-set fragment (they travel back to back), so a request still without a single data-set
byte after :data:`GRACE_SECONDS`, with nothing more in the socket or in pynetdicom's queues
(a busy host is not a stalled sender), is answered 0xC000 (Error: Cannot understand, PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3>),
and the association goes on (the sender may release it or send the next instance).

This looks at pynetdicom's DIMSE provider (``assoc.dimse.message``, the message being
decoded): pynetdicom offers no event before a message is complete. A test pins it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE

from screener.ingest.uids import uid_problem

log = structlog.get_logger(__name__)

#: Seconds a C-STORE-RQ may wait for the first byte of its data set.
GRACE_SECONDS = 2.0
#: How often the open associations are looked at.
POLL_SECONDS = 0.25

STATUS_CANNOT_UNDERSTAND = 0xC000
NO_DATA_SET = 0x0101  # PS3.7 E.1 <https://dicom.nema.org/medical/dicom/current/output/html/part07.html#sect_E.1>-1: Command Data Set Type "no data set"

OnStalled = Callable[[str, str | None], None]  # (calling AE title, SOP Instance UID)


def _waiting_for_data_set(message: Any) -> bool:
    """True when ``message`` is a decoded C-STORE-RQ command with no data-set byte yet."""
    if type(message).__name__ != "C_STORE_RQ":
        return False
    command = getattr(message, "command_set", None)
    if command is None or "CommandDataSetType" not in command:
        return False
    if command.CommandDataSetType == NO_DATA_SET:
        return False
    if getattr(message, "_data_set_file", None) is not None:
        return False
    data_set = getattr(message, "data_set", None)
    return data_set is not None and data_set.tell() == 0


def _data_in_transit(assoc: Any) -> bool:
    """True when the peer has sent more than pynetdicom has decoded: PDUs queued between its
    network thread and the DIMSE provider, or unread bytes in the socket (a busy host, not a
    stalled sender)."""
    dul = getattr(assoc, "dul", None)
    if dul is None:
        return False
    for name in ("event_queue", "to_user_queue"):
        pending = getattr(dul, name, None)
        if pending is not None and not pending.empty():
            return True
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if sock is None:
        return False
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:  # closed or reset: nothing more will come
        return False


class StalledStoreWatch:
    """A thread that answers stalled C-STORE requests of ``ae``'s associations."""

    def __init__(self, ae: AE, on_stalled: OnStalled) -> None:
        self.ae = ae
        self.on_stalled = on_stalled
        self._seen: dict[int, float] = {}  # id(message) -> when first seen waiting
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="stalled-stores", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.check(time.monotonic())
            except Exception:  # thread boundary: never stop watching
                log.exception("stall_watch_failed")

    def check(self, now: float) -> int:
        """Answer every request that has waited longer than the grace; returns how many."""
        waiting: dict[int, float] = {}
        answered = 0
        for assoc in list(self.ae.active_associations):
            message = getattr(getattr(assoc, "dimse", None), "message", None)
            if not _waiting_for_data_set(message):
                continue
            if _data_in_transit(assoc):  # bytes arrived, not yet decoded: not a stall
                self._seen.pop(id(message), None)
                continue
            since = self._seen.get(id(message), now)
            waiting[id(message)] = since
            if now - since >= GRACE_SECONDS:
                self._answer(assoc, message)
                waiting.pop(id(message))
                answered += 1
        self._seen = waiting
        return answered

    def _answer(self, assoc: Any, message: Any) -> None:
        command = message.command_set
        uid = str(command.get("AffectedSOPInstanceUID", "") or "").strip()
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = command.MessageID
        rsp.AffectedSOPClassUID = command.AffectedSOPClassUID
        rsp.AffectedSOPInstanceUID = command.AffectedSOPInstanceUID
        rsp.Status = STATUS_CANNOT_UNDERSTAND
        calling = str(assoc.requestor.ae_title).strip()
        # forget the half-read request, so the association goes on with the next message
        # (the sender may send another C-STORE or release; a late data set is a protocol
        # error pynetdicom aborts on)
        if assoc.dimse.message is message:
            assoc.dimse.message = None
        assoc.dimse.send_msg(rsp, message.context_id)
        self.on_stalled(calling, None if uid_problem(uid) else uid)
