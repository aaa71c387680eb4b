"""The second-read flag sent back to PACS: a TID 1500 Measurement Report, built by highdicom.

One SR per screened image (PS3.3 A.35.13 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_A.35.13> Comprehensive 3D SR IOD, or A.35.3 Comprehensive
SR IOD for a PACS that refuses 3D SR; content per PS3.3 C.17.3 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.17.3> SR Document Content), in the
source image's study, in a series of its own:

* PS3.16 TID 1500 <https://dicom.nema.org/medical/dicom/current/output/html/part16.html#sect_TID_1500> Measurement Report, procedure "Plain chest X-ray", with
  TID 1001 Observation Context: the device observer is the model (Device Observer UID =
  the model's UID), and TID 1600 Image Library when the header has its descriptors;
* one TID 1501 Measurement Group referencing the source image, with the finding
  "Pneumonia" (SCT 233604007), TID 4019 Algorithm Identification (name, version, the
  threshold), the certainty (DCM 111012 Certainty of Finding, in UCUM ``%``), the
  qualitative evaluation Pneumonia = Present (SCT 52101004) / Absent (SCT 2667000) and,
  when positive, Recommendation (DCM 121075) = second read (a private, declared code);
  for an image the domain guard placed outside the training films: no certainty, Pneumonia =
  Indeterminate (SCT 82334004) and Algorithm assessment = not assessed (private code);
* IHE AIR (<https://wiki.ihe.net/index.php/AI_Results>): the algorithm is also identified in the
  Contributing Equipment Sequence, Purpose of Reference (Newcode1, 99IHE, "Processing
  Algorithm"), with Manufacturer, Manufacturer's Model Name, Software Versions and Device UID =
  the model bundle's UID (a retrained bundle has a new one), besides TID 4019 and the Device
  Observer.

Everything is derived from the inputs, so a retry that passes the same SOP Instance UID and
content time rebuilds the same document, element for element.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, generate_uid
from pydicom.valuerep import DA, DT, TM

from screener.report.capture import build_heatmap_capture
from screener.report.header import (
    IHE_SCHEME,
    MANUFACTURER,
    ReportError,
    algorithm_equipment,
    apply_character_set,
    character_set,
    derived_uid,
    evidence_header,
)

__all__ = [
    "SR_SOP_CLASSES",
    "ReportError",
    "ScreeningFinding",
    "build_heatmap_capture",
    "build_sr",
    "coding_schemes",
    "sr_series_uid",
]

#: sr_kind -> SOP Class UID (PS3.4 B.5 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.5>: Comprehensive 3D SR .88.34, Comprehensive SR .88.33)
SR_SOP_CLASSES = {
    "3d": "1.2.840.10008.5.1.4.1.1.88.34",
    "comprehensive": "1.2.840.10008.5.1.4.1.1.88.33",
}

PNEUMONIA = hd.sr.CodedConcept("233604007", "SCT", "Pneumonia")
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
ABSENT = hd.sr.CodedConcept("2667000", "SCT", "Absent")
PLAIN_CHEST_XRAY = hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray")
CERTAINTY_OF_FINDING = codes.DCM.CertaintyOfFinding  # DCM 111012
PERCENT = codes.UCUM.Percent
RECOMMENDATION = codes.DCM.Recommendation  # DCM 121075

#: PS3.3 8.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_8.2>: a coding scheme designator starting with "99" is private; it is declared in
#: the Coding Scheme Identification Sequence (PS3.3 C.12.1.1.4 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.12.1.1.4>) of every SR that uses it.
PRIVATE_SCHEME = "99SCREENER"
SECOND_READ = hd.sr.CodedConcept("SECONDREAD", PRIVATE_SCHEME, "Second read recommended")
#: A film the domain guard found unlike the model's training films: not assessed.
INDETERMINATE = hd.sr.CodedConcept("82334004", "SCT", "Indeterminate")
ASSESSMENT = hd.sr.CodedConcept("ASSESSMENT", PRIVATE_SCHEME, "Algorithm assessment")
NOT_ASSESSED = hd.sr.CodedConcept(
    "OUTSIDEDOMAIN", PRIVATE_SCHEME, "Not assessed: image outside the model's domain"
)

#: TID 1501 projection-radiography modalities whose TID 1603 descriptors highdicom writes.
_PROJECTION = ("CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA")


@dataclass(frozen=True)
class ScreeningFinding:
    """What the model concluded about one image (one frame)."""

    probability: float  # calibrated P(pneumonia) in [0,1]
    positive: bool  # probability >= threshold
    threshold: float
    model_name: str
    model_version: str
    model_uid: str  # a valid DICOM UID
    frame_number: int = 1
    #: False: the domain guard found the image unlike the training films; the SR says
    #: "not assessed" (Pneumonia = Indeterminate), gives no certainty and no flag.
    assessed: bool = True

    def __post_init__(self) -> None:
        for name in ("probability", "threshold"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ReportError(f"{name} = {value!r} is invalid: must be in [0, 1]")
        if not UID(self.model_uid).is_valid:
            raise ReportError(
                f"model_uid = {self.model_uid!r} is not a valid DICOM UID (PS3.5 9.1)"
            )
        if self.frame_number < 1:
            raise ReportError(
                f"frame_number = {self.frame_number!r} is invalid: frames count from 1"
            )
        if not self.model_name.strip() or not self.model_version.strip():
            raise ReportError("model_name and model_version must not be empty (TID 4019)")
        if self.positive and not self.assessed:
            raise ReportError("a finding that was not assessed cannot be positive")


def coding_schemes() -> list[hd.coding_schemes.CodingSchemeIdentificationItem]:
    """The private coding schemes our SRs use, declared (PS3.3 C.12.1.1.4 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.12.1.1.4>)."""
    return [
        hd.coding_schemes.CodingSchemeIdentificationItem(
            PRIVATE_SCHEME, name="screener codes", responsible_organization="screener"
        ),
        hd.coding_schemes.CodingSchemeIdentificationItem(
            IHE_SCHEME, name="IHE codes", responsible_organization="IHE International"
        ),
    ]


def build_sr(
    source: Dataset,
    finding: ScreeningFinding,
    *,
    kind: str = "3d",
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    series_number: int = 9001,
    instance_number: int = 1,
    content_datetime: dt.datetime | None = None,
) -> Dataset:
    """The SR for ``finding`` about ``source`` (a header read with ``stop_before_pixels`` will do).

    ``kind`` is ``"3d"`` (Comprehensive 3D SR) or ``"comprehensive"`` (Comprehensive SR).
    Without ``series_instance_uid`` the series is derived from the study, the model and the
    kind, so all of one model's SRs in a study share a series.
    """
    if kind not in SR_SOP_CLASSES:
        raise ReportError(
            f"sr_kind = {kind!r} is invalid: allowed values are {', '.join(SR_SOP_CLASSES)}"
        )
    header = evidence_header(source)
    when = content_datetime or dt.datetime.now(dt.UTC)
    sop_uid = sop_instance_uid or str(generate_uid())
    series_uid = series_instance_uid or sr_series_uid(
        str(header.StudyInstanceUID), finding.model_uid, kind
    )
    report = _measurement_report(header, finding, sop_uid)
    # PS3.3 A.35.13 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_A.35.13> Comprehensive 3D SR (.88.34) / A.35.3 Comprehensive SR (.88.33)
    sr_class = hd.sr.Comprehensive3DSR if kind == "3d" else hd.sr.ComprehensiveSR
    sr = sr_class(
        evidence=[header],
        content=report,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        # IHE AIR: the algorithm as Contributing Equipment, its Device UID the bundle's UID
        contributing_equipment=[
            algorithm_equipment(finding.model_name, finding.model_version, finding.model_uid, when)
        ],
        series_description="screener pneumonia second-read flag",
        content_date=when.date(),
        content_time=when.time().replace(tzinfo=None),
        coding_schemes=coding_schemes(),
        # highdicom refuses valid terms such as ['', 'ISO 2022 IR 149']: set below instead
        specific_character_set=None,
    )
    # PS3.3 C.12.1.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.12.1.1.2>: the patient's and study's text is the source's, in its character set
    apply_character_set(sr, character_set(header))
    # A rebuild is the same instance: its creation and contribution times are the content
    # time, not the moment of the retry (highdicom stamps "now").
    stamp = when.astimezone(dt.UTC).replace(tzinfo=None)
    sr.InstanceCreationDate = DA(stamp.date())
    sr.InstanceCreationTime = TM(stamp.time())
    for equipment in sr.ContributingEquipmentSequence:
        if "ContributionDateTime" in equipment:
            equipment.ContributionDateTime = DT(stamp)
    return sr


def sr_series_uid(study_instance_uid: str, model_uid: str, kind: str) -> str:
    """The series of one model's AI result SRs of one kind in a study (derived: the same on
    every rebuild, so an assessment can name the series of the SR it assesses)."""
    return derived_uid("sr-series", study_instance_uid, model_uid, kind)


def _measurement_report(
    header: Dataset, finding: ScreeningFinding, sop_uid: str
) -> hd.sr.MeasurementReport:
    """PS3.16 TID 1500 <https://dicom.nema.org/medical/dicom/current/output/html/part16.html#sect_TID_1500> Measurement Report with one TID 1501 group for the finding."""
    # TID 1001 Observation Context; TID 1004 Device Observer: the model is the observer
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=finding.model_uid,
            name=finding.model_name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=finding.model_version[:64],
        ),
    )
    # TID 4019 Algorithm Identification
    algorithm = hd.sr.AlgorithmIdentification(
        name=finding.model_name,
        version=finding.model_version,
        parameters=[f"threshold={finding.threshold:.4f}"],
        manufacturer=MANUFACTURER,
    )
    measurements = [
        hd.sr.Measurement(  # TID 300, DCM 111012 Certainty of Finding in percent
            name=CERTAINTY_OF_FINDING,
            value=round(finding.probability * 100.0, 2),
            unit=PERCENT,
        )
    ]
    if not finding.assessed:  # no number: the model does not know this kind of image
        measurements = []
        evaluations = [
            hd.sr.QualitativeEvaluation(PNEUMONIA, INDETERMINATE),
            hd.sr.QualitativeEvaluation(ASSESSMENT, NOT_ASSESSED),
        ]
    else:
        value = PRESENT if finding.positive else ABSENT
        evaluations = [hd.sr.QualitativeEvaluation(PNEUMONIA, value)]
    if finding.positive:
        evaluations.append(hd.sr.QualitativeEvaluation(RECOMMENDATION, SECOND_READ))
    frames = [finding.frame_number] if int(header.get("NumberOfFrames", 1) or 1) > 1 else None
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid("tracking", sop_uid), identifier="pneumonia screening"
        ),
        finding_type=PNEUMONIA,
        algorithm_id=algorithm,
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=str(header.SOPClassUID),
                referenced_sop_instance_uid=str(header.SOPInstanceUID),
                referenced_frame_numbers=frames,
            )
        ],
    )
    library = [header] if _has_library_descriptors(header) else None
    return hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PLAIN_CHEST_XRAY,
        imaging_measurements=[group],
        referenced_images=library,
    )


def _has_library_descriptors(header: Dataset) -> bool:
    """Whether highdicom can write the TID 1602/1603 Image Library Entry Descriptors.

    A projection radiograph needs a two-valued Patient Orientation and Imager Pixel
    Spacing; many real headers lack them. Without them the image is still referenced by
    the measurement group and the evidence sequence, just not listed in an Image Library.
    """
    if not header.get("Rows") or not header.get("Columns"):
        return False
    if str(header.get("Modality", "")) not in _PROJECTION:
        return False
    orientation = header.get("PatientOrientation") or []
    spacing = header.get("ImagerPixelSpacing") or []
    return len(orientation) == 2 and len(spacing) == 2
