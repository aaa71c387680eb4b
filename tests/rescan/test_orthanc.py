"""A nightly rescan against a real PACS all the way to the SR: Debian's Orthanc holds chest
studies that screener never received; `screener rescan` (the CLI, beside a running `screener
serve`) finds them with C-FIND, retrieves them with C-MOVE, and each comes back to Orthanc
with its SR in the same study."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

from pydicom import Dataset, dcmread
from rescan.rescan_support import Orthanc
from support import ServeProcess, free_port, run_screener, serve_env, wait_for

SR_3D = "1.2.840.10008.5.1.4.1.1.88.34"


def _sr_instances(pacs: Orthanc) -> list[str]:
    """Orthanc ids of the SR instances it holds."""
    found = pacs.rest("/tools/find", {"Level": "Instance", "Query": {"Modality": "SR"}})
    return sorted(found)


def _referenced_sop_instances(sr: Dataset) -> set[str]:
    """SOP Instance UIDs in the SR's Current Requested Procedure Evidence Sequence."""
    return {
        str(sop.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


def test_rescan_from_orthanc_ends_with_srs_in_orthanc(
    tmp_path: Path,
    sqlite_url: str,
    serve_process: Callable[[dict[str, str]], ServeProcess],
    orthanc: Callable[..., Orthanc],
    recent_copies: Callable[..., list[Path]],
    siim_films: list[Path],
) -> None:
    """3 recent CR studies missed by screener: C-FIND + C-MOVE from Orthanc, scored, one SR each back in Orthanc referencing its film; the OT and the 1901 study are left alone; a second rescan retrieves nothing and sends no SR twice."""
    port = free_port()
    pacs = orthanc(port)
    chest = recent_copies(3)
    other = recent_copies(1, modality="OT", offset=3)
    pacs.store([*chest, *other, siim_films[4]])  # siim_films[4] is dated 19010101
    films = {str(d.StudyInstanceUID): d for d in (dcmread(p) for p in chest)}
    env = serve_env(
        tmp_path,
        sqlite_url,
        port,
        SCREENER_RESCAN_PACS=pacs.address,
        SCREENER_RESCAN_SCHEDULE="",
        SCREENER_EXPORT_DESTINATIONS=pacs.address,
    )
    daemon = serve_process(env).start()

    rescan = run_screener(env, tmp_path, "rescan", "--json")
    assert rescan.returncode == 0, rescan.stderr
    report = json.loads(rescan.stdout[rescan.stdout.index("{\n") :])
    assert report["studies_found"] == 3 and report["studies_in_hand"] == 0
    assert sorted(report["retrieved"]) == sorted(films)

    wait_for(lambda: len(_sr_instances(pacs)) == 3, timeout=240, interval=0.5)
    for instance_id in _sr_instances(pacs):
        sr = dcmread(io.BytesIO(pacs.download(instance_id)))
        assert sr.SOPClassUID == SR_3D
        film = films[str(sr.StudyInstanceUID)]
        assert _referenced_sop_instances(sr) == {str(film.SOPInstanceUID)}
        assert sr.SeriesInstanceUID != film.SeriesInstanceUID
    rows = json.loads(run_screener(env, tmp_path, "worklist", "--format", "json").stdout)
    assert sorted(r["accession_number"] for r in rows) == ["RS0000", "RS0001", "RS0002"]

    again = run_screener(env, tmp_path, "rescan", "--json")
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout[again.stdout.index("{\n") :])
    assert second["studies_found"] == 3 and second["studies_in_hand"] == 3
    assert second["retrieved"] == []
    status = json.loads(run_screener(env, tmp_path, "status", "--json").stdout)
    assert status["exports"] == {"pending": 0, "delivered": 3, "dead": 0}
    assert len(_sr_instances(pacs)) == 3
    assert daemon.terminate() == 0
