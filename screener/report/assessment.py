"""A radiologist's read of the AI result, sent back as an assessment SR (IHE AIRAI, AI Result
Assessment <https://www.ihe.net/resources/technical_frameworks/#radiology>), built by highdicom.

One SR per read and DICOM destination, in the AI result SR's study, in a series of its own, of
the same SOP class as the AI result SR (``export.sr_kind``; PS3.3 A.35.13 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_A.35.13>):

* PS3.16 TID 1500 <https://dicom.nema.org/medical/dicom/current/output/html/part16.html#sect_TID_1500> Measurement Report, procedure "Plain chest X-ray", whose TID 1001
  Observation Context names the reader as a TID 1003 Person Observer (the reader's login
  as Person Observer Name): the assessment is the person's, not the algorithm's;
* one TID 1501 Measurement Group referencing the source image, finding "Pneumonia"
  (SCT 233604007) -- the finding assessed -- with two qualitative evaluations: *AI result
  assessment* = Accepted or Rejected, and the reader's own finding, Pneumonia = Present /
  Absent; and a COMPOSITE content item, *Assessed AI result*, that references the AI result
  SR by SOP Class and SOP Instance UID. highdicom lists that SR (and the image) in the Current
  Requested Procedure Evidence Sequence (PS3.3 C.17.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.17.2.3>).

A read that agrees with the model's flag accepts its finding; one that disagrees rejects it and
gives the reader's finding. A read that could not tell is neither: AIRAI records a decision on
the AI result, so no assessment is planned for it (:mod:`screener.report.readback`).

The codes for the assessment itself (the concept, Accepted / Rejected, the reference) are
screener's private codes (99SCREENER, declared in the SR): the references at hand did not give
the codes IHE assigned for AIRAI, and the DICOM code tables
(PS3.16 Annex D <https://dicom.nema.org/medical/dicom/current/output/html/part16.html#chapter_D>) have none for it. Everything is derived from the inputs, so a
retry that passes the same SOP Instance UID rebuilds the same document.
"""

from __future__ import annotations

import copy
import datetime as dt
import unicodedata
from dataclasses import dataclass

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.valuerep import DA, DT, TM

from screener.report.header import (
    MANUFACTURER,
    ReportError,
    apply_character_set,
    character_set,
    derived_uid,
    evidence_header,
)
from screener.report.sr import (
    ABSENT,
    PLAIN_CHEST_XRAY,
    PNEUMONIA,
    PRESENT,
    PRIVATE_SCHEME,
    SR_SOP_CLASSES,
    coding_schemes,
    sr_series_uid,
)

AI_RESULT_ASSESSMENT = hd.sr.CodedConcept("AIASSESSMENT", PRIVATE_SCHEME, "AI result assessment")
ACCEPTED = hd.sr.CodedConcept("ACCEPTED", PRIVATE_SCHEME, "Accepted")
REJECTED = hd.sr.CodedConcept("REJECTED", PRIVATE_SCHEME, "Rejected")
ASSESSED_RESULT = hd.sr.CodedConcept("ASSESSEDRESULT", PRIVATE_SCHEME, "Assessed AI result")

#: The series all assessment SRs of one model in a study share (after the AI SRs' 9001).
ASSESSMENT_SERIES_NUMBER = 9002
#: The Person Observer Name of a read recorded without a reader (reads before migration 0006).
UNKNOWN_READER = "unknown reader"


@dataclass(frozen=True)
class AssessedRead:
    """A read of one AI result, as its assessment SR says it."""

    #: the reader's login (web user or ``screener review --reader``); None: not recorded
    reader: str | None
    #: what the reader found: pneumonia (True) or not (False)
    reader_positive: bool
    #: the model's flag the reader read
    model_positive: bool
    read_at: dt.datetime
    model_uid: str
    #: the AI result SR assessed: its SOP Instance UID (its class is ``SR_SOP_CLASSES[kind]``)
    assessed_sop_instance_uid: str
    #: the frame of the source image the AI result is about
    frame_number: int = 1

    @property
    def accepted(self) -> bool:
        return self.reader_positive == self.model_positive


