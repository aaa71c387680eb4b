"""The STOW-RS channel against a real DICOMweb service (Orthanc's DICOMweb plugin): our SR
lands by STOW-RS and is found by QIDO-RS; a refused or unreachable service is retried and
dead-lettered as PS3.18 10.5.3 and report/stow.py say."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dicomnet.test_tls import pki  # noqa: F401
from orthanc_web import PASSWORD, USER, OrthancWeb, orthanc_web  # noqa: F401
from sqlalchemy import select
from support import free_port

from screener.config import Settings
from screener.db import Database, Export, Instance, Result, Study
from screener.errors import ConfigError
from screener.report.export import Exporter, export_counts, retry_dead
from screener.report.stow import Answer, judge, parse_answer, read_auth_file

SR_3D = "1.2.840.10008.5.1.4.1.1.88.34"


#: the dicomweb.auth_file line with the credentials Orthanc takes
CREDENTIALS = f"Basic {USER}:{PASSWORD}"


def _settings(
    make_settings: Callable[..., Settings], db_url: str, url: str, auth: Path | None, **kw: Any
) -> Settings:
    values: dict[str, Any] = {
        "export__destinations": [url],
        "export__backoff_seconds": 0,  # due again at once: each pass is the next attempt
        "export__backoff_max_seconds": 0,
        "export__timeout_seconds": 10,
        "export__max_attempts": 3,
        "dicomweb__auth_file": str(auth) if auth else "",
    }
    values.update(kw)
    return make_settings(db_url, **values)


def _auth(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "stow-auth"
    path.write_text(line + "\n")
    path.chmod(0o600)
    return path


def _study_of(db: Database, export: Export) -> str:
    """The Study Instance UID of the film an export's result is about."""
    with db.transaction() as session:
        return str(
            session.scalar(
                select(Study.study_instance_uid)
                .join(Instance, Instance.study_id == Study.id)
                .join(Result, Result.instance_id == Instance.id)
                .where(Result.id == export.result_id)
            )
        )


@dataclass
class Sending:
    """Screened results whose SRs go to one STOW-RS URL, and the exporter that sends them."""

    screened: Any
    exporter: Exporter
    #: where the dicomweb.auth_file is written
    auth: Path
    #: the settings for a URL and an auth file line (None: no file), with the same options
    settings_for: Callable[[str, str | None], Settings]

    def attempt(self, delivered: int) -> list[Export]:
        """One exporter pass, which delivers ``delivered`` rows; every row after it."""
        assert self.exporter.deliver_due() == delivered
        return list(self.screened.exports())

    def exporter_for(self, url: str) -> Exporter:
        """An exporter of the same rows configured for ``url`` with the credentials Orthanc
        takes (the site changed its configuration)."""
        return Exporter(self.screened.db, self.settings_for(url, CREDENTIALS))


@pytest.fixture
def sending(
    tmp_path: Path,
    sqlite_url: str,
    make_settings: Callable[..., Settings],
    screened: Callable[..., Any],
) -> Callable[..., Sending]:
    """``sending(url, credentials, n=1, db_url=SQLite, **settings)``: ``n`` results bound for
    the STOW-RS service at ``url``, logging in with ``credentials`` (an auth file line; None:
    no auth file)."""

    def make(
        url: str, credentials: str | None = CREDENTIALS, n: int = 1, db_url: str = "", **kw: Any
    ) -> Sending:

        def settings_for(to: str, login: str | None) -> Settings:
            auth = _auth(tmp_path, login) if login else None
            return _settings(make_settings, db_url or sqlite_url, to, auth, **kw)

        s = screened(settings_for(url, credentials), n)
        return Sending(s, Exporter(s.db, s.settings), tmp_path / "stow-auth", settings_for)

    return make


