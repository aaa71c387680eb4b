"""A read recorded in the web comes back to PACS as an IHE AIRAI assessment SR (issue 25, part 2):
`screener web` plans it with the read, the exporter delivers it to a real dcmtk storescp."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pydicom
from report.conftest import StoreSCP
from sqlalchemy import select
from support import (
    ServeProcess,
    build_dicom,
    free_port,
    listening,
    record_result,
    serve_env,
    wait_for,
)
from web.test_web_security import MODEL, Client, _hash

from screener.config import Settings
from screener.db import Database, Export, Result
from screener.db.migrate import upgrade
from screener.ingest.accept import Acceptor
from screener.ingest.spool import Spool
from screener.report.export import Exporter, plan_exports


def _web(
    tmp_path: Path, db_url: str, settings: Settings, pacs: StoreSCP
) -> tuple[str, ServeProcess, str]:
    """`screener web` (bob reads) over a database with one flagged study; its Study UID."""
    db = Database(db_url)
    upgrade(db)
    accepted = Acceptor(db, Spool(settings.storage.spool_dir, 0), settings).accept(
        build_dicom(seed=8), source="dicom"
    )
    record_result(db, accepted.sop_instance_uid, 0.9, 0.5, MODEL, accession="ACC8")
    db.dispose()
    port = free_port()
    env = serve_env(
        tmp_path,
        db_url,
        free_port(),
        screener_web_port=str(port),
        screener_web_users=json.dumps([f"bob:{_hash()}"]),
        screener_export_destinations=json.dumps([pacs.destination]),
        screener_export_assessments="true",
    )
    proc = ServeProcess(tmp_path, env, command="web").start()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: listening(port), 30)  # a refused connection is not an answer yet
    return base, proc, accepted.study_instance_uid


def test_a_read_in_the_web_reaches_pacs_as_an_assessment_sr(
    sqlite_url: str,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    """bob's 'no pneumonia' read of a flagged study, posted to the web's study page, is planned with the read and reaches storescp as an SR that rejects the AI finding, names bob as observer and references the delivered AI SR."""
    port = free_port()
    pacs = StoreSCP(port, tmp_path / f"pacs-{port}").start()
    try:
        _read_and_deliver(tmp_path, pacs, sqlite_url, make_settings)
    finally:
        pacs.stop()


def _read_and_deliver(
    tmp_path: Path,
    pacs: StoreSCP,
    sqlite_url: str,
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        sqlite_url,
        export__destinations=[pacs.destination],
        export__assessments=True,
        listener__ae_title="SCREENER",
    )
    base, proc, study = _web(tmp_path, sqlite_url, settings, pacs)
    db = Database(sqlite_url)
    try:
        with db.transaction() as session:
            (result,) = session.scalars(select(Result))
            plan_exports(session, result, settings)  # the AI SR, as the worker plans it
        exporter = Exporter(db, settings)
        assert exporter.deliver_due() == 1
        (ai_path,) = pacs.files()

        bob = Client(base, "192.0.2.60")
        assert bob.login("bob") == 303
        bob.get(f"/study/{study}")
        status, _, _ = bob.post(f"/study/{study}/review", {"finding": "no_pneumonia"})
        assert status == 303
        with db.transaction() as session:
            (row,) = session.scalars(select(Export).where(Export.payload == "assessment"))
            assert (row.state, row.destination) == ("pending", pacs.destination)
        assert exporter.deliver_due() == 1
    finally:
        db.dispose()

    (path,) = [p for p in pacs.files() if p != ai_path]
    ai = pydicom.dcmread(ai_path)
    sr = pydicom.dcmread(path)
    assert sr.StudyInstanceUID == study == ai.StudyInstanceUID
    text = str(sr.ContentSequence)
    assert "'REJECTED'" in text and "'99SCREENER'" in text
    assert "PN: 'bob'" in text
    assert sr.CurrentRequestedProcedureEvidenceSequence  # the AI SR and the image
    referenced = {
        str(r.ReferencedSOPInstanceUID)
        for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for r in s.ReferencedSOPSequence
    }
    assert str(ai.SOPInstanceUID) in referenced
    assert "ACC8" not in proc.log()  # the accession number stays out of the web's log