def build_assessment_sr(
    source: Dataset,
    read: AssessedRead,
    *,
    kind: str = "3d",
    sop_instance_uid: str,
    instance_number: int = 1,
) -> Dataset:
    """The assessment SR of ``read`` about the AI result SR built from ``source``'s header."""
    if kind not in SR_SOP_CLASSES:
        raise ReportError(
            f"sr_kind = {kind!r} is invalid: allowed values are {', '.join(SR_SOP_CLASSES)}"
        )
    header = evidence_header(source)
    study_uid = str(header.StudyInstanceUID)
    assessed = _assessed_sr(header, read, kind)
    report = _assessment_report(header, read, assessed, sop_instance_uid)
    sr_class = hd.sr.Comprehensive3DSR if kind == "3d" else hd.sr.ComprehensiveSR
    when = read.read_at.astimezone(dt.UTC)
    sr = sr_class(
        evidence=[header, assessed],
        content=report,
        series_instance_uid=derived_uid("assessment-series", study_uid, read.model_uid, kind),
        series_number=ASSESSMENT_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description="screener AI result assessment (radiologist's read)",
        content_date=when.date(),
        content_time=when.time().replace(tzinfo=None),
        coding_schemes=coding_schemes(),
        specific_character_set=None,  # set below, as in build_sr
    )
    charset = character_set(header)
    if charset is None and not _name_of(read).isascii():
        charset = "ISO_IR 192"  # UTF-8 holds the reader's name; ASCII patient text is unchanged
    apply_character_set(sr, charset)
    # a rebuild is the same instance: its times are the read's, not the moment of the retry
    stamp = when.replace(tzinfo=None)
    sr.InstanceCreationDate = DA(stamp.date())
    sr.InstanceCreationTime = TM(stamp.time())
    for equipment in sr.get("ContributingEquipmentSequence", []):  # highdicom's own item
        if "ContributionDateTime" in equipment:
            equipment.ContributionDateTime = DT(stamp)
    return sr


def _assessed_sr(header: Dataset, read: AssessedRead, kind: str) -> Dataset:
    """The AI result SR's identity, as evidence: the source's patient and study, the SR's
    series (derived as :func:`screener.report.sr.build_sr` derives it) and instance."""
    assessed = copy.deepcopy(header)
    assessed.SOPClassUID = SR_SOP_CLASSES[kind]
    assessed.SOPInstanceUID = read.assessed_sop_instance_uid
    assessed.SeriesInstanceUID = sr_series_uid(str(header.StudyInstanceUID), read.model_uid, kind)
    return assessed


def _name_of(read: AssessedRead) -> str:
    """The reader as a Person Observer Name: the login, without the PN delimiters (``^ = \\``)
    or control characters, at most 64 characters (PS3.5 6.2 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_6.2>)."""
    login = "".join(
        c
        for c in (read.reader or "")
        if c not in "^=\\" and not unicodedata.category(c).startswith("C")
    ).strip()
    return login[:64] or UNKNOWN_READER


def _assessment_report(
    header: Dataset, read: AssessedRead, assessed: Dataset, sop_uid: str
) -> hd.sr.MeasurementReport:
    """PS3.16 TID 1500 <https://dicom.nema.org/medical/dicom/current/output/html/part16.html#sect_TID_1500> with the reader as observer and one TID 1501 group: the assessment."""
    observer = hd.sr.ObserverContext(  # TID 1003 Person Observer Identifying Attributes
        observer_type=codes.cid270.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=_name_of(read), login_name=(read.reader or "")[:64] or None
        ),
    )
    frames = [read.frame_number] if int(header.get("NumberOfFrames", 1) or 1) > 1 else None
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid("assessment-tracking", sop_uid), identifier="AI result assessment"
        ),
        finding_type=PNEUMONIA,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                AI_RESULT_ASSESSMENT, ACCEPTED if read.accepted else REJECTED
            ),
            # the reader's own finding (when rejecting, what the image shows instead)
            hd.sr.QualitativeEvaluation(PNEUMONIA, PRESENT if read.reader_positive else ABSENT),
        ],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=str(header.SOPClassUID),
                referenced_sop_instance_uid=str(header.SOPInstanceUID),
                referenced_frame_numbers=frames,
            )
        ],
    )
    # the AI result SR assessed, by reference (TID 1501 is extensible)
    group[0].ContentSequence.append(
        hd.sr.CompositeContentItem(
            name=ASSESSED_RESULT,
            referenced_sop_class_uid=str(assessed.SOPClassUID),
            referenced_sop_instance_uid=str(assessed.SOPInstanceUID),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    return hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer),
        procedure_reported=PLAIN_CHEST_XRAY,
        imaging_measurements=[group],
    )
