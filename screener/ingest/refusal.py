"""What the accept path's refusal of an instance answers: a C-STORE status and the recorded
reason, the one mapping that the DICOM listener (C-STORE SCP) and the STOW-RS origin server
(``screener.web.dicomweb``, whose Failure Reasons are these statuses) both answer with.

PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3> (Table B.2-1) gives the Storage statuses.
"""

from __future__ import annotations

from screener.errors import IngestError
from screener.ingest.accept import DoesNotMatchSOPClass, NotUnderstood, UnsupportedSOPClass
from screener.ingest.inflate import DatasetTooLarge
from screener.ingest.spool import OutOfResources

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3>: Refused: Out of Resources
STATUS_DATASET_MISMATCH = 0xA900  # PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3>: Error: Data Set does not match SOP Class
STATUS_CANNOT_UNDERSTAND = 0xC000  # PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3>: Error: Cannot understand
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.4.2.1.1 <https://dicom.nema.org/medical/dicom/current/output/html/part07.html#sect_C.4.2.1.1>: Refused: SOP Class not supported


def refusal_of(exc: IngestError) -> tuple[int, str]:
    """The status to answer and the reason to record for a refusal of the accept path: the
    spool disk full or a data set over ``listener.max_dataset_mb`` are Out of Resources (the
    sender may try again), an SOP class we do not screen is not supported, an image without
    its pixels does not match its SOP class, and anything else unreadable is not understood."""
    if isinstance(exc, OutOfResources):
        return STATUS_OUT_OF_RESOURCES, "out_of_resources"
    if isinstance(exc, DatasetTooLarge):
        return STATUS_OUT_OF_RESOURCES, exc.reason
    if isinstance(exc, UnsupportedSOPClass):  # before its base class, DoesNotMatchSOPClass
        return STATUS_SOP_CLASS_NOT_SUPPORTED, exc.reason
    if isinstance(exc, DoesNotMatchSOPClass):
        return STATUS_DATASET_MISMATCH, exc.reason
    if isinstance(exc, NotUnderstood):
        return STATUS_CANNOT_UNDERSTAND, exc.reason
    return STATUS_CANNOT_UNDERSTAND, "ingest_error"
