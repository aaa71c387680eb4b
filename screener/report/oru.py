"""One result as an HL7 v2.5.1 ORU^R01 (unsolicited observation) for a RIS, built with hl7apy.

The message (HL7 v2.5.1 chapter 7, ORU^R01 / ORU_R01):

* MSH: the ``[hl7]`` sending and receiving application and facility; MSH-7 the time the
  result was scored and MSH-10 (Message Control ID) derived from the row's object UID, so a
  retry resends the very same message and a receiver can drop the duplicate; MSH-18
  ``UNICODE UTF-8``.
* PID: only what a RIS needs to match the patient: PID-3 (Patient ID, with Issuer of Patient
  ID as the assigning authority) and PID-5 (Patient's Name, required in v2.5.1).
* ORC/OBR: the order the image was taken for: OBR-2 placer and OBR-3 filler order number
  (the Accession Number when the header has no filler order number), OBR-18 the Accession
  Number and OBR-19 the Requested Procedure ID as IHE Radiology places them; OBR-25 ``F``.
* TQ1 (and OBR-27's priority component for v2.3-era receivers), only when the site's
  ``priority_update`` rule raises this result's order: priority ``S`` (STAT). No priority is
  sent otherwise, so the order's existing one is never lowered.
* OBX: the coded finding (SCT 233604007 Pneumonia: Present / Absent / Indeterminate, CWE),
  the certainty as NM in UCUM ``%`` (DCM 111012, as in the SR), the algorithm's name,
  version and bundle UID (DCM 111001, 111003, 121012) and its operating point (DCM 111002
  Algorithm Parameters, ``threshold=...``, as in the SR's TID 4019).

Every value from the DICOM header is escaped (HL7 v2.5.1 2.7, ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``);
hl7apy checks the structure (STRICT validation) before the message leaves.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import pydicom
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from screener.config import Hl7Settings
from screener.db.engine import as_utc
from screener.report.delivery import Delivery
from screener.report.header import ReportError
from screener.report.order import Order, order_of
from screener.report.sr import ABSENT, INDETERMINATE, PNEUMONIA, PRESENT, ScreeningFinding

VERSION = "2.5.1"
#: MSH-10 is ST of at most 20 characters (HL7 v2.5.1 2.15.9.10).
CONTROL_ID_LENGTH = 20
#: OBR-4 Universal Service Identifier: what was done, in the local coding system (table 0396 L).
SERVICE = ("PNEUMONIA-AI", "Chest X-ray pneumonia screening (AI)", "L")
CERTAINTY = ("111012", "Certainty of Finding", "DCM")
ALGORITHM_NAME = ("111001", "Algorithm Name", "DCM")
ALGORITHM_VERSION = ("111003", "Algorithm Version", "DCM")
ALGORITHM_PARAMETERS = ("111002", "Algorithm Parameters", "DCM")
DEVICE_UID = ("121012", "Device Observer UID", "DCM")
STUDY_UID = ("110180", "Study Instance UID", "DCM")
PERCENT = ("%", "percent", "UCUM")
#: TQ1-9 / OBR-27.6 priority (HL7 table 0027): S = STAT, the highest.
STAT = "S"

_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}


def escape(text: str) -> str:
    """``text`` as HL7 field data: delimiters escaped (v2.5.1 2.7), control characters as spaces."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(" ")
        else:
            out.append(char)
    return "".join(out)


def components(*parts: str) -> str:
    """One field of escaped components, ``^``-separated, trailing empty ones dropped."""
    return "^".join(escape(p) for p in parts).rstrip("^")


def control_id(object_uid: str) -> str:
    """MSH-10 of the message for one export row: the same on every retry, 20 characters."""
    return hashlib.sha256(object_uid.encode("ascii")).hexdigest()[:CONTROL_ID_LENGTH].upper()


def hl7_time(when: dt.datetime) -> str:
    """A DTM in UTC with its offset (v2.5.1 2.A.22)."""
    return as_utc(when).strftime("%Y%m%d%H%M%S+0000")


def raises_priority(rule: str, finding: ScreeningFinding) -> bool:
    """Whether the site's ``priority_update`` rule raises this result's order to STAT."""
    if rule == "flagged":
        return finding.positive
    if rule == "flagged_or_unassessed":
        return finding.positive or not finding.assessed
    return False


