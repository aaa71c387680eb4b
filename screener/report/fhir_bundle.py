"""One result as a FHIR R4 transaction Bundle: a DiagnosticReport, its Observation and the
algorithm as a Device, validated with fhir.resources before it leaves.

The mapping follows the HL7 "DICOM SR to FHIR Resource Mapping" guide's reading of TID 1500 /
TID 4019 (https://build.fhir.org/ig/HL7/dicom-sr/):

* Device: the algorithm, identified by the model bundle's UID (``urn:dicom:uid`` system,
  ``urn:oid:`` value; a retrained bundle is a new Device), with its name (``model-name``) and
  version; created only if no Device with that identifier exists (``ifNoneExist``).
* Observation: SCT 233604007 Pneumonia, valued Present / Absent / Indeterminate, the certainty
  (DCM 111012, UCUM ``%``) and the operating point (DCM 111002 Algorithm Parameters,
  ``threshold=...``) as components, ``device`` the Device, ``derivedFrom`` the study.
* DiagnosticReport: RAD, LOINC 18748-4 Diagnostic imaging study, the Observation as its
  result and its conclusion code, ``imagingStudy`` the study by its Study Instance UID
  (a logical reference: the server need not hold the ImagingStudy), ``basedOn`` the order by
  its accession number (identifier type ACSN), ``subject`` the patient by identifier only when
  ``fhir.patient_id_system`` is set.

The DiagnosticReport and the Observation carry identifiers derived from the row's object UID
and are created with ``ifNoneExist``: a retry after a lost answer finds them instead of
duplicating them.

fhir.resources 8 models FHIR R5 and R4B (4.3.0), not R4 (4.0.1) itself: the Bundle is
validated with its ``R4B`` classes, and uses only elements that R4 defines the same way.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any
from urllib.parse import urlencode

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from screener.config import FhirSettings
from screener.db.engine import as_utc
from screener.report.delivery import Delivery
from screener.report.header import MANUFACTURER, ReportError, derived_uid
from screener.report.order import Order
from screener.report.sr import ABSENT, INDETERMINATE, PNEUMONIA, PRESENT, ScreeningFinding

DICOM_UID = "urn:dicom:uid"
SCT = "http://snomed.info/sct"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
SCHEMES = {"SCT": SCT, "DCM": DCM}
#: the namespace of the bundle entries' urn:uuid full URLs (derived from the row's UID)
_NAMESPACE = uuid.UUID("5b0c3a52-8f3e-4a8e-9d1e-0c1f6f2a7e11")


def _coding(concept: Any) -> dict[str, Any]:
    """A FHIR Coding of a highdicom CodedConcept."""
    return {
        "system": SCHEMES[concept.scheme_designator],
        "code": concept.value,
        "display": concept.meaning,
    }


def _instant(when: dt.datetime) -> str:
    return as_utc(when).isoformat(timespec="seconds").replace("+00:00", "Z")


def _study_date(order: Order) -> str | None:
    """The study's date as a FHIR date (a time without a zone is not a FHIR dateTime)."""
    d = order.study_datetime[:8]
    return f"{d[:4]}-{d[4:6]}-{d[6:]}" if d else None


def _by_identifier(kind: str, system: str, value: str) -> dict[str, Any]:
    return {"type": kind, "identifier": {"system": system, "value": value}}


def _entry(full_url: str, resource: dict[str, Any], identifier: str) -> dict[str, Any]:
    """A conditional create: POST unless a resource of that type has ``identifier``."""
    kind = resource["resourceType"]
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {
            "method": "POST",
            "url": kind,
            "ifNoneExist": urlencode({"identifier": f"{DICOM_UID}|{identifier}"}),
        },
    }


def build_bundle(
    delivery: Delivery, order: Order, finding: ScreeningFinding, settings: FhirSettings
) -> Bundle:
    """The validated transaction Bundle of one delivery (the same on every retry)."""
    if not order.study_instance_uid:
        raise ReportError("the image has no Study Instance UID: the report cannot name its study")
    result = delivery.result
    issued = _instant(result.scored_at)
    report_id = f"urn:oid:{delivery.object_uid}"
    observation_id = f"urn:oid:{derived_uid('fhir-observation', delivery.object_uid)}"
    device_id = f"urn:oid:{finding.model_uid}"
    urls = {
        role: f"urn:uuid:{uuid.uuid5(_NAMESPACE, role + delivery.object_uid)}"
        for role in ("report", "observation", "device")
    }
    study = _by_identifier("ImagingStudy", DICOM_UID, f"urn:oid:{order.study_instance_uid}")
    subject = (
        {"subject": _by_identifier("Patient", settings.patient_id_system, order.patient_id)}
        if settings.patient_id_system and order.patient_id
        else {}
    )
    if not finding.assessed:
        value, interpretation = INDETERMINATE, None
    elif finding.positive:
        value, interpretation = PRESENT, "A"
    else:
        value, interpretation = ABSENT, "N"
    device = {
        "resourceType": "Device",
        "identifier": [{"system": DICOM_UID, "value": device_id}],
        "manufacturer": MANUFACTURER,
        "deviceName": [{"name": finding.model_name, "type": "model-name"}],
        "version": [{"value": finding.model_version}],
    }
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": DICOM_UID, "value": observation_id}],
        "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "imaging"}]}],
        "code": {"coding": [_coding(PNEUMONIA)]},
        **subject,
        "effectiveDateTime": issued,
        "issued": issued,
        "valueCodeableConcept": {"coding": [_coding(value)]},
        "device": {"reference": urls["device"]},
        "derivedFrom": [study],
        "component": [
            {
                "code": {
                    "coding": [{"system": DCM, "code": "111012", "display": "Certainty of Finding"}]
                },
                "valueQuantity": {
                    "value": round(finding.probability * 100, 1),
                    "unit": "%",
                    "system": UCUM,
                    "code": "%",
                },
            },
            {
                "code": {
                    "coding": [{"system": DCM, "code": "111002", "display": "Algorithm Parameters"}]
                },
                "valueString": f"threshold={finding.threshold:.4f}",
            },
        ],
    }
    if interpretation:
        observation["interpretation"] = [
            {"coding": [{"system": INTERPRETATION, "code": interpretation}]}
        ]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": DICOM_UID, "value": report_id}],
        "status": "final",
        "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {
            "coding": [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}],
            "text": "Chest X-ray pneumonia screening (AI)",
        },
        **subject,
        "issued": issued,
        "imagingStudy": [study],
        "result": [{"reference": urls["observation"]}],
        "conclusionCode": [{"coding": [_coding(value)]}],
        "conclusion": f"{PNEUMONIA.meaning}: {value.meaning} (AI, certainty "
        f"{finding.probability * 100:.1f} %, threshold {finding.threshold * 100:.1f} %)",
    }
    effective = _study_date(order)
    if effective:
        report["effectiveDateTime"] = effective
    if order.accession_number:
        report["basedOn"] = [
            {
                "type": "ServiceRequest",
                "identifier": {
                    "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                    "value": order.accession_number,
                },
            }
        ]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            _entry(urls["device"], device, device_id),
            _entry(urls["observation"], observation, observation_id),
            _entry(urls["report"], report, report_id),
        ],
    }
    return validated(bundle)


def validated(bundle: dict[str, Any]) -> Bundle:
    """``bundle`` as a fhir.resources R4B Bundle; ReportError naming each invalid element's
    path and rule (never its value: it may be PHI)."""
    try:
        return Bundle.model_validate(bundle)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['type']}"
            for error in exc.errors()[:5]
        )
        raise ReportError(f"the FHIR Bundle is not valid R4: {problems}") from None
