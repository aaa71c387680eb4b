"""The one mapping from an accept-path refusal to the C-STORE status the listener and the STOW-RS
server answer (PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3>) and the reason recorded."""

from __future__ import annotations

import pytest

from screener.errors import IngestError
from screener.ingest.accept import (
    DatasetTooLarge,
    DoesNotMatchSOPClass,
    NotDicom,
    NotUnderstood,
    OutOfResources,
    UnsupportedSOPClass,
)
from screener.ingest.refusal import refusal_of


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (OutOfResources("spool below its floor"), (0xA700, "out_of_resources")),
        (DatasetTooLarge("over the limit"), (0xA700, "dataset_too_large")),
        (UnsupportedSOPClass("sop_class", "a CT"), (0x0122, "sop_class")),
        (DoesNotMatchSOPClass("no_pixel_data", "no pixels"), (0xA900, "no_pixel_data")),
        (NotUnderstood("truncated", "cut off"), (0xC000, "truncated")),
        (NotDicom("not_dicom", "text"), (0xC000, "not_dicom")),
        (IngestError("anything else"), (0xC000, "ingest_error")),
    ],
)
def test_each_refusal_answers_its_status_and_reason(
    exc: IngestError, expected: tuple[int, str]
) -> None:
    """Out of Resources for a full spool or an oversized data set, SOP Class not supported before
    its base Data Set does not match, Cannot understand for the unreadable and the rest."""
    assert refusal_of(exc) == expected
