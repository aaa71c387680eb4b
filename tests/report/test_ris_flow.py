"""From a film to the RIS and the EHR: ``screener serve`` receives a film by C-STORE, scores
it, and its exporter delivers an ORU^R01 to an MLLP receiver and a transaction Bundle to a
FHIR server (both separate processes), recording the ACK and the locations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from report.test_fhir import FhirServer
from report.test_hl7 import Receiver
from support import ServeProcess, build_dicom, c_store, free_port, serve_env, wait_for


@pytest.mark.timeout(300)
def test_a_scored_film_reaches_the_ris_and_the_fhir_server(tmp_path: Path) -> None:
    """The daemon's own exporter sends the result over HL7 v2 and FHIR: the receiver holds an
    ORU^R01 for the film's accession number, the server a DiagnosticReport for its study, and
    both rows are delivered with what the destination answered."""
    ris = Receiver(tmp_path / "ris").start("AA")
    fhir = FhirServer(tmp_path / "fhir").start()
    port, db = free_port(), tmp_path / "s.db"
    env = serve_env(
        tmp_path,
        f"sqlite:///{db}",
        port,
        screener_hl7_destinations=ris.destination,
        screener_hl7_priority_update="flagged",
        screener_fhir_base_url=fhir.base_url,
    )
    serve = ServeProcess(tmp_path, env)
    try:
        serve.start()
        film = tmp_path / "film.dcm"
        film.write_bytes(build_dicom(rows=256, columns=256, study_instance_uid="1.2.826.0.1.99.7"))
        assert c_store(port, [film]) == [0]
        wait_for(lambda: ris.messages() and fhir.stored("DiagnosticReport"), 180, 0.2)
    finally:
        code = serve.terminate() if serve.proc is not None else 0
        ris.stop()
        fhir.stop()
    assert code == 0, serve.log()[-3000:]
    with sqlite3.connect(db) as c:
        rows = dict(c.execute("select destination, state || ' ' || receipt from exports"))
    assert rows[ris.destination].startswith("delivered AA MSA-2 ")
    assert rows["fhir+" + fhir.base_url].startswith("delivered 201 Created Device/")
    (message,) = ris.messages()
    obr = next(s.split("|") for s in message.split("\r") if s.startswith("OBR|"))
    assert obr[18] == "ACC1"
    (report,) = fhir.stored("DiagnosticReport")
    assert report["imagingStudy"][0]["identifier"]["value"] == "urn:oid:1.2.826.0.1.99.7"
    assert "PHI-12345" not in serve.log()
