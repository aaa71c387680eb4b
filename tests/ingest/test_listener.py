"""The DICOM listener over real loopback associations: pynetdicom, storescu and echoscu as clients."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import func, select
from support import REPO, c_store, dcmtk_tool, wait_for

from screener.db import AuditEvent, Instance, Job, JobState
from screener.views.status import build_report

needs_dcmtk = pytest.mark.skipif(
    dcmtk_tool("storescu") is None, reason="dcmtk (storescu) not installed"
)


def _jobs(daemon: Any) -> dict[str, int]:
    with daemon.db.transaction() as s:
        return dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())


def _audit(daemon: Any, event: str) -> list[AuditEvent]:
    with daemon.db.transaction() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.event == event)))


def test_store_real_chest_films(
    db_url: str, running_daemon: Callable[..., Any], dicom_dir: Path
) -> None:
    """Ten real JPEG Baseline CR chest films stored with pynetdicom are each acknowledged and queued."""
    daemon = running_daemon(db_url)
    files = sorted((dicom_dir / "siim_chest_cr").glob("*.dcm"))
    assert c_store(daemon.listener.port, files) == [0x0000] * 10
    assert _jobs(daemon) == {"queued": 10}
    with daemon.db.transaction() as s:
        instances = s.scalars(select(Instance)).all()
        assert {i.transfer_syntax_uid for i in instances} == {"1.2.840.10008.1.2.4.50"}
        for inst in instances:
            spooled = Path(inst.spool_path)
            assert spooled.is_file() and spooled.stat().st_size == inst.size_bytes
    # spooled bytes decode to the same pixels as the original
    original = dcmread(files[0])
    with daemon.db.transaction() as s:
        path = s.scalars(
            select(Instance.spool_path).where(Instance.sop_instance_uid == original.SOPInstanceUID)
        ).one()
    assert dcmread(path).PixelData == original.PixelData


@needs_dcmtk
def test_storescu_sends_every_shared_file(
    db_url: str, running_daemon: Callable[..., Any], dicom_dir: Path
) -> None:
    """storescu (dcmtk) sends all 30 shared files: each is accepted; 13 queued, 14 skipped, 3 header-variant resends ignored."""
    daemon = running_daemon(db_url)
    files = sorted((dicom_dir / "nih_dx_header_variants").glob("*.dcm"))
    files += sorted((dicom_dir / "siim_chest_cr").glob("*.dcm"))
    files += sorted((dicom_dir / "wg04_nonchest").glob("*.dcm"))
    assert len(files) == 30
    cfg = REPO / "deploy" / "storescu-screener.cfg"
    proc = subprocess.run(
        [
            str(dcmtk_tool("storescu")),
            "-aet",
            "MODALITY",
            "-aec",
            "SCREENER",
            "-xf",
            str(cfg),
            "Screener",
            "-to",
            "30",
            "127.0.0.1",
            str(daemon.listener.port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Store Failed" not in proc.stderr
    assert _jobs(daemon) == {"queued": 13, "skipped": 14}
    report = build_report(daemon.db)
    assert report.received["instances"] == 27
    assert report.received["changed_resends_ignored"] == 3  # test4-6 reuse test1's SOP Instance UID
    assert report.reasons["skipped"] == {"selection:body_part_examined": 14}
    with daemon.db.transaction() as s:
        tsuids = set(s.scalars(select(Instance.transfer_syntax_uid)))
    compressed = {".4.50", ".4.51", ".4.70", ".4.80", ".4.81", ".4.90", ".4.91", ".5"}
    # every compressed syntax arrives as stored; uncompressed files travel as Explicit VR LE
    assert tsuids == {"1.2.840.10008.1.2.1"} | {f"1.2.840.10008.1.2{c}" for c in compressed}


@needs_dcmtk
def test_echoscu(running_daemon: Callable[..., Any]) -> None:
    """echoscu's C-ECHO gets a success response."""
    daemon = running_daemon()
    proc = subprocess.run(
        [
            str(dcmtk_tool("echoscu")),
            "-to",
            "10",
            "-aec",
            "SCREENER",
            "127.0.0.1",
            str(daemon.listener.port),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr


def test_unknown_calling_ae_is_rejected_and_recorded(
    running_daemon: Callable[..., Any], dicom_file: Callable[..., Path]
) -> None:
    """With allowed_calling_aets set, an unknown caller's association is rejected and the rejection recorded."""
    daemon = running_daemon(listener__allowed_calling_aets="PACS1,MODALITY")
    with pytest.raises(AssertionError, match="not established"):
        c_store(daemon.listener.port, [dicom_file()], calling_aet="INTRUDER")
    # the rejection is recorded by the association's thread after the A-ASSOCIATE-RJ is sent
    (event,) = wait_for(lambda: _audit(daemon, "association_rejected"), 10)
    assert event.reason == "calling_ae_not_recognised" and event.calling_ae_title == "INTRUDER"
    assert c_store(daemon.listener.port, [dicom_file()], calling_aet="PACS1") == [0]


def test_bad_input_gets_its_status_and_reason(
    running_daemon: Callable[..., Any], dicom_file: Callable[..., Path], tmp_path: Path
) -> None:
    """Truncated -> C000, no pixel data -> A900, non-image SOP class -> 0122; each recorded; nothing spooled; still serving."""
    daemon = running_daemon()
    port = daemon.listener.port
    good = dicom_file(rows=256, columns=256)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert c_store(port, [truncated]) == [0xC000]
    assert c_store(port, [dicom_file(pixel_data=False)]) == [0xA900]
    ct = dicom_file(sop_class_uid="1.2.840.10008.5.1.4.1.1.2", modality="CT")  # CT Image Storage
    assert c_store(port, [ct]) == [0x0122]
    reasons = [e.reason for e in _audit(daemon, "store_refused")]
    assert reasons == ["truncated", "no_pixel_data", "unsupported_sop_class"]
    assert _jobs(daemon) == {}
    assert list(Path(daemon.acceptor.spool.root).glob("*/*.dcm")) == []
    assert list(Path(daemon.acceptor.spool.tmp).iterdir()) == []
    assert c_store(port, [good]) == [0]  # the daemon keeps serving
    assert _jobs(daemon) == {"queued": 1}


def test_disk_below_free_space_floor_is_out_of_resources(
    running_daemon: Callable[..., Any], dicom_file: Callable[..., Path]
) -> None:
    """When the spool disk is below storage.min_free_mb the store is refused with A700 and recorded."""
    daemon = running_daemon(storage__min_free_mb=10**9)  # a petabyte floor: always below
    assert c_store(daemon.listener.port, [dicom_file()]) == [0xA700]
    (event,) = _audit(daemon, "store_refused")
    assert event.reason == "out_of_resources" and "min_free_mb" in (event.message or "")
    assert _jobs(daemon) == {}


def test_more_senders_than_max_associations(
    running_daemon: Callable[..., Any], dicom_file: Callable[..., Path]
) -> None:
    """15 senders at once against max_associations = 10: at most 10 associate, each of their
    stores succeeds, the others are rejected and recorded, and nothing is half-stored."""
    import threading

    from pynetdicom import AE

    daemon = running_daemon(listener__max_associations=10)
    port = daemon.listener.port
    files = [dicom_file() for _ in range(15)]
    attempted = threading.Barrier(15, timeout=60)
    outcomes: dict[int, int | str] = {}

    def sender(i: int) -> None:
        ae = AE(ae_title=f"SENDER{i}")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="SCREENER")
        attempted.wait()  # every sender holds its association (or its rejection) at once
        if not assoc.is_established:
            outcomes[i] = "rejected"
            return
        rsp = assoc.send_c_store(files[i])
        outcomes[i] = int(rsp.Status) if "Status" in rsp else -1
        assoc.release()

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(15)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stored = [i for i, o in outcomes.items() if o == 0]
    rejected = [i for i, o in outcomes.items() if o == "rejected"]
    assert len(outcomes) == 15 and len(stored) + len(rejected) == 15, outcomes
    assert 1 <= len(stored) <= 10 and len(rejected) >= 5
    assert _jobs(daemon) == {"queued": len(stored)}
    wait_for(lambda: len(_audit(daemon, "association_rejected")) == len(rejected), 10)
    assert c_store(port, [dicom_file()]) == [0]  # every slot is free again


@pytest.mark.parametrize("policy", ["keep_first", "replace"])
def test_duplicates(
    policy: str, running_daemon: Callable[..., Any], dicom_file: Callable[..., Path]
) -> None:
    """A resend of the same SOP Instance UID makes no second job; a changed resend replaces only under 'replace'."""
    daemon = running_daemon(storage__duplicate_policy=policy)
    port = daemon.listener.port
    first = dicom_file(sop_instance_uid="1.2.3.4.5.6", study_instance_uid="1.2.3.4", seed=1)
    changed = dicom_file(sop_instance_uid="1.2.3.4.5.6", study_instance_uid="1.2.3.4", seed=2)
    assert c_store(port, [first, first]) == [0, 0]
    assert _jobs(daemon) == {"queued": 1}
    assert len(_audit(daemon, "duplicate_ignored")) == 1
    assert c_store(port, [changed]) == [0]
    with daemon.db.transaction() as s:
        inst = s.scalars(select(Instance)).one()
        jobs = s.scalars(select(Job).order_by(Job.id)).all()
        spooled = dcmread(inst.spool_path).PixelData
    if policy == "keep_first":
        assert len(jobs) == 1 and spooled == dcmread(first).PixelData
        assert len(_audit(daemon, "changed_duplicate_ignored")) == 1
    else:
        assert len(jobs) == 2 and jobs[1].state == JobState.QUEUED
        assert spooled == dcmread(changed).PixelData
        assert len(list(Path(daemon.acceptor.spool.root).glob("*/*.dcm"))) == 1  # old file removed


def test_a_lost_spool_file_is_restored_by_a_resend(
    running_daemon: Callable[..., Any], dicom_file: Callable[..., Path]
) -> None:
    """If an instance's spooled file has gone, the same instance sent again is written back and queued anew."""
    daemon = running_daemon()
    image = dicom_file()
    assert c_store(daemon.listener.port, [image]) == [0]
    with daemon.db.transaction() as s:
        spooled = Path(s.scalars(select(Instance.spool_path)).one())
    spooled.unlink()
    assert c_store(daemon.listener.port, [image]) == [0]
    assert spooled.is_file()
    assert _jobs(daemon) == {"queued": 2}
    assert len(_audit(daemon, "instance_restored")) == 1


@pytest.mark.parametrize(
    ("prefer_compressed", "accepted"),
    [(True, "1.2.840.10008.1.2.4.50"), (False, "1.2.840.10008.1.2.1")],
)
def test_transfer_syntax_preference(
    prefer_compressed: bool, accepted: str, running_daemon: Callable[..., Any], dicom_dir: Path
) -> None:
    """A sender offering JPEG Baseline and Explicit VR gets uncompressed by default, JPEG with listener.prefer_compressed."""
    from pynetdicom import AE

    daemon = running_daemon(listener__prefer_compressed=prefer_compressed)
    film = sorted((dicom_dir / "siim_chest_cr").glob("*.dcm"))[0]
    ae = AE(ae_title="PACS")
    ae.add_requested_context(
        "1.2.840.10008.5.1.4.1.1.7", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50"]
    )
    assoc = ae.associate("127.0.0.1", daemon.listener.port, ae_title="SCREENER")
    assert assoc.is_established
    try:
        (context,) = assoc.accepted_contexts
        assert context.transfer_syntax[0] == accepted
        if prefer_compressed:  # the JPEG file goes as it is
            assert assoc.send_c_store(film).Status == 0
    finally:
        assoc.release()
