"""What the SR and the heatmap capture take from the source image's header.

Strict on what we write, tolerant on what we read: a source image may lack Type 2
attributes (Patient's Sex, Study ID, Accession Number, ...) or carry them empty. highdicom
reads them as attributes of its ``evidence``, so :func:`evidence_header` hands it a copy of
the header in which every attribute highdicom reads is present (empty when the source has
none, which is what Type 2 allows, PS3.5 7.4). The copy never carries Pixel Data.
"""

from __future__ import annotations

import copy
import datetime as dt
import warnings

import highdicom as hd
from pydicom import DataElement, Dataset, config
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import validate_value

from screener import __version__
from screener.errors import ScreenerError

MANUFACTURER = "screener"

# highdicom warns about single-component person names with the name in the message; a
# warning goes to stderr, and a patient's name must never reach a log (PS3.15 E.1).
warnings.filterwarnings(
    "ignore", message=".*unlikely to represent the intended person name", module=r"highdicom\."
)

#: Attributes highdicom's SR/SC constructors read from the evidence (PS3.3 C.7.1.1, C.7.2.1).
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


class ReportError(ScreenerError):
    """A report (SR or capture) cannot be built from the given source or finding."""


def evidence_header(source: Dataset) -> Dataset:
    """A pixel-free copy of ``source`` with every attribute highdicom reads present."""
    missing = [k for k in _REQUIRED if not str(source.get(k, "")).strip()]
    if missing:
        raise ReportError(
            f"source image lacks {', '.join(missing)}; an SR must reference the image's UIDs"
        )
    header = Dataset()
    for element in source:
        if element.tag.group == 0x7FE0:  # Pixel Data and its siblings stay behind
            continue
        if element.keyword in _REQUIRED:
            pass  # referenced exactly as received, even if the sender broke the UI rules
        elif element.VR != "SQ" and not _conformant(element):
            continue  # a malformed value (e.g. Patient's Age "38") is not copied into our objects
        header.add(copy.deepcopy(element))
    for keyword in _TYPE2_COPIED:
        if keyword not in header or header[keyword].value is None:
            setattr(header, keyword, "")
    if str(header.get("PatientSex", "")) not in ("M", "F", "O", ""):
        header.PatientSex = ""  # PS3.3 C.7.1.1: enumerated values M, F, O
    return header


def _conformant(element: DataElement) -> bool:
    """Whether every value of ``element`` is valid for its VR (PS3.5 6.2)."""
    values = element.value if isinstance(element.value, MultiValue) else [element.value]
    try:
        for value in values:
            if isinstance(value, str) and value:  # parsed numbers were checked by pydicom
                validate_value(str(element.VR), value, config.RAISE)
    except ValueError:
        return False
    return True


def processing_equipment(model_name: str, content_time: dt.datetime) -> hd.ContributingEquipment:
    """Contributing Equipment naming screener (PS3.3 C.12.1.1.5, CID 7005 Processing Equipment)."""
    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model_name[:64],
        software_versions=__version__,
        contribution_datetime=content_time,
        contribution_description="pneumonia screening for a second read",
    )


def derived_uid(*parts: str) -> str:
    """A UID that is the same every time for the same parts (a rebuild makes the same SR)."""
    return str(generate_uid(entropy_srcs=["screener", *parts]))
