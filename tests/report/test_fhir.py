"""The FHIR channel: a transaction Bundle (DiagnosticReport, Observation, Device) to a FHIR
server process that validates each resource with fhir.resources (tests/report/fhir_server.py);
a retry never duplicates; 4xx dead at once, 5xx and no server retried, then dead-lettered."""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dicomnet.test_tls import _ca, _leaf
from fhir.resources.R4B import get_fhir_model_class
from sqlalchemy import update
from structlog.testing import capture_logs
from support import ChildPeer, exporter_refuses, stopping

from screener.config import Settings
from screener.db import Export
from screener.report.export import Exporter
from screener.report.fhir_bundle import validated
from screener.report.header import ReportError

SERVER = Path(__file__).with_name("fhir_server.py")
TOKEN = "s3cret-token"


class FhirServer(ChildPeer):
    """One fhir_server.py process: its base URL and the folder of what it stored."""

    scheme = "http"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/fhir"

    def start(self, *options: str) -> FhirServer:
        if "--certificate" in options:
            self.scheme = "https"
        argv = [sys.executable, str(SERVER), str(self.port), str(self.folder), *options]
        self.launch(argv, (self.folder / "ready").exists, 30, stderr=subprocess.DEVNULL)
        return self

    def stored(self, kind: str) -> list[dict[str, Any]]:
        """The resources of one type the server holds, each validated again (R4B)."""
        found = []
        for path in sorted((self.folder / kind).glob("*.json")):
            resource = json.loads(path.read_text())
            get_fhir_model_class(kind).model_validate(resource)
            found.append(resource)
        return found


@pytest.fixture
def fhir_server(tmp_path: Path) -> Iterator[Callable[..., FhirServer]]:
    """Factory for FHIR servers (not started); each is killed at teardown."""
    count = itertools.count()
    yield from stopping(lambda: FhirServer(tmp_path / f"fhir-{next(count)}"))


@pytest.fixture
def reporting(
    db_url: str,
    make_settings: Callable[..., Settings],
    screened: Callable[..., Any],
    tmp_path: Path,
) -> Callable[..., Any]:
    """``reporting(server, n=1, **settings)``: ``n`` screened results (in the ``db_url``
    database) whose reports go to ``server``, logging in with :data:`TOKEN`."""

    def make(server: FhirServer, n: int = 1, **kw: Any) -> Any:
        token = tmp_path / "fhir-token"
        token.write_text(TOKEN + "\n")
        values: dict[str, Any] = {
            "fhir__base_url": server.base_url,
            "fhir__token_file": str(token),
            "fhir__timeout_seconds": 5,
            "export__backoff_seconds": 0,  # a failed row is due again at once: the next pass retries
            "export__max_attempts": 2,
            **kw,
        }
        return screened(make_settings(db_url, **values), n)

    return make


def test_a_valid_report_is_held_by_the_server_and_a_retry_does_not_duplicate_it(
    fhir_server: Callable[..., FhirServer],
    reporting: Callable[..., Any],
    model_uid: str,
) -> None:
    """Two results become two DiagnosticReports with their Observations and one Device (the
    model bundle), references resolved by the server; the receipts are the locations; a row
    sent again finds its resources (ifNoneExist) instead of duplicating them."""
    server = fhir_server().start("--token", TOKEN)
    s = reporting(server, 2, fhir__patient_id_system="urn:oid:1.2.3")
    exporter = Exporter(s.db, s.settings)
    with capture_logs() as logs:
        assert exporter.deliver_due() == 2
    assert "PHI-12345" not in repr(logs) and TOKEN not in repr(logs)

    exports = s.exports()
    assert [e.state for e in exports] == ["delivered", "delivered"]
    for export in exports:
        assert "201 Created DiagnosticReport/" in (export.receipt or "")
    (device,) = server.stored("Device")
    assert device["identifier"][0]["value"] == f"urn:oid:{model_uid}"
    assert device["version"][0]["value"] == "1.0.0"
    reports = server.stored("DiagnosticReport")
    observations = {f"Observation/{o['id']}": o for o in server.stored("Observation")}
    assert len(reports) == 2 and len(observations) == 2
    uids = {f"urn:oid:{e.sr_sop_instance_uid}" for e in exports}
    assert {r["identifier"][0]["value"] for r in reports} == uids
    for report in reports:
        observation = observations[report["result"][0]["reference"]]
        assert observation["code"]["coding"][0]["code"] == "233604007"
        assert observation["valueCodeableConcept"]["coding"][0]["code"] == "52101004"
        assert observation["component"][0]["valueQuantity"]["value"] == 83.0
        assert observation["device"]["reference"] == f"Device/{device['id']}"
        assert report["subject"]["identifier"] == {"system": "urn:oid:1.2.3", "value": "PHI-12345"}
        assert report["basedOn"][0]["identifier"]["value"] == "ACC1"
        assert report["imagingStudy"][0]["identifier"]["value"].startswith("urn:oid:1.2.")

    # the answer was lost: the row is sent again and finds what the first send made
    with s.db.transaction() as session:
        session.execute(
            update(Export)
            .where(Export.id == exports[0].id)
            .values(state="pending", next_attempt_at=exports[0].created_at)
        )
    assert exporter.deliver_due() == 1
    assert len(server.stored("DiagnosticReport")) == 2 and len(server.stored("Observation")) == 2
    assert "200 OK DiagnosticReport/" in (s.exports()[0].receipt or "")