def build_oru(
    delivery: Delivery, header: pydicom.Dataset, finding: ScreeningFinding, settings: Hl7Settings
) -> str:
    """The ORU^R01 of one delivery, segments separated by CR (ER7)."""
    order = order_of(header)
    if not order.accession_number and not order.filler_order_number:
        raise ReportError(
            "the image has no Accession Number nor Filler Order Number: a RIS cannot match "
            "the result to an order"
        )
    result = delivery.result
    scored = hl7_time(result.scored_at)
    msg = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    msh = msg.msh
    msh.msh_3 = components(settings.sending_application)
    if settings.sending_facility:
        msh.msh_4 = components(settings.sending_facility)
    if settings.receiving_application:
        msh.msh_5 = components(settings.receiving_application)
    if settings.receiving_facility:
        msh.msh_6 = components(settings.receiving_facility)
    msh.msh_7 = scored
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = control_id(delivery.object_uid)
    msh.msh_11 = settings.processing_id
    msh.msh_12 = VERSION
    msh.msh_18 = "UNICODE UTF-8"

    patient_result = msg.add_group("ORU_R01_PATIENT_RESULT")
    _patient(patient_result.add_group("ORU_R01_PATIENT").pid, order)
    group = patient_result.add_group("ORU_R01_ORDER_OBSERVATION")
    stat = raises_priority(settings.priority_update, finding)
    _order(group, order, scored, stat)
    observations = _observations(finding, order, scored)
    for set_id, (value_type, code, value, extra) in enumerate(observations, start=1):
        obx = group.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(set_id)
        obx.obx_2 = value_type
        obx.obx_3 = components(*code)
        obx.obx_5 = value
        for name, field_value in extra.items():
            setattr(obx, name, field_value)
        obx.obx_11 = "F"
        obx.obx_14 = scored
    msg.validate()
    return str(msg.to_er7())


def _patient(pid: Any, order: Order) -> None:
    """PID-1, PID-3 (Patient ID ^^^ issuer) and PID-5 (the name) only."""
    pid.pid_1 = "1"
    issuer = order.issuer_of_patient_id
    pid.pid_3 = escape(order.patient_id) + ("^^^" + escape(issuer) if issuer else "")
    pid.pid_5 = components(*order.patient_name) or '""'


def _order(group: Any, order: Order, scored: str, stat: bool) -> None:
    """ORC, OBR and (when the priority is raised) TQ1."""
    filler = order.filler_order_number or order.accession_number
    orc = group.orc
    orc.orc_1 = "RE"  # observations to follow
    if order.placer_order_number:
        orc.orc_2 = escape(order.placer_order_number)
    orc.orc_3 = escape(filler)
    obr = group.obr
    obr.obr_1 = "1"
    if order.placer_order_number:
        obr.obr_2 = escape(order.placer_order_number)
    obr.obr_3 = escape(filler)
    obr.obr_4 = components(*SERVICE)
    if order.study_datetime:
        obr.obr_7 = order.study_datetime
    if order.accession_number:
        obr.obr_18 = escape(order.accession_number)
    if order.requested_procedure_id:
        obr.obr_19 = escape(order.requested_procedure_id)
    obr.obr_22 = scored
    obr.obr_24 = "RAD"  # table 0074: Radiology
    obr.obr_25 = "F"
    if stat:
        obr.obr_27 = "^^^^^" + STAT
        tq1 = group.add_group("ORU_R01_TIMING_QTY").tq1
        tq1.tq1_1 = "1"
        tq1.tq1_9 = STAT


def _observations(
    finding: ScreeningFinding, order: Order, scored: str
) -> list[tuple[str, tuple[str, ...], str, dict[str, str]]]:
    """(value type, OBX-3, OBX-5, other OBX fields) of each observation."""
    if not finding.assessed:
        value, flag = INDETERMINATE, ""
    elif finding.positive:
        value, flag = PRESENT, "A"  # table 0078: abnormal
    else:
        value, flag = ABSENT, "N"
    coded = components(value.value, value.meaning, value.scheme_designator)
    pneumonia = (PNEUMONIA.value, PNEUMONIA.meaning, PNEUMONIA.scheme_designator)
    observations: list[tuple[str, tuple[str, ...], str, dict[str, str]]] = [
        ("CWE", pneumonia, coded, {"obx_8": flag} if flag else {}),
        (
            "NM",
            CERTAINTY,
            f"{finding.probability * 100:.1f}",
            {"obx_6": components(*PERCENT)},
        ),
        ("ST", ALGORITHM_NAME, escape(finding.model_name), {}),
        ("ST", ALGORITHM_VERSION, escape(finding.model_version), {}),
        ("ST", DEVICE_UID, escape(finding.model_uid), {}),
        ("ST", ALGORITHM_PARAMETERS, f"threshold={finding.threshold:.4f}", {}),
    ]
    if order.study_instance_uid:
        observations.append(("ST", STUDY_UID, escape(order.study_instance_uid), {}))
    return observations
