"""Issue 25's "done means" on real processes, in one chain: Orthanc with its DICOMweb plugin is the
PACS, `screener serve` exports to it by STOW-RS, to an MLLP receiver (tests/report/mllp_server.py)
and to a FHIR server (tests/report/fhir_server.py), accepts STOW-RS with a machine token, and
sends reads back as IHE AIRAI assessments. A pediatric film the shipped model flags comes from
Orthanc by its own STOW-RS client; its AIR SR lands in Orthanc (QIDO-RS finds it, dciodvfy finds
no error, highdicom reads the algorithm and the finding); the RIS holds an ORU^R01 whose ACK is
the receipt; the FHIR server holds a valid DiagnosticReport; a radiologist's read in the web
comes back as an assessment SR of the AI SR; `screener exports list` and `status` agree."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fhir.resources.R4B import get_fhir_model_class
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from orthanc_web import PASSWORD, USER, OrthancWeb, orthanc_web  # noqa: F401
from PIL import Image
from report.sr_readback import coded_value, content_items, measurement_report
from report.test_air_sr import _algorithm_items
from report.test_fhir import FhirServer
from report.test_hl7 import Receiver
from support import data_root, film_dicom, free_port, run_screener, sr_source_uids, wait_for
from web.test_stow_in import READER, READER_PASSWORD, TOKEN, _start
from web.test_web_security import Client

from screener.model.bundle import read_metadata

#: a pediatric pneumonia film of the shared data whose calibrated P (0.78, tests/model/
#: test_golden.py) is above the shipped bundle's threshold (0.56): the model flags it
FLAGGED_FILM = "chest_xray/train/PNEUMONIA/person1006_bacteria_2937.jpeg"
ACCESSION = "REACH25"
FHIR_TOKEN = "fhir-token-" + "y" * 20
#: SNOMED CT Pneumonia, its Present / Absent values (the finding of the TID 1501 group)
PNEUMONIA, PRESENT = "233604007", "52101004"


def _ask_fhir(server: FhirServer, location: str) -> tuple[int, Any]:
    """A FHIR read of ``TYPE/ID[/_history/N]`` on the server, with its bearer token."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{server.base_url}/{location}")
    request.add_header("Authorization", f"Bearer {FHIR_TOKEN}")
    request.add_header("Accept", "application/fhir+json")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _exports(db: Path) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(channel-bearing destination, payload) -> (state, receipt) of every export row."""
    with sqlite3.connect(db) as c:
        rows = c.execute("select destination, payload, state, receipt from exports")
        return {(d, p): (s, r) for d, p, s, r in rows}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_film_by_stow_reaches_pacs_ris_and_ehr_and_the_read_comes_back(
    tmp_path: Path,
    sqlite_url: str,
    model_bundle: Path,
    orthanc_web: Callable[..., OrthancWeb],  # noqa: F811
    dciodvfy: Callable[[Path], list[str]],
) -> None:
    """A flagged film pushed by Orthanc's STOW-RS client is scored; its AIR SR is in Orthanc (QIDO-RS, 0 dciodvfy errors, the bundle's Device UID and the finding read by highdicom), the RIS ACKed an ORU^R01 for its accession number, the FHIR server holds its DiagnosticReport, a read in the web reaches Orthanc as an assessment SR of the AI SR, and every export row is delivered with a receipt."""
    source = data_root() / FLAGGED_FILM
    if not source.is_file():
        pytest.skip(f"the chest X-ray training films are not at {source} (set SCREENER_DATA)")
    bundle_uid = str(read_metadata(model_bundle)["uid"])

    # the peers: the RIS (MLLP, ACKs AA), the EHR (FHIR, a bearer token), the PACS's port
    ris = Receiver(tmp_path / "ris").start("AA")
    fhir = FhirServer(tmp_path / "fhir").start("--token", FHIR_TOKEN)
    pacs_port = free_port()
    stow_auth, fhir_token = tmp_path / "stow-auth", tmp_path / "fhir-token"
    stow_auth.write_text(f"Basic {USER}:{PASSWORD}\n")
    fhir_token.write_text(FHIR_TOKEN + "\n")
    for secret in (stow_auth, fhir_token):
        secret.chmod(0o600)
    try:
        # `screener serve` from a clean config: STOW-RS out and in, AIRAI, HL7, FHIR, the web
        port, daemon = _start(
            tmp_path,
            sqlite_url,
            command="serve",
            screener_export_destinations=f"http://127.0.0.1:{pacs_port}/dicom-web",
            screener_export_assessments="true",
            screener_export_poll_seconds="0.2",
            screener_dicomweb_auth_file=str(stow_auth),
            screener_hl7_destinations=ris.destination,
            screener_fhir_base_url=fhir.base_url,
            screener_fhir_token_file=str(fhir_token),
        )
        # Orthanc as the PACS: screener is its DICOMweb peer, reached with the machine token
        ours: dict[str, Any] = {
            "Url": f"http://127.0.0.1:{port}/dicom-web",
            "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"},
        }
        pacs = orthanc_web(servers={"screener": ours}, http_port=pacs_port)

        # 1. Orthanc pushes the film, a 3-year-old's CR, to screener by its own STOW-RS client
        pixels = np.asarray(Image.open(source).convert("L"))
        film = film_dicom(pixels, patient_age="003Y", accession=ACCESSION)
        header = pydicom.dcmread(io.BytesIO(film), stop_before_pixels=True)
        study, film_uid = str(header.StudyInstanceUID), str(header.SOPInstanceUID)
        status, answer = pacs.call(
            "POST", "/dicom-web/servers/screener/stow", {"Resources": [pacs.upload(film)]}
        )
        assert status == 200, (answer, daemon.log()[-3000:])

        # 2. scored and flagged; the AIR SR lands in Orthanc by STOW-RS, QIDO-RS finds it
        def srs_in_study(n: int) -> list[Any]:
            status, found = pacs.call("GET", f"/dicom-web/studies/{study}/instances?Modality=SR")
            return found if status == 200 and isinstance(found, list) and len(found) >= n else []

        (found,) = wait_for(lambda: srs_in_study(1), 300, 0.5)
        ai_uid = str(found["00080018"]["Value"][0])
        ai_path = tmp_path / "ai-sr.dcm"
        ai_path.write_bytes(pacs.file(ai_uid))
        assert dciodvfy(ai_path) == []
        ai_doc = hd.sr.srread(ai_path)
        assert ai_doc.StudyInstanceUID == study and ai_doc.AccessionNumber == ACCESSION
        (algorithm,) = _algorithm_items(ai_doc)  # Purpose of Reference (Newcode1, 99IHE)
        assert algorithm.DeviceUID == bundle_uid
        (group,) = measurement_report(ai_doc).get_image_measurement_groups()
        assert group.finding_type == hd.sr.CodedConcept(PNEUMONIA, "SCT", "Pneumonia")
        (image,) = group.source_images
        assert image.referenced_sop_instance_uid == film_uid
        values = {e.name.value: coded_value(e).value for e in group.get_qualitative_evaluations()}
        assert values[PNEUMONIA] == PRESENT  # flagged

        # 3. the radiologist reads it in the web (login, the study page's form with its CSRF
        # token) and disagrees; an AIRAI assessment SR referencing the AI SR lands in Orthanc
        reader = Client(f"http://127.0.0.1:{port}", "192.0.2.25")
        assert reader.login(READER, READER_PASSWORD) == 303
        assert reader.get(f"/study/{study}")[0] == 200
        assert reader.post(f"/study/{study}/review", {"finding": "no_pneumonia"})[0] == 303
        both = wait_for(lambda: srs_in_study(2), 120, 0.5)
        (assessment_uid,) = {str(i["00080018"]["Value"][0]) for i in both} - {ai_uid}
        assessment_path = tmp_path / "assessment-sr.dcm"
        assessment_path.write_bytes(pacs.file(assessment_uid))
        assert dciodvfy(assessment_path) == []
        assessment = pydicom.dcmread(assessment_path)
        assert assessment.StudyInstanceUID == study
        assert ai_uid in sr_source_uids(assessment)  # Current Requested Procedure Evidence
        (composite,) = [i for i in content_items(assessment) if i.ValueType == "COMPOSITE"]
        assert composite.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ai_uid
        (read,) = measurement_report(hd.sr.srread(assessment_path)).get_image_measurement_groups()
        assessed = {
            e.name.meaning: coded_value(e).meaning for e in read.get_qualitative_evaluations()
        }
        assert assessed == {"AI result assessment": "Rejected", "Pneumonia": "Absent"}

        # 4. the RIS received one ORU^R01 for the study; its ACK is the export's receipt
        (message,) = wait_for(ris.messages, 60, 0.2)
        parse_message(message, validation_level=VALIDATION_LEVEL.STRICT).validate()
        segments = {line.split("|")[0]: line.split("|") for line in message.split("\r")}
        assert segments["MSH"][8] == "ORU^R01^ORU_R01"
        assert segments["OBR"][18] == ACCESSION

        # 5. the FHIR server holds a valid DiagnosticReport for the study (a FHIR read of the
        # location it answered, the receipt)
        db = tmp_path / "screener.db"
        wait_for(lambda: _exports(db).get(("fhir+" + fhir.base_url, "result")), 60, 0.2)
        state, receipt = _exports(db)[("fhir+" + fhir.base_url, "result")]
        assert state == "delivered", receipt
        (location,) = [
            part.split()[-1] for part in (receipt or "").split("; ") if "DiagnosticReport/" in part
        ]
        status, report = _ask_fhir(fhir, location)
        assert status == 200, report
        get_fhir_model_class("DiagnosticReport").model_validate(report)
        assert report["imagingStudy"][0]["identifier"]["value"] == f"urn:oid:{study}"

        # 6. every row delivered with its channel's receipt; status: nothing dead or pending
        def listed() -> list[dict[str, Any]]:
            out = run_screener(daemon.env, tmp_path, "exports", "list", "--json")
            assert out.returncode == 0, out.stderr[-2000:]
            rows: list[dict[str, Any]] = json.loads(out.stdout)
            return rows if all(r["state"] == "delivered" for r in rows) else []

        rows = wait_for(listed, 60, 0.5)
        assert sorted((r["channel"], r["payload"]) for r in rows) == [
            ("fhir", "result"),
            ("hl7", "result"),
            ("stow", "assessment"),
            ("stow", "result"),
        ]
        receipts = {(r["channel"], r["payload"]): r["receipt"] or "" for r in rows}
        assert receipts[("hl7", "result")].startswith("AA MSA-2 ")
        assert receipts[("fhir", "result")].startswith("201 Created ")
        assert receipts[("stow", "result")].startswith("STOW-RS HTTP 200")
        assert receipts[("stow", "assessment")].startswith("STOW-RS HTTP 200")
        assert {r["accession_number"] for r in rows} == {ACCESSION}
        out = run_screener(daemon.env, tmp_path, "status", "--json")
        assert out.returncode == 0, out.stderr[-2000:]
        exports = json.loads(out.stdout)["exports"]
        assert (exports["dead"], exports["pending"], exports["delivered"]) == (0, 0, 4)

        log = daemon.log()
        assert daemon.terminate() == 0, log[-3000:]
        assert not any(phi in log for phi in ("Doe^Child", "PHI-67890", ACCESSION, TOKEN))
    finally:
        ris.stop()
        fhir.stop()
