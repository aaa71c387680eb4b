"""Rescans against a real PACS: dcmtk's dcmqrscp, C-FIND then C-MOVE to our running listener."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from rescan.rescan_support import Dcmqrscp, Store, study_uid
from sqlalchemy import select
from support import free_port, wait_for

from screener.commands import rescan as rescan_command
from screener.db import Instance, Job, Study
from screener.dicomnet.peers import Peer
from screener.errors import ConfigError
from screener.rescan import run_rescan
from screener.rescan.query import parse_pacs


def _queued_studies(daemon: Any) -> list[str]:
    with daemon.db.transaction() as s:
        rows = s.scalars(
            select(Study.study_instance_uid)
            .join(Instance, Instance.study_id == Study.id)
            .join(Job, Job.instance_id == Instance.id)
            .where(Job.state == "queued")
        )
        return sorted(rows)


def test_rescan_retrieves_missed_studies_from_a_real_pacs(
    db_url: str,
    running_daemon: Callable[..., Any],
    dcmqrscp: Callable[..., Dcmqrscp],
    recent_copies: Callable[..., list[Path]],
    siim_films: list[Path],
) -> None:
    """C-FIND finds the 3 recent CR studies (not an OT one, not a 1901 one), C-MOVE brings them to our listener as queued jobs; a second rescan retrieves nothing."""
    port = free_port()
    pacs = dcmqrscp({"SCREENER": port})
    chest = recent_copies(3)
    other = recent_copies(1, modality="OT", offset=3)
    pacs.store([*chest, *other, siim_films[4]])  # siim_films[4] is dated 19010101
    daemon = running_daemon(db_url, listener__port=port, rescan__pacs=pacs.address)
    expected = sorted(study_uid(p) for p in chest)

    summary = run_rescan(daemon.settings, progress=False)

    assert summary.ok, summary.errors
    assert summary.studies_found == 3 and summary.studies_in_hand == 0
    assert sorted(s.study_instance_uid for s in summary.missing) == expected
    assert {s.accession_number for s in summary.missing} == {"RS0000", "RS0001", "RS0002"}
    assert sorted(summary.retrieved) == expected and summary.retrieve_failed == []
    assert (summary.move_completed, summary.move_failed, summary.move_warning) == (3, 0, 0)
    wait_for(lambda: _queued_studies(daemon) == expected)
    with daemon.db.transaction() as s:
        received = s.execute(select(Instance.source, Instance.calling_ae_title)).all()
    assert sorted(received) == [("dicom", "PACS")] * 3

    again = run_rescan(daemon.settings, progress=False)
    assert again.ok and again.studies_found == 3 and again.studies_in_hand == 3
    assert again.missing == [] and again.retrieved == [] and again.move_completed == 0
    assert _queued_studies(daemon) == expected


def test_dry_run_lists_missing_studies_and_retrieves_nothing(
    store: Callable[..., Store],
    dcmqrscp: Callable[..., Dcmqrscp],
    recent_copies: Callable[..., list[Path]],
    siim_films: list[Path],
) -> None:
    """--dry-run names the studies it would retrieve (also an old one with --since/--until) and sends no C-MOVE."""
    port = free_port()
    pacs = dcmqrscp({"SCREENER": port})
    chest = recent_copies(2)
    pacs.store([*chest, siim_films[4]])
    st = store(listener__port=port, rescan__pacs=pacs.address)

    recent = run_rescan(st.settings, progress=False, dry_run=True)
    old = run_rescan(
        st.settings,
        progress=False,
        dry_run=True,
        since=datetime(1901, 1, 1),
        until=datetime(1901, 1, 1, 23, 59),
    )

    assert sorted(s.study_instance_uid for s in recent.missing) == sorted(map(study_uid, chest))
    assert [s.study_instance_uid for s in old.missing] == [study_uid(siim_films[4])]
    assert old.missing[0].study_date == "19010101"
    for summary in (recent, old):
        assert summary.retrieved == [] and summary.move_completed == 0 and summary.ok
    assert "C-FIND RQ" in pacs.log() and "C-MOVE RQ" not in pacs.log()
    with st.db.transaction() as s:
        assert s.scalars(select(Instance)).all() == []


def test_unknown_move_destination_is_counted_as_failed_retrieval(
    store: Callable[..., Store],
    dcmqrscp: Callable[..., Dcmqrscp],
    recent_copies: Callable[..., list[Path]],
) -> None:
    """A Move Destination the PACS does not know (A801) puts the study in retrieve_failed and fails the run."""
    pacs = dcmqrscp({"SCREENER": free_port()})
    chest = recent_copies(1)
    pacs.store(chest)
    st = store(rescan__pacs=pacs.address, rescan__move_destination="NOBODY")
    summary = run_rescan(st.settings, progress=False)
    assert summary.retrieve_failed == [study_uid(chest[0])] and summary.retrieved == []
    assert not summary.ok


def _command(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    rescan_command.register(parser.add_subparsers())
    return parser.parse_args(["rescan", *argv])


def test_command_prints_json_and_fails_when_the_pacs_is_unreachable(
    store: Callable[..., Store], capsys: pytest.CaptureFixture[str]
) -> None:
    """`screener rescan --json` with no PACS listening exits 1 and says it could not associate; progress goes to stderr."""
    st = store(rescan__pacs=f"PACS@127.0.0.1:{free_port()}")
    code = rescan_command.run(_command(["--json"]), st.settings)
    out, err = capsys.readouterr()
    report = json.loads(out[out.index("{\n") :])  # structlog's test default also writes to stdout
    assert code == 1
    assert report["errors"] and "cannot associate with PACS" in report["errors"][0]
    assert report["studies_found"] == 0 and report["dry_run"] is False
    assert "rescan: PACS" in err


def test_command_dry_run_text_summary(
    store: Callable[..., Store],
    dcmqrscp: Callable[..., Dcmqrscp],
    recent_copies: Callable[..., list[Path]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`screener rescan --dry-run --since DATE` ends with a summary naming the count it would retrieve."""
    pacs = dcmqrscp({"SCREENER": free_port()})
    chest = recent_copies(1)
    pacs.store(chest)
    st = store(rescan__pacs=pacs.address)
    day = dcmread(chest[0], stop_before_pixels=True).StudyDate
    since = f"{day[:4]}-{day[4:6]}-{day[6:]}"
    code = rescan_command.run(_command(["--dry-run", "--since", since]), st.settings)
    out, err = capsys.readouterr()
    assert code == 0
    assert "dry run: nothing changed" in out
    assert "1 studies would be retrieved" in out
    assert f"would retrieve {study_uid(chest[0])}" in err


def test_pacs_address_is_parsed_and_bad_values_name_the_key() -> None:
    """AE@HOST:PORT parses (IPv6 in brackets too); a missing part, a long AE title or a bad port is a ConfigError naming rescan.pacs."""
    assert parse_pacs("PACS@10.0.0.5:104") == Peer("PACS", "10.0.0.5", 104)
    assert parse_pacs("ARCH@[::1]:11112") == Peer("ARCH", "::1", 11112)
    for bad in (
        "PACS",
        "10.0.0.5:104",
        "PACS@10.0.0.5",
        "A" * 17 + "@h:104",
        "PACS@h:x",
        "PACS@h:0",
    ):
        with pytest.raises(ConfigError, match=r"rescan\.pacs"):
            parse_pacs(bad)
