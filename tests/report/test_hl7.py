"""The HL7 v2 channel: ORU^R01 over MLLP to a real receiver process (tests/report/mllp_server.py),
its ACK recorded; AE dead at once, AR and no answer retried, then dead-lettered."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicomnet.test_tls import _ca, _leaf
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from structlog.testing import capture_logs
from support import ChildPeer, build_dicom, stopping

from screener.config import Hl7Settings, Settings
from screener.db import Result
from screener.errors import ConfigError
from screener.report.delivery import Delivery
from screener.report.destinations import parse_target
from screener.report.export import Exporter
from screener.report.hl7 import Ack, AckError, outcome, parse_ack
from screener.report.objects import finding_of
from screener.report.oru import build_oru, control_id, escape

SERVER = Path(__file__).with_name("mllp_server.py")


class Receiver(ChildPeer):
    """One mllp_server.py process: its port and the folder of what it received."""

    @property
    def destination(self) -> str:
        return f"mllp://127.0.0.1:{self.port}"

    def start(self, answer: str, *tls: str) -> Receiver:
        """Start it answering ``answer``; over TLS with ``tls`` = (certificate, key, CA)."""
        (self.folder / "ready").unlink(missing_ok=True)
        argv = [sys.executable, str(SERVER), str(self.port), str(self.folder), answer, *tls]
        self.launch(argv, (self.folder / "ready").exists, 20, stderr=subprocess.DEVNULL)
        return self

    def messages(self) -> list[str]:
        return [p.read_bytes().decode("utf-8") for p in sorted(self.folder.glob("*.hl7"))]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Callable[..., Receiver]]:
    """Factory for MLLP receivers (not started); each is killed at teardown."""
    count = itertools.count()

    def make(port: int | None = None) -> Receiver:
        return Receiver(tmp_path / f"ris-{next(count)}", port)

    yield from stopping(make)


def _settings(
    make_settings: Callable[..., Settings], db_url: str, dest: str, **kw: Any
) -> Settings:
    return make_settings(
        db_url,
        hl7__destinations=[dest],
        hl7__timeout_seconds=5,
        export__backoff_seconds=0,  # a failed row is due again at once: the next pass retries
        export__max_attempts=3,
        **kw,
    )


def test_oru_r01_is_delivered_and_its_ack_recorded(
    db_url: str,
    make_settings: Callable[..., Settings],
    receiver: Callable[..., Receiver],
    screened: Callable[..., Any],
    model_uid: str,
) -> None:
    """Two results reach a real MLLP receiver as valid ORU^R01 v2.5.1 messages (control ID from
    the row's UID, the accession number, the coded finding, P, the algorithm, the threshold);
    each row is delivered with the ACK as its receipt, and no PHI is logged."""
    ris = receiver().start("AA")
    s = screened(_settings(make_settings, db_url, ris.destination), 2)
    with capture_logs() as logs:
        assert Exporter(s.db, s.settings).deliver_due() == 2

    exports = s.exports()
    assert [e.state for e in exports] == ["delivered", "delivered"]
    messages = ris.messages()
    assert len(messages) == 2
    for export, text in zip(exports, messages, strict=True):
        msg = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
        msg.validate()
        ids = control_id(export.sr_sop_instance_uid or "")
        assert msg.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
        assert msg.msh.msh_10.to_er7() == ids
        assert (export.receipt or "").startswith(f"AA MSA-2 {ids} ACK MSH-10 ACK")
        segments = {line.split("|")[0]: line.split("|") for line in text.split("\r")}
        assert segments["PID"][3] == "PHI-12345"
        assert segments["OBR"][3] == "ACC1" and segments["OBR"][18] == "ACC1"
        assert "TQ1" not in segments  # priority_update is off by default
        obx = [line.split("|") for line in text.split("\r") if line.startswith("OBX")]
        values = {o[3].split("^")[0]: (o[2], o[5]) for o in obx}
        assert values["233604007"] == ("CWE", "52101004^Present^SCT")
        assert values["111012"] == ("NM", "83.0")
        assert values["111001"] == ("ST", "screener-densenet121")
        assert values["121012"] == ("ST", model_uid)
        assert values["111002"] == ("ST", "threshold=0.5000")
    assert not any(w in repr(logs) for w in ("PHI-12345", "Doe", "ACC1"))


def test_application_error_is_dead_at_once(
    db_url: str,
    make_settings: Callable[..., Settings],
    receiver: Callable[..., Receiver],
    screened: Callable[..., Any],
) -> None:
    """An AE (application error) ACK dead-letters the row after one attempt, its ERR-3 code
    recorded, never its text."""
    ris = receiver().start("AE")
    s = screened(_settings(make_settings, db_url, ris.destination), 1)
    assert Exporter(s.db, s.settings).deliver_due() == 0
    (export,) = s.exports()
    assert (export.state, export.attempts, export.receipt) == ("dead", 1, None)
    assert export.last_error == (
        "permanent: the receiver answered AE: application error (ERR-3 207)"
    )


def test_application_reject_is_retried_with_the_same_message_then_dead(
    db_url: str,
    make_settings: Callable[..., Settings],
    receiver: Callable[..., Receiver],
    screened: Callable[..., Any],
) -> None:
    """An AR (application reject) is transient: the row is retried with the very same message
    (same MSH-10) and dead-lettered after export.max_attempts."""
    ris = receiver().start("AR")
    s = screened(_settings(make_settings, db_url, ris.destination), 1)
    exporter = Exporter(s.db, s.settings)
    for attempt in (1, 2):
        assert exporter.deliver_due() == 0
        (export,) = s.exports()
        assert (export.state, export.attempts) == ("pending", attempt)
        assert (export.last_error or "").startswith("transient: the receiver answered AR")
    assert exporter.deliver_due() == 0
    (export,) = s.exports()
    assert (export.state, export.attempts) == ("dead", 3)
    first, *others = ris.messages()
    assert len(others) == 2 and all(m == first for m in others)


def test_a_receiver_that_is_down_is_retried_and_reached_when_back(
    db_url: str,
    make_settings: Callable[..., Settings],
    receiver: Callable[..., Receiver],
    screened: Callable[..., Any],
) -> None:
    """No receiver listening: the row backs off (transient); once one listens, the next pass
    delivers it."""
    ris = receiver()
    s = screened(_settings(make_settings, db_url, ris.destination), 1)
    exporter = Exporter(s.db, s.settings)
    assert exporter.deliver_due() == 0
    (export,) = s.exports()
    assert (export.state, export.attempts) == ("pending", 1)
    assert (export.last_error or "").startswith("transient: cannot connect to mllp://127.0.0.1:")
    ris.start("AA")
    assert exporter.deliver_due() == 1
    (export,) = s.exports()
    assert (export.state, export.attempts) == ("delivered", 2)


@pytest.mark.parametrize("answer", ["garbled", "close"])
def test_no_readable_ack_is_transient(
    answer: str,
    db_url: str,
    make_settings: Callable[..., Settings],
    receiver: Callable[..., Receiver],
    screened: Callable[..., Any],
) -> None:
    """An answer that is not an ACK, or a connection closed without one, counts a transient
    failure for that message and for the rest of the batch."""
    ris = receiver().start(answer)
    s = screened(_settings(make_settings, db_url, ris.destination), 2)
    assert Exporter(s.db, s.settings).deliver_due() == 0
    exports = s.exports()
    assert [(e.state, e.attempts) for e in exports] == [("pending", 1), ("pending", 1)]
    assert all((e.last_error or "").startswith("transient: no ACK from mllp://") for e in exports)
    assert len(ris.messages()) == 1  # the second was never sent over the broken connection


def test_mllp_over_tls_reaches_a_receiver_the_site_ca_signed_only(
    db_url: str,
    make_settings: Callable[..., Settings],
    receiver: Callable[..., Receiver],
    screened: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """hl7.tls: the ORU^R01 reaches a TLS receiver whose certificate the site's CA signed (and
    which requires ours); one with a certificate from another CA gets nothing, the row backs
    off (transient)."""
    pki = tmp_path / "pki"
    pki.mkdir()
    for ca in ("ca", "rogue"):
        _ca(pki, ca)
    _leaf(pki, "screener", "ca")
    _leaf(pki, "ris", "ca")
    _leaf(pki, "fakeris", "rogue")
    ca = str(pki / "ca.pem")
    good = receiver().start("AA", str(pki / "ris.pem"), str(pki / "ris.key"), ca)
    fake = receiver().start("AA", str(pki / "fakeris.pem"), str(pki / "fakeris.key"), ca)
    settings = make_settings(
        db_url,
        hl7__destinations=[good.destination, fake.destination],
        hl7__tls=True,
        tls__certificate=str(pki / "screener.pem"),
        tls__private_key=str(pki / "screener.key"),
        tls__ca_certificates=ca,
        export__backoff_seconds=60,
    )
    s = screened(settings, 1)
    assert Exporter(s.db, s.settings).deliver_due() == 1
    rows = {e.destination: e for e in s.exports()}
    assert rows[good.destination].state == "delivered" and len(good.messages()) == 1
    assert (rows[fake.destination].state, rows[fake.destination].attempts) == ("pending", 1)
    assert "SSLCertVerificationError" in (rows[fake.destination].last_error or "")
    assert fake.messages() == []


# -- the message and the ACK, without a network ----------------------------------------


def _delivery(probability: float, label: str = "pneumonia") -> Delivery:
    result = Result(
        id=7,
        probability=probability,
        label=label,
        threshold=0.5,
        model_name="m|odel",
        model_version="1.0",
        model_uid="1.2.3",
        frame_number=1,
        scored_at=dt.datetime(2026, 12, 6, 8, 0, tzinfo=dt.UTC),
    )
    return Delivery(
        export_id=1, object_uid="1.2.3.4", payload="result", result=result, spool_path=""
    )


def _header(**values: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(io.BytesIO(build_dicom()))
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def _segments(message: str) -> dict[str, list[str]]:
    return {line.split("|")[0]: line.split("|") for line in message.split("\r")}


@pytest.mark.parametrize(
    ("rule", "probability", "label", "stat"),
    [
        ("off", 0.9, "pneumonia", False),
        ("flagged", 0.9, "pneumonia", True),
        ("flagged", 0.2, "normal", False),
        ("flagged", 0.9, "outside_domain", False),
        ("flagged_or_unassessed", 0.9, "outside_domain", True),
    ],
)
def test_the_priority_is_raised_to_stat_only_as_the_site_rule_says(
    rule: str, probability: float, label: str, stat: bool
) -> None:
    """TQ1-9 and OBR-27.6 carry S (STAT) only for the results the site's rule names; no
    priority at all otherwise, so the order's own is never lowered."""
    delivery = _delivery(probability, label)
    message = build_oru(
        delivery, _header(), finding_of(delivery.result), Hl7Settings(priority_update=rule)
    )
    segments = _segments(message)
    if stat:
        assert segments["TQ1"][9] == "S" and segments["OBR"][27] == "^^^^^S"
    else:
        assert "TQ1" not in segments and len(segments["OBR"]) < 28