def test_sr_lands_in_orthanc_by_stow_and_is_found_by_qido(
    db_url: str,
    sending: Callable[..., Sending],
    orthanc_web: Callable[..., OrthancWeb],  # noqa: F811
) -> None:
    """Two results go to Orthanc by STOW-RS with Basic credentials from the auth file; QIDO-RS finds each SR in its film's study; the receipt is recorded; nothing is sent twice."""
    pacs = orthanc_web()
    sent = sending(pacs.dicomweb, n=2, db_url=db_url)
    exports = sent.attempt(2)
    assert [(e.state, e.attempts) for e in exports] == [("delivered", 1)] * 2
    for export in exports:
        assert (export.receipt or "").startswith("STOW-RS HTTP 200, 1 instance(s) stored")
        study = _study_of(sent.screened.db, export)
        sr = pacs.qido_instance(study, str(export.sr_sop_instance_uid))
        assert sr["00080016"]["Value"] == [SR_3D]
        assert sr["00080018"]["Value"] == [export.sr_sop_instance_uid]
        assert sr["0020000D"]["Value"] == [study]
    sent.attempt(0)
    status, studies = pacs.call("GET", "/dicom-web/studies")
    assert status == 200 and len(studies) == 2


def test_unreachable_service_is_retried_then_dead_then_sent_after_retry(
    sending: Callable[..., Sending],
    orthanc_web: Callable[..., OrthancWeb],  # noqa: F811
) -> None:
    """A STOW-RS service that is down: each pass a transient failure, dead after max_attempts; `exports retry` then delivers once the service is up."""
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}/dicom-web"
    sent = sending(url, None)
    for attempt in (1, 2):
        (export,) = sent.attempt(0)
        assert (export.state, export.attempts) == ("pending", attempt)
        assert (export.last_error or "").startswith(f"transient: STOW-RS service {url} not reached")
    (export,) = sent.attempt(0)
    assert (export.state, export.attempts) == ("dead", 3)
    assert export_counts(sent.screened.db) == {"pending": 0, "delivered": 0, "dead": 1}

    sent.attempt(0)  # dead: not tried again

    pacs = orthanc_web(http_port=port)  # the service comes up; its credentials are configured
    assert pacs.dicomweb == url
    fixed = sent.exporter_for(url)
    assert retry_dead(sent.screened.db) == 1
    assert fixed.deliver_due() == 1
    (export,) = sent.screened.exports()
    assert (export.state, export.last_error) == ("delivered", None)


def test_https_service_is_verified_against_the_configured_ca(
    sending: Callable[..., Sending],
    orthanc_web: Callable[..., OrthancWeb],  # noqa: F811
    pki: Path,  # noqa: F811
) -> None:
    """Over HTTPS the service's certificate must chain to dicomweb.ca_certificates: one signed by another CA is a transient TLS failure with nothing sent; the site CA's is delivered."""
    pacs = orthanc_web()
    rogue = pacs.https_front(pki / "fakepacs.pem", pki / "fakepacs.key")
    good = pacs.https_front(pki / "pacs.pem", pki / "pacs.key")
    sent = sending(rogue, dicomweb__ca_certificates=str(pki / "ca.pem"))
    (export,) = sent.attempt(0)
    assert export.state == "pending"
    assert "transient: STOW-RS service" in (export.last_error or "")
    assert "CERTIFICATE_VERIFY_FAILED" in (export.last_error or "")
    assert pacs.call("GET", "/dicom-web/studies")[1] == []

    with (
        sent.screened.db.transaction() as session
    ):  # the site points the delivery at the right front
        row = session.get(Export, export.id)
        assert row is not None
        row.destination = good
    assert sent.exporter_for(good).deliver_due() == 1
    status, studies = pacs.call("GET", "/dicom-web/studies")
    assert status == 200 and len(studies) == 1


def test_not_found_is_permanent_and_dead_at_once(
    sending: Callable[..., Sending],
    orthanc_web: Callable[..., OrthancWeb],  # noqa: F811
) -> None:
    """A base URL the service does not serve (HTTP 404) is a permanent refusal: dead after one attempt."""
    pacs = orthanc_web()
    (export,) = sending(f"http://127.0.0.1:{pacs.http_port}/no-such-dicom-web").attempt(0)
    assert (export.state, export.attempts) == ("dead", 1)
    assert export.last_error == "permanent: STOW-RS answered HTTP 404"


