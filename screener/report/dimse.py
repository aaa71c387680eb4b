"""The C-STORE channel: DICOM objects to a Storage SCP (PACS), one association per batch.

C-STORE statuses follow PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3> / PS3.7 C.4.2.1 <https://dicom.nema.org/medical/dicom/current/output/html/part07.html#sect_C.4.2.1>: Success and the Warning statuses
(0xB000 coercion, 0xB006 elements discarded, 0xB007 data set does not match SOP class)
deliver; 0x0111 Duplicate SOP Instance on a resend also counts as delivered (the PACS has
this very instance); every other status is a failure, permanent or transient as
:func:`status_is_permanent` says.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category

from screener.config import Settings
from screener.dicomnet.netopts import tune_socket
from screener.report.delivery import Delivery, Failure, Recorder, build_each, fail_each, record
from screener.report.destinations import Destination, Target, parse_destination
from screener.report.objects import SOP_CLASS_NAMES, DicomObjects
from screener.report.sr import SR_SOP_CLASSES

#: Seconds to wait for a TCP connection: a destination that is down must fail fast.
CONNECT_TIMEOUT = 3.0

STATUS_SUCCESS = 0x0000
STATUS_DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.4.2.1 <https://dicom.nema.org/medical/dicom/current/output/html/part07.html#sect_C.4.2.1>: the peer already holds this instance

#: C-STORE failure statuses that a resend of the same data set cannot cure (PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3>,
#: PS3.7 C.4.2.1 <https://dicom.nema.org/medical/dicom/current/output/html/part07.html#sect_C.4.2.1> and Annex C): the destination judged the request itself, not its own state.
_PERMANENT_STATUSES = frozenset(
    {
        0x0105,  # No such attribute
        0x0106,  # Invalid attribute value
        0x0112,  # No such SOP Instance
        0x0113,  # No such event type
        0x0114,  # No such argument
        0x0115,  # Invalid argument value
        0x0117,  # Invalid object instance
        0x0118,  # No such SOP Class
        0x0119,  # Class-instance conflict
        0x0120,  # Missing attribute
        0x0121,  # Missing attribute value
        0x0122,  # Refused: SOP Class not supported (PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3>)
        0x0123,  # No such action
        0x0124,  # Refused: Not authorized (PS3.7 Annex C <https://dicom.nema.org/medical/dicom/current/output/html/part07.html#chapter_C>, general statuses)
        0x0211,  # Unrecognized operation
        0x0212,  # Mistyped argument
    }
)


def status_is_permanent(status: int) -> bool:
    """Whether a failed C-STORE status means that sending the same SR again will fail again.

    PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3> (Storage Service Class statuses) and PS3.7 C.4.2.1 <https://dicom.nema.org/medical/dicom/current/output/html/part07.html#sect_C.4.2.1> / Annex C:

    * permanent: 0xA9xx Error: Data Set does not match SOP Class, 0xCxxx Error: Cannot
      understand, 0x0122 Refused: SOP Class not supported, 0x0124 Refused: Not authorized,
      and the other statuses that reject the request itself (:data:`_PERMANENT_STATUSES`);
    * transient: 0xA7xx Refused: Out of Resources, 0x0110 Processing failure, 0x0210
      Duplicate invocation, 0x0213 Resource limitation, 0xFE00 Cancel, and any status the
      standard does not define (``max_attempts`` still bounds the retries).
    """
    return status in _PERMANENT_STATUSES or status & 0xFF00 == 0xA900 or status & 0xF000 == 0xC000


SR_3D = SR_SOP_CLASSES["3d"]

#: Proposed for every object we send (docs/conformance.md 4.2.2): Explicit VR Little Endian
#: first, Implicit VR Little Endian, which every DICOM AE supports (PS3.5 10.1 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_10.1>).
EXPORT_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def not_accepted(sop_class: str) -> str:
    """Why a destination that refuses a SOP class will never take this delivery."""
    name = SOP_CLASS_NAMES.get(sop_class, sop_class)
    hint = " (try export.sr_kind = comprehensive)" if sop_class == SR_3D else ""
    return f"the destination does not accept {name}{hint}"


class DimseChannel:
    """C-STORE to one ``AE_TITLE@HOST:PORT`` (over DICOM TLS with ``export.tls``)."""

    def __init__(
        self,
        target: Target,
        settings: Settings,
        objects: DicomObjects,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.peer: Destination = parse_destination(target.address, key="exports.destination")
        self.settings = settings
        self.objects = objects
        self.tls_context = tls_context

    def send(self, deliveries: Sequence[Delivery], recorder: Recorder) -> tuple[int, bool]:
        """One association to the peer; each outcome is recorded as soon as it is known."""
        built = build_each(deliveries, self.objects.build, recorder)
        if not built:
            return 0, True
        peer, export = self.peer, self.settings.export
        ae = AE(ae_title=self.settings.listener.ae_title)
        ae.connection_timeout = min(CONNECT_TIMEOUT, export.timeout_seconds)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = export.timeout_seconds
        syntaxes = list(EXPORT_TRANSFER_SYNTAXES)
        sop_classes = {str(ds.SOPClassUID) for _, group in built for ds in group}
        for sop_class in sorted(sop_classes):
            ae.add_requested_context(sop_class, syntaxes)
        tls_args = (self.tls_context, peer.host) if self.tls_context else None
        assoc = ae.associate(
            peer.host,
            peer.port,
            ae_title=peer.ae_title,
            tls_args=tls_args,
            evt_handlers=[(evt.EVT_CONN_OPEN, tune_socket)],  # TCP_NODELAY
        )
        if not assoc.is_established:
            refused = [str(cx.abstract_syntax) for cx in assoc.rejected_contexts]
            # every context rejected: PS3.8 9.3.3.2 <https://dicom.nema.org/medical/dicom/current/output/html/part08.html#sect_9.3.3.2>
            if refused and not assoc.accepted_contexts:
                # the destination does not take this SOP class: resending will not change that
                failure = Failure(not_accepted(refused[0]), permanent=True)
            else:
                how = (
                    "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
                )
                # cannot connect / A-ASSOCIATE-RJ / A-ABORT: the destination may be back later
                failure = Failure(
                    f"association with {peer} {how} (no C-STORE SCP reachable or it refused us)"
                )
            fail_each(recorder, built, failure)
            return 0, False
        delivered = 0
        try:
            for delivery, datasets in built:
                if not assoc.is_established:  # aborted mid-way: the rest count a failed attempt
                    recorder.failed(
                        delivery, Failure(f"association with {peer} ended before this SR")
                    )
                    continue
                try:
                    outcome = self._store(assoc, datasets)
                except Exception as exc:  # stage boundary: record, go on with the next row
                    # the data sets were encoded when built: what fails here is the transport
                    outcome = Failure(f"C-STORE could not be sent: {exc}")
                delivered += record(recorder, delivery, outcome)
        finally:
            if assoc.is_established:
                assoc.release()
        return delivered, True

    def _store(self, assoc: Any, datasets: list[pydicom.Dataset]) -> Failure | None:
        """C-STORE each data set of one delivery; None when all were accepted, else why not."""
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        for ds in datasets:
            name = SOP_CLASS_NAMES.get(str(ds.SOPClassUID), str(ds.SOPClassUID))
            # context rejected: PS3.8 9.3.3.2 <https://dicom.nema.org/medical/dicom/current/output/html/part08.html#sect_9.3.3.2>
            if str(ds.SOPClassUID) not in accepted:
                return Failure(not_accepted(str(ds.SOPClassUID)), permanent=True)
            rsp = assoc.send_c_store(ds)
            if "Status" not in rsp:  # A-ABORT, or no answer within the DIMSE timeout
                return Failure("no C-STORE response (association aborted or DIMSE timeout)")
            status = int(rsp.Status)
            category = code_to_category(status)
            # PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3>: Warning statuses mean the instance was stored
            if status == STATUS_SUCCESS or category == "Warning":
                continue
            if status == STATUS_DUPLICATE_SOP_INSTANCE:
                continue  # PS3.7 C.4.2.1 <https://dicom.nema.org/medical/dicom/current/output/html/part07.html#sect_C.4.2.1>: the peer already has this very SOP Instance
            meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, (category, "unknown status"))[1]
            return Failure(
                f"C-STORE of {name} answered 0x{status:04X} ({meaning})",
                permanent=status_is_permanent(status),
            )
        return None
