"""Reads go back as IHE AIRAI assessment SRs through the export queue: planned with the read when
``export.assessments`` is on, delivered to a real dcmtk storescp referencing the AI result SR it
assesses, retried and dead-lettered like any delivery, and never planned when the option is off."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from orthanc_web import PASSWORD, USER, OrthancWeb, orthanc_web  # noqa: F401
from pynetdicom import AE, AllStoragePresentationContexts, evt
from report.sr_readback import coded_value, content_items, measurement_report
from sqlalchemy import select
from structlog.testing import capture_logs
from support import free_port, wait_for

from screener.config import Settings
from screener.db import Database, Export, Instance, Result, utcnow
from screener.db.engine import as_utc
from screener.report.assessment import AssessedRead, build_assessment_sr
from screener.report.export import Exporter, plan_exports
from screener.report.sr import SR_SOP_CLASSES
from screener.views.worklist import record_read, record_review

ASSESSED_UID = "1.2.826.0.1.3680043.8.498.4242"


def _settings(
    make_settings: Callable[..., Settings], db_url: str, *dest: str, **kw: Any
) -> Settings:
    values: dict[str, Any] = {
        "export__destinations": list(dest),
        "export__assessments": True,
        "export__backoff_seconds": 0.05,
        "export__backoff_max_seconds": 0.1,
        "export__timeout_seconds": 5,
        "listener__ae_title": "SCREENER",
    }
    values.update(kw)
    return make_settings(db_url, **values)


def _study_key(db: Database, result_id: int) -> str:
    """The short id (``#N``) of a result's study, as the worklist shows it."""
    with db.transaction() as session:
        result = session.get(Result, result_id)
        assert result is not None
        instance = session.get(Instance, result.instance_id)
        assert instance is not None
        return f"#{instance.study_id}"


def test_a_read_reaches_storescp_as_an_assessment_of_the_delivered_sr(
    db_url: str,
    make_settings: Callable[..., Settings],
    storescp: Callable[..., Any],
    screened: Callable[..., Any],
    dciodvfy: Callable[[Path], list[str]],
    dsrdump: Callable[[Path], str],
) -> None:
    """A disagreeing read of a delivered AI SR arrives at storescp as an SR of the same study that rejects the finding, gives the reader's finding and observer, references the AI SR by UID, and has no dciodvfy error."""
    pacs = storescp().start()
    s = screened(_settings(make_settings, db_url, pacs.destination), 1, probability=0.83)
    exporter = Exporter(s.db, s.settings)
    assert exporter.deliver_due() == 1
    (ai_row,) = s.exports()
    (ai_path,) = pacs.files()

    key = _study_key(s.db, s.result_ids[0])
    with capture_logs() as logs:
        read = record_read(s.db, key, "no_pneumonia", None, 24.0, "jdoe", s.settings)
        (row,) = s.exports("assessment")
        assert (row.state, row.review_id, row.assessed_uid) == (
            "pending",
            read.review.id,
            ai_row.sr_sop_instance_uid,
        )
        assert row.destination == pacs.destination and row.result_id == s.result_ids[0]
        assert exporter.deliver_due() == 1

    (row,) = s.exports("assessment")
    assert (row.state, row.attempts) == ("delivered", 1)
    (path,) = [p for p in pacs.files() if p != ai_path]
    ai = pydicom.dcmread(ai_path)
    sr = pydicom.dcmread(path)
    assert sr.SOPInstanceUID == row.sr_sop_instance_uid
    assert sr.SOPClassUID == SR_SOP_CLASSES["3d"]
    assert sr.StudyInstanceUID == ai.StudyInstanceUID and sr.PatientID == ai.PatientID
    assert sr.SeriesInstanceUID != ai.SeriesInstanceUID
    assert dciodvfy(path) == []

    evidence = {
        (str(s.SeriesInstanceUID), str(r.ReferencedSOPInstanceUID))
        for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for r in s.ReferencedSOPSequence
    }
    assert (str(ai.SeriesInstanceUID), str(ai.SOPInstanceUID)) in evidence
    (composite,) = [i for i in content_items(sr) if i.ValueType == "COMPOSITE"]
    assert composite.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ai.SOPInstanceUID
    assert composite.ReferencedSOPSequence[0].ReferencedSOPClassUID == ai.SOPClassUID

    text = dsrdump(path)
    assert '(REJECTED,99SCREENER,"Rejected")' in text
    assert '(2667000,SCT,"Absent")' in text  # the reader's finding
    assert '(121006,DCM,"Person")' in text and 'Person Observer Name")="jdoe"' in text
    assert '(233604007,SCT,"Pneumonia")' in text  # the finding assessed

    doc = hd.sr.srread(path)
    (group,) = measurement_report(doc).get_image_measurement_groups()
    values = {e.name.meaning: coded_value(e).meaning for e in group.get_qualitative_evaluations()}
    assert values == {"AI result assessment": "Rejected", "Pneumonia": "Absent"}
    (event,) = [e for e in logs if e["event"] == "assessment_delivered"]
    assert event["sop_instance_uid"] == sr.SOPInstanceUID
    assert "Doe^Jane" not in repr(logs) and "PHI-12345" not in repr(logs)


def test_a_read_reaches_orthanc_by_stow_rs_and_is_found_by_qido_rs(
    tmp_path: Path,
    sqlite_url: str,
    make_settings: Callable[..., Settings],
    screened: Callable[..., Any],
    orthanc_web: Callable[..., OrthancWeb],  # noqa: F811
) -> None:
    """With Orthanc's DICOMweb as the PACS, an agreeing read's assessment goes by STOW-RS like the AI SR; QIDO-RS finds it in the study and WADO-RS metadata shows the AI SR in its evidence."""
    pacs = orthanc_web()
    auth = tmp_path / "stow-auth"
    auth.write_text(f"Basic {USER}:{PASSWORD}\n")
    auth.chmod(0o600)
    settings = _settings(make_settings, sqlite_url, pacs.dicomweb, dicomweb__auth_file=str(auth))
    s = screened(settings, 1, probability=0.83)
    exporter = Exporter(s.db, s.settings)
    assert exporter.deliver_due() == 1
    record_read(s.db, _study_key(s.db, s.result_ids[0]), "pneumonia", None, 24.0, "jdoe", settings)
    assert exporter.deliver_due() == 1

    (ai_row,) = s.exports("result")
    (row,) = s.exports("assessment")
    assert (row.state, row.attempts) == ("delivered", 1)
    assert (row.receipt or "").startswith("STOW-RS HTTP 200")
    status, studies = pacs.call("GET", "/dicom-web/studies")
    assert status == 200
    (study,) = [str(x["0020000D"]["Value"][0]) for x in studies]
    instance = pacs.qido_instance(study, str(row.sr_sop_instance_uid))
    series = instance["0020000E"]["Value"][0]
    status, metadata = pacs.call(
        "GET",
        f"/dicom-web/studies/{study}/series/{series}/instances/{row.sr_sop_instance_uid}/metadata",
    )
    assert status == 200, metadata
    evidence = json.dumps(metadata[0]["0040A375"])  # Current Requested Procedure Evidence
    assert str(ai_row.sr_sop_instance_uid) in evidence


@pytest.mark.parametrize("positive", [True, False], ids=["flagged", "not-flagged"])
def test_agreeing_accepts_and_cannot_tell_plans_nothing(
    positive: bool,
    sqlite_url: str,
    make_settings: Callable[..., Settings],
    screened: Callable[..., Any],
) -> None:
    """An agreeing read (``screener review --agree``) plans one pending assessment of the pending AI SR row; a read that cannot tell plans none."""
    s = screened(
        _settings(make_settings, sqlite_url, "PACS@127.0.0.1:1"),
        1,
        probability=0.9 if positive else 0.1,
    )
    key = _study_key(s.db, s.result_ids[0])
    record_read(s.db, key, "cannot_tell", None, 24.0, "jdoe", s.settings)
    assert s.exports("assessment") == []

    read = record_review(s.db, key, True, None, 24.0, reader="jdoe", settings=s.settings)
    assert read.review.verdict == "agree"
    (ai_row,) = s.exports("result")
    (row,) = s.exports("assessment")
    assert (row.state, row.assessed_uid, row.attempts) == ("pending", ai_row.sr_sop_instance_uid, 0)
    assert row.sr_sop_instance_uid not in (None, ai_row.sr_sop_instance_uid)


def test_none_planned_when_the_option_is_off(
    sqlite_url: str, make_settings: Callable[..., Settings], screened: Callable[..., Any]
) -> None:
    """With export.assessments = false (the default) a read plans no export."""
    settings = _settings(make_settings, sqlite_url, "PACS@127.0.0.1:1", export__assessments=False)
    s = screened(settings, 1)
    record_read(s.db, _study_key(s.db, s.result_ids[0]), "pneumonia", None, 24.0, "jdoe", settings)
    assert [e.payload for e in s.exports()] == ["result"]


def test_only_dicom_destinations_holding_the_sr_get_one_and_shadow_stays_shadow(
    sqlite_url: str, make_settings: Callable[..., Settings], screened: Callable[..., Any]
) -> None:
    """A destination whose AI SR row is dead and an HL7 receiver get no assessment; an AI SR planned while the site was silent makes its assessment shadow, never due."""
    a, b = "PACSA@127.0.0.1:1", "PACSB@127.0.0.1:2"
    settings = _settings(make_settings, sqlite_url, a, b, hl7__destinations=["mllp://127.0.0.1:3"])
    s = screened(settings, 2, plan=False)
    with s.db.transaction() as session:
        live, silent = (session.get(Result, i) for i in s.result_ids)
        assert live is not None and silent is not None
        plan_exports(session, live, settings)
        plan_exports(session, silent, settings, shadow=True)
    with s.db.transaction() as session:
        dead = session.scalars(
            select(Export).where(Export.result_id == s.result_ids[0], Export.destination == b)
        ).one()
        dead.state = "dead"

    record_read(s.db, _study_key(s.db, s.result_ids[0]), "pneumonia", None, 24.0, "r1", settings)
    (row,) = s.exports("assessment")
    assert (row.destination, row.state) == (a, "pending")

    record_read(s.db, _study_key(s.db, s.result_ids[1]), "pneumonia", None, 24.0, "r1", settings)
    shadow = [e for e in s.exports("assessment") if e.result_id == s.result_ids[1]]
    assert sorted(e.destination for e in shadow) == sorted([a, b])
    assert {(e.state, e.next_attempt_at) for e in shadow} == {("shadow", None)}


@pytest.fixture
def switching_scp() -> Iterator[tuple[int, list[int]]]:
    """A pynetdicom Storage SCP answering ``status[0]`` to every C-STORE (the test changes it)."""
    status = [0x0000]

    def on_store(event: Any) -> int:
        return status[0]

    ae = AE(ae_title="PACS")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    assert server is not None  # block=False returns the running server
    yield port, status
    server.shutdown()
    ae.shutdown()


def test_a_refused_assessment_is_retried_then_dead_lettered(
    db_url: str,
    make_settings: Callable[..., Settings],
    screened: Callable[..., Any],
    switching_scp: tuple[int, list[int]],
) -> None:
    """An assessment the PACS refuses (0xA700 out of resources) backs off, is tried again, and after export.max_attempts is dead with the reason; `exports retry` material, like any delivery."""
    port, status = switching_scp
    settings = _settings(make_settings, db_url, f"PACS@127.0.0.1:{port}", export__max_attempts=2)
    s = screened(settings, 1, probability=0.83)
    exporter = Exporter(s.db, s.settings)
    assert exporter.deliver_due() == 1  # the AI SR is taken
    record_read(s.db, _study_key(s.db, s.result_ids[0]), "pneumonia", None, 24.0, "jdoe", settings)

    status[0] = 0xA700
    before = utcnow()
    assert exporter.deliver_due() == 0
    (row,) = s.exports("assessment")
    assert (row.state, row.attempts) == ("pending", 1)
    assert (row.last_error or "").startswith(
        "transient: C-STORE of Comprehensive 3D SR answered 0xA700"
    )
    assert row.next_attempt_at is not None and as_utc(row.next_attempt_at) > before

    with capture_logs() as logs:
        wait_for(lambda: exporter.deliver_due() == 0 and s.exports("assessment")[0].state == "dead")
    (row,) = s.exports("assessment")
    assert (row.state, row.attempts, row.next_attempt_at) == ("dead", 2, None)
    assert "0xA700" in (row.last_error or "")
    (event,) = [e for e in logs if e["event"] == "assessment_dead_lettered"]
    assert event["sop_instance_uid"] == row.sr_sop_instance_uid and event["permanent"] is False
    (ai_row,) = s.exports("result")
    assert ai_row.state == "delivered"  # the AI SR's own delivery is untouched


@pytest.mark.parametrize("accepted", [True, False], ids=["accepted", "rejected"])
@pytest.mark.parametrize("index", [0, 1, 2], ids=["siim-cr-1", "siim-cr-2", "nih-dx-test1"])
def test_assessment_sr_of_a_real_film_has_no_dciodvfy_error(
    index: int,
    accepted: bool,
    real_sources: list[Path],
    model_uid: str,
    dciodvfy: Callable[[Path], list[str]],
    tmp_path: Path,
) -> None:
    """The assessment SR of a real film's AI result, accepted or rejected, has no dciodvfy error and a rebuild is the same document."""
    source = pydicom.dcmread(real_sources[index], stop_before_pixels=True)
    read = AssessedRead(
        reader="jdoe",
        reader_positive=accepted,
        model_positive=True,
        read_at=dt.datetime(2026, 12, 6, 7, 30, tzinfo=dt.UTC),
        model_uid=model_uid,
        assessed_sop_instance_uid=ASSESSED_UID,
    )
    sr = build_assessment_sr(source, read, sop_instance_uid="1.2.826.0.1.3680043.8.498.77")
    path = tmp_path / "assessment.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == []
    values = [
        i.ConceptCodeSequence[0].CodeValue for i in content_items(sr) if i.ValueType == "CODE"
    ]
    assert ("ACCEPTED" if accepted else "REJECTED") in values
    again = build_assessment_sr(source, read, sop_instance_uid="1.2.826.0.1.3680043.8.498.77")
    assert again == sr


def test_the_reader_is_a_valid_person_name(real_sources: list[Path], model_uid: str) -> None:
    """A login with PN delimiters or control characters becomes a clean Person Observer Name; a non-ASCII one is carried in UTF-8 when the source has the default repertoire; no reader is 'unknown reader'."""
    source = pydicom.dcmread(real_sources[2], stop_before_pixels=True)
    assert "SpecificCharacterSet" not in source

    def observer(reader: str | None) -> tuple[str, Any]:
        read = AssessedRead(reader, True, True, utcnow(), model_uid, ASSESSED_UID)
        sr = build_assessment_sr(source, read, sop_instance_uid="1.2.826.0.1.3680043.8.498.78")
        (name,) = [i for i in content_items(sr) if i.ValueType == "PNAME"]
        return str(name.PersonName), sr.get("SpecificCharacterSet")

    assert observer("dr^who=\\x\n") == ("drwhox", None)
    assert observer("müller") == ("müller", "ISO_IR 192")
    assert observer(None) == ("unknown reader", None)