def test_refused_credentials_are_retried_and_a_renewed_file_is_read(
    sending: Callable[..., Sending],
    orthanc_web: Callable[..., OrthancWeb],  # noqa: F811
) -> None:
    """HTTP 401 (a wrong or expired password) is transient; the auth file is read again before the next try, which delivers; the password is in no error or receipt."""
    sent = sending(orthanc_web().dicomweb, f"Basic {USER}:expired-password")
    (export,) = sent.attempt(0)
    assert (export.state, export.last_error) == ("pending", "transient: STOW-RS answered HTTP 401")
    sent.auth.write_text(CREDENTIALS + "\n")
    (export,) = sent.attempt(1)
    assert (export.state, export.attempts) == ("delivered", 2)
    assert "password" not in json.dumps([export.last_error, export.receipt])


def test_credentials_are_refused_in_clear_text_to_another_host(
    tmp_path: Path, sqlite_url: str, make_settings: Callable[..., Settings]
) -> None:
    """An auth file with an http:// destination that is not this machine stops start-up; a malformed auth file too, without quoting it."""
    auth = _auth(tmp_path, "Bearer abc")
    settings = _settings(make_settings, sqlite_url, "http://pacs.example/dicom-web", auth)
    with pytest.raises(ConfigError, match="clear text"):
        Exporter(Database(settings.database.url), settings)
    bad = _auth(tmp_path, "Token sekrit-value")
    with pytest.raises(ConfigError, match="Bearer TOKEN") as raised:
        read_auth_file(str(bad))
    assert "sekrit" not in str(raised.value)
    assert read_auth_file(str(_auth(tmp_path, "Bearer t0ken"))) == "Bearer t0ken"
    assert read_auth_file(str(_auth(tmp_path, "Basic a:b"))) == "Basic YTpi"


def _failed(uid: str, reason: int) -> bytes:
    """A Store Instances Response (DICOM JSON) failing ``uid`` with ``reason``."""
    item = {"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [reason]}}
    return json.dumps({"00081198": {"vr": "SQ", "Value": [item]}}).encode()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b"", None),
        (202, _failed("1.2.3.9", 0xA700), None),  # another instance's failure
        (202, _failed("1.2.3", 0xA700), "transient"),  # Refused: Out of Resources
        (202, _failed("1.2.3", 0x0110), "transient"),  # Processing failure
        (202, _failed("1.2.3", 0xA900), "permanent"),  # does not match SOP Class
        (202, _failed("1.2.3", 0xC000), "permanent"),  # Cannot understand
        (409, _failed("1.2.3", 0x0122), "permanent"),  # SOP Class not supported
        (409, _failed("1.2.3", 0x0111), None),  # already held: a resend
        (409, b"", "permanent"),
        (400, b"", "permanent"),
        (403, b"", "permanent"),
        (413, b"", "permanent"),
        (303, b"", "permanent"),
        (401, b"", "transient"),
        (408, b"", "transient"),
        (429, b"", "transient"),
        (503, b"", "transient"),
    ],
)
def test_answers_map_to_delivered_transient_or_permanent(
    status: int, body: bytes, expected: str | None
) -> None:
    """Each STOW-RS status and per-instance Failure Reason decides as the channel documents."""
    answer = parse_answer(status, "application/dicom+json", body)
    assert answer is not None
    failure = judge(answer, ["1.2.3"])
    got = None if failure is None else ("permanent" if failure.permanent else "transient")
    assert got == expected


def test_native_dicom_model_answer_is_read_and_a_dtd_is_not() -> None:
    """An XML Store Instances Response gives its Failure Reasons; one with a DTD is not parsed (no entity expansion)."""
    xml = (
        b'<?xml version="1.0"?><NativeDicomModel><DicomAttribute tag="00081198" vr="SQ">'
        b'<Item number="1"><DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2.3'
        b'</Value></DicomAttribute><DicomAttribute tag="00081197" vr="US"><Value number="1">'
        b"42752</Value></DicomAttribute></Item></DicomAttribute></NativeDicomModel>"
    )
    answer = parse_answer(202, "application/dicom+xml", xml)
    assert answer == Answer(202, {"1.2.3": 0xA700}, frozenset())
    bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>'
    assert parse_answer(202, "application/dicom+xml", bomb) is None
