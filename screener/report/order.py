"""What a scored image's header says about its order and its patient, for the channels that
speak to a RIS or an EHR (HL7 v2, FHIR): the accession number and order numbers a RIS matches
a result on, the study, and the patient's identifier and name.

Every value comes from outside and is checked here: text only, without control characters,
within its VR's length (PS3.5 6.2 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_6.2>). Errors name the attribute, never its value (PHI).
"""

from __future__ import annotations

from dataclasses import dataclass

import pydicom

from screener.report.header import ReportError

#: Longest value of each VR read here (PS3.5 6.2 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_6.2>): SH 16, LO 64, UI 64, PN 64 per group.
_MAX = {"SH": 16, "LO": 64, "UI": 64, "PN": 64 * 3 + 2, "DA": 8, "TM": 16}


@dataclass(frozen=True)
class Order:
    """The order and patient of one image, each value checked ('' when absent)."""

    accession_number: str
    placer_order_number: str
    filler_order_number: str
    requested_procedure_id: str
    study_instance_uid: str
    study_date: str
    study_time: str
    patient_id: str
    issuer_of_patient_id: str
    #: the alphabetic group of Patient's Name, its five components (family, given, middle,
    #: prefix, suffix) as DICOM PN orders them (PS3.5 6.2.1 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_6.2.1>)
    patient_name: tuple[str, ...]

    @property
    def study_datetime(self) -> str:
        """YYYYMMDD[HHMMSS] of the study, '' when the header has no valid date."""
        if len(self.study_date) != 8 or not self.study_date.isdigit():
            return ""
        time = self.study_time.split(".")[0]
        return self.study_date + (time if len(time) in (2, 4, 6) and time.isdigit() else "")


def _text(ds: pydicom.Dataset, keyword: str, vr: str) -> str:
    """One attribute's value as checked text ('' when absent or empty)."""
    try:
        value = ds.get(keyword)
    except Exception as exc:  # an undecodable value: name the attribute, never the value
        raise ReportError(f"source {keyword} cannot be read ({type(exc).__name__})") from exc
    if value is None or value == "":
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        value = value[0] if len(value) else ""
    text = str(value).strip()
    if len(text) > _MAX[vr]:
        raise ReportError(f"source {keyword} is longer than its VR {vr} allows ({_MAX[vr]})")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ReportError(f"source {keyword} holds control characters")
    return text


def order_of(header: pydicom.Dataset) -> Order:
    """The order and patient of ``header``; ReportError when a value breaks its VR's rules."""
    request = header.get("RequestAttributesSequence")
    first = request[0] if request else pydicom.Dataset()
    name = _text(header, "PatientName", "PN").split("=")[0]
    return Order(
        accession_number=_text(header, "AccessionNumber", "SH")
        or _text(first, "AccessionNumber", "SH"),
        placer_order_number=_text(header, "PlacerOrderNumberImagingServiceRequest", "LO"),
        filler_order_number=_text(header, "FillerOrderNumberImagingServiceRequest", "LO"),
        requested_procedure_id=_text(first, "RequestedProcedureID", "SH"),
        study_instance_uid=_text(header, "StudyInstanceUID", "UI"),
        study_date=_text(header, "StudyDate", "DA"),
        study_time=_text(header, "StudyTime", "TM"),
        patient_id=_text(header, "PatientID", "LO"),
        issuer_of_patient_id=_text(header, "IssuerOfPatientID", "LO"),
        patient_name=tuple(part.strip() for part in name.split("^")[:5]),
    )