def test_a_report_the_server_refuses_is_dead_at_once(
    fhir_server: Callable[..., FhirServer],
    reporting: Callable[..., Any],
) -> None:
    """A 422 with an OperationOutcome (the server's profile needs a subject, none is sent
    without fhir.patient_id_system) dead-letters the row after one attempt, with the issue's
    code and path."""
    server = fhir_server().start("--require-subject")
    s = reporting(server)
    assert Exporter(s.db, s.settings).deliver_due() == 0
    (export,) = s.exports()
    assert (export.state, export.attempts) == ("dead", 1)
    assert export.last_error == (
        "permanent: the FHIR server answered 422: "
        "error/required at Bundle.entry[2].resource.subject"
    )


def test_a_wrong_token_is_refused_for_good(
    fhir_server: Callable[..., FhirServer],
    reporting: Callable[..., Any],
) -> None:
    """A 401 (the token is not the server's) is permanent: the row waits for `exports retry`."""
    server = fhir_server().start("--token", "another-token")
    s = reporting(server)
    assert Exporter(s.db, s.settings).deliver_due() == 0
    (export,) = s.exports()
    assert (export.state, export.last_error) == (
        "dead",
        "permanent: the FHIR server answered 401: error/login",
    )


@pytest.mark.parametrize("answer", ["503", "429", "down"])
def test_an_unavailable_server_is_retried_then_dead_lettered(
    answer: str,
    fhir_server: Callable[..., FhirServer],
    reporting: Callable[..., Any],
) -> None:
    """5xx, 429 and no server at all are transient: the row backs off, is tried again, and is
    dead-lettered after export.max_attempts."""
    server = fhir_server()
    if answer != "down":
        server.start("--answer", answer)
    s = reporting(server)
    exporter = Exporter(s.db, s.settings)
    expected = (
        "transient: no answer from http://127.0.0.1:"
        if answer == "down"
        else f"transient: the FHIR server answered {answer}"
    )
    assert exporter.deliver_due() == 0
    (export,) = s.exports()
    assert (export.state, export.attempts) == ("pending", 1)
    assert (export.last_error or "").startswith(expected)
    assert exporter.deliver_due() == 0
    (export,) = s.exports()
    assert (export.state, export.attempts) == ("dead", 2)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site's CA and the certificates it signed: screener's and the FHIR server's."""
    folder = tmp_path_factory.mktemp("pki")
    _ca(folder, "ca")
    _leaf(folder, "screener", "ca")
    _leaf(folder, "fhir", "ca")
    return folder


def test_a_server_that_requires_a_client_certificate_gets_ours(
    pki: Path,
    fhir_server: Callable[..., FhirServer],
    reporting: Callable[..., Any],
) -> None:
    """Mutual TLS: to a server that requires a certificate from the site's CA, a channel
    without tls.certificate fails the handshake (transient: nothing stored, the row backs off
    for a retry); once tls.certificate is set the retry presents it and delivers."""
    ca = str(pki / "ca.pem")
    server = fhir_server().start(
        "--token", TOKEN, "--certificate", str(pki / "fhir.pem"), "--key", str(pki / "fhir.key"),
        "--client-ca", ca,
    )  # fmt: skip
    s = reporting(server, fhir__ca_certificates=ca)
    assert Exporter(s.db, s.settings).deliver_due() == 0
    (export,) = s.exports()
    assert (export.state, export.attempts) == ("pending", 1)
    assert (export.last_error or "").startswith(f"transient: no answer from {server.base_url}")
    assert server.stored("DiagnosticReport") == []

    ours = dataclasses.replace(
        s.settings.tls,
        certificate=str(pki / "screener.pem"),
        private_key=str(pki / "screener.key"),
    )
    exporter = Exporter(s.db, dataclasses.replace(s.settings, tls=ours))
    assert exporter.deliver_due() == 1
    (export,) = s.exports()
    assert (export.state, export.attempts) == ("delivered", 2)
    assert "201 Created DiagnosticReport/" in (export.receipt or "")
    assert len(server.stored("DiagnosticReport")) == 1


def test_the_test_server_validates_each_resource(fhir_server: Callable[..., FhirServer]) -> None:
    """The test server answers 400 with an OperationOutcome naming the element for a resource
    that is not valid R4 (so the delivery tests above can fail)."""
    server = fhir_server().start()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Observation", "code": {"text": "x"}},
                "request": {"method": "POST", "url": "Observation"},
            }
        ],
    }
    request = urllib.request.Request(
        server.base_url,
        data=json.dumps(bundle).encode(),
        headers={"Content-Type": "application/fhir+json"},
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 400
    body = json.loads(raised.value.read())
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["expression"] == ["Bundle.entry.0.resource.status"]


def test_an_invalid_bundle_never_leaves_and_names_no_value() -> None:
    """Local validation (fhir.resources R4B) refuses a Bundle with an invalid element, naming
    its path and rule but not its value."""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "x"},
                    "valueQuantity": {"value": "PHI-12345"},
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        ],
    }
    with pytest.raises(ReportError, match=r"entry\.0\.resource\.valueQuantity\.value") as raised:
        validated(bundle)
    assert "PHI-12345" not in str(raised.value)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("fhir__token_file", r"fhir\.token_file cannot be read"),
        ("fhir__ca_certificates", r"fhir\.ca_certificates = .* is invalid: no such file"),
        ("tls__certificate", r"tls\.certificate = .* is invalid: no such file"),
    ],
)
def test_an_unreadable_token_or_tls_file_stops_start_up(
    option: str,
    message: str,
    db_url: str,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    """A token file, a CA file or a certificate that cannot be used is a configuration error
    when the exporter starts, naming the option."""
    settings = make_settings(
        db_url, fhir__base_url="https://fhir.example/fhir", **{option: str(tmp_path / "missing")}
    )
    exporter_refuses(settings, message)