def test_header_values_are_escaped_and_an_image_without_an_order_is_refused() -> None:
    """Delimiters in header values are HL7-escaped (they cannot split a field); an image with
    neither Accession Number nor filler order number cannot be built, and the reason names no
    value."""
    delivery = _delivery(0.9)
    header = _header(PatientID="A|B^C&D~E", IssuerOfPatientID="HOSP^1", AccessionNumber="X|1")
    segments = _segments(build_oru(delivery, header, finding_of(delivery.result), Hl7Settings()))
    assert segments["PID"][3] == "A\\F\\B\\S\\C\\T\\D\\R\\E^^^HOSP\\S\\1"
    assert segments["OBR"][18] == "X\\F\\1"
    assert escape("a\\b\rc") == "a\\E\\b c"
    with pytest.raises(Exception, match="no Accession Number") as raised:
        build_oru(delivery, _header(AccessionNumber=""), finding_of(delivery.result), Hl7Settings())
    assert "PHI" not in str(raised.value)


def test_acks_are_read_strictly() -> None:
    """An ACK for another control ID, an unknown MSA-1 or bytes that are no HL7 message are
    never taken for a delivery."""
    ack = parse_ack(b"MSH|^~\\&|RIS||||20261206||ACK|A1|P|2.5.1\rMSA|AA|ID1\r")
    assert ack == Ack("AA", "ID1", "A1")
    assert outcome(ack, "ID1") is None
    assert outcome(ack, "ID2") is not None and not outcome(ack, "ID2").permanent  # type: ignore[union-attr]
    assert outcome(Ack("XX", "ID1", "A1"), "ID1") is not None
    for garbage in (b"", b"hello", b"MSH|^~\\&|RIS\rPID|1"):
        with pytest.raises(AckError):
            parse_ack(garbage)


def test_mllp_destinations_must_be_host_and_port() -> None:
    """hl7.destinations takes mllp://HOST:PORT only."""
    assert parse_target("mllp://ris.example:2575").channel == "hl7"
    with pytest.raises(ConfigError):
        parse_target("mllp://ris.example", "hl7.destinations")
