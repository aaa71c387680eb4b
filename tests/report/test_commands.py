"""``screener exports list|retry``: registered as a sub-command, run against a real database."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import pytest
from support import free_port

from screener.commands import exports
from screener.config import Settings
from screener.report.export import Exporter, export_counts


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="screener")
    exports.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["exports", *argv])


def _dead_exports(
    db_url: str, make_settings: Callable[..., Settings], screened: Callable[..., Any]
) -> tuple[Settings, str, Any]:
    destination = f"PACS@127.0.0.1:{free_port()}"  # nothing listens
    settings = make_settings(db_url, export__destinations=[destination], export__max_attempts=1)
    s = screened(settings, 2)
    Exporter(s.db, settings).deliver_due()
    return settings, destination, s


def test_exports_list_shows_dead_exports_with_their_error(
    db_url: str,
    make_settings: Callable[..., Settings],
    screened: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`exports list --state dead --json` lists each dead export with destination, attempts and last error."""
    settings, destination, _ = _dead_exports(db_url, make_settings, screened)
    capsys.readouterr()  # structlog's default output while setting up
    assert exports.run(_parse("list", "--state", "dead", "--json"), settings) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2
    assert {(r["state"], r["destination"], r["attempts"]) for r in rows} == {
        ("dead", destination, 1)
    }
    assert all(r["last_error"] and r["sr_sop_instance_uid"] for r in rows)
    assert "Doe^Jane" not in json.dumps(rows)

    assert exports.run(_parse("list", "--state", "delivered"), settings) == 0
    assert capsys.readouterr().out.strip() == "no exports"
    assert exports.run(_parse("list"), settings) == 0
    text = capsys.readouterr().out
    assert text.count("dead") >= 2 and "last error:" in text


def test_exports_retry_sets_dead_exports_pending(
    db_url: str,
    make_settings: Callable[..., Settings],
    screened: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`exports retry` turns every dead export pending again with no attempts."""
    settings, destination, s = _dead_exports(db_url, make_settings, screened)
    capsys.readouterr()
    assert exports.run(_parse("retry", "--destination", destination), settings) == 0
    assert "2 dead export(s) set pending again" in capsys.readouterr().out
    assert export_counts(s.db) == {"pending": 2, "delivered": 0, "dead": 0}


def test_exports_list_names_each_rows_channel_and_filters_by_it(
    db_url: str,
    make_settings: Callable[..., Settings],
    screened: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A result planned to a C-STORE, a STOW-RS, an MLLP and a FHIR destination has one row per
    channel; `exports list --channel` picks each one alone, and the text names the channel."""
    settings = make_settings(
        db_url,
        export__destinations=["PACS@127.0.0.1:104", "https://pacs.example.org/dicom-web/"],
        hl7__destinations=["mllp://ris.example.org:2575"],
        fhir__base_url="https://ehr.example.org/fhir/",
    )
    screened(settings, 1)
    capsys.readouterr()
    assert exports.run(_parse("list", "--json"), settings) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["channel"], r["destination"], r["payload"]) for r in rows} == {
        ("dimse", "PACS@127.0.0.1:104", "result"),
        ("stow", "https://pacs.example.org/dicom-web", "result"),
        ("hl7", "mllp://ris.example.org:2575", "result"),
        ("fhir", "fhir+https://ehr.example.org/fhir", "result"),
    }
    for channel in ("dimse", "stow", "hl7", "fhir"):
        assert exports.run(_parse("list", "--channel", channel, "--json"), settings) == 0
        (row,) = json.loads(capsys.readouterr().out)
        assert row["channel"] == channel
    assert exports.run(_parse("list", "--channel", "hl7"), settings) == 0
    assert " hl7 " in capsys.readouterr().out


def test_status_and_metrics_give_each_destination_its_waiting_and_dead(
    db_url: str,
    make_settings: Callable[..., Settings],
    screened: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`screener status` (text and JSON) and the metrics list every configured destination with
    its channel, how many deliveries wait and how many are dead: an unreachable PACS with its 2
    dead letters, an idle FHIR server with none."""
    from prometheus_client import generate_latest

    from screener.commands import status
    from screener.serve.health import registry_for

    settings, destination, s = _dead_exports(db_url, make_settings, screened)
    fhir = "http://127.0.0.1:9/fhir"  # configured after the results: nothing planned for it
    settings = make_settings(
        db_url, export__destinations=[destination], fhir__base_url=fhir, export__max_attempts=1
    )
    capsys.readouterr()
    parser = argparse.ArgumentParser(prog="screener")
    status.register(parser.add_subparsers(dest="command", required=True))
    status.run(parser.parse_args(["status", "--json"]), settings)
    report = json.loads(capsys.readouterr().out)
    assert report["destinations"] == [
        {"destination": destination, "channel": "dimse", "pending": 0, "dead": 2},
        {"destination": "fhir+" + fhir, "channel": "fhir", "pending": 0, "dead": 0},
    ]
    status.run(parser.parse_args(["status"]), settings)
    text = capsys.readouterr().out
    assert f"dimse {destination:<40} pending     0  dead     2" in text
    assert f"fhir  {'fhir+' + fhir:<40} pending     0  dead     0" in text

    scraped = generate_latest(registry_for(s.db, None, None, ["fhir+" + fhir])).decode()
    waiting = [
        line for line in scraped.splitlines() if line.startswith("screener_exports_waiting{")
    ]
    assert (
        f'screener_exports_waiting{{channel="dimse",destination="{destination}",state="dead"}} 2.0'
        in waiting
    )
    assert (
        f'screener_exports_waiting{{channel="fhir",destination="fhir+{fhir}",state="pending"}} 0.0'
        in waiting
    )
