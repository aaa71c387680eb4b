"""The STOW-RS channel: DICOM objects to a DICOMweb service (PS3.18 10.5 <https://dicom.nema.org/medical/dicom/current/output/html/part18.html#sect_10.5>).

One HTTP connection (kept alive) per batch, one POST per delivery: ``POST {base}/studies/
{StudyInstanceUID}`` with a ``multipart/related; type="application/dicom"`` body holding the
delivery's SR (and its capture), each part a DICOM Part 10 file. A POST per delivery rather
than per batch because the statuses that judge a whole request (400, 409, 413) then judge one
delivery only: one bad object is dead-lettered alone, its batch mates are not.

What the service answers decides each delivery (PS3.18 10.5.3 <https://dicom.nema.org/medical/dicom/current/output/html/part18.html#sect_10.5.3>):

* 200 OK, or 202 Accepted without a Failed SOP Sequence item for our instances: delivered;
  a Failed SOP Sequence item for one of them fails the delivery, its Failure Reason judged as
  a C-STORE status (:func:`screener.report.dimse.status_is_permanent`), except 0x0111
  (the service already holds this very instance: a resend) which counts as delivered;
* 409 Conflict: nothing stored; its Failure Reasons decide as above, permanent without one;
* 401 Unauthorized: transient (a token that expired; ``dicomweb.auth_file`` is read again
  before every batch, so a renewed one is used at the next try); 403 Forbidden: permanent
  (the service knows us and refuses: its configuration must change, then
  ``screener exports retry``);
* 408 Request Timeout, 429 Too Many Requests, 5xx (503 Busy): transient;
* any other 4xx (400, 404, 413, 415, ...) and a redirect (never followed, so that
  credentials go nowhere else): permanent;
* no connection, TLS failure, timeout, an unreadable answer: transient.

Credentials come from ``dicomweb.auth_file`` (``Bearer TOKEN`` or ``Basic USER:PASSWORD``),
never from the URL; they are sent only in the Authorization header and never logged, nor
sent in clear text to a host that is not this machine.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import ipaddress
import json
import ssl
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pydicom
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian

from screener.config import Settings
from screener.dicomnet.tls import client_context
from screener.errors import ConfigError
from screener.report.delivery import Delivery, Failure, Recorder, build_each, fail_each, record
from screener.report.dimse import (
    CONNECT_TIMEOUT,
    STATUS_DUPLICATE_SOP_INSTANCE,
    status_is_permanent,
)
from screener.report.objects import DicomObjects

#: Most bytes of an answer read: a Store Instances Response for one delivery is a few KB.
MAX_ANSWER = 1 << 20

# PS3.18 10.5.3 <https://dicom.nema.org/medical/dicom/current/output/html/part18.html#sect_10.5.3> Store Instances Response Module: the tags read back
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
RETRIEVE_URL = "00081190"

#: HTTP statuses after which the same request may succeed later.
_TRANSIENT_HTTP = frozenset({401, 408, 429})


@dataclasses.dataclass(frozen=True)
class Answer:
    """A STOW-RS response: its HTTP status and what its body says per instance."""

    status: int
    failed: dict[str, int]  # SOP Instance UID -> Failure Reason
    stored: frozenset[str]
    retrieve_url: str | None = None


def read_auth_file(path: str) -> str | None:
    """The Authorization header value from ``dicomweb.auth_file`` (None when unset).

    The file's first non-blank line is ``Bearer TOKEN`` or ``Basic USER:PASSWORD``; the
    message of an error never quotes it.
    """
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"dicomweb.auth_file = {path!r} cannot be read ({type(exc).__name__})"
        ) from None
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    scheme, _, value = line.partition(" ")
    value = value.strip()
    ok = value.isprintable() and value.isascii() and " " not in value
    if scheme.lower() == "bearer" and value and ok:
        return f"Bearer {value}"
    if scheme.lower() == "basic" and ":" in value and ok:
        return "Basic " + base64.b64encode(value.encode("ascii")).decode("ascii")
    raise ConfigError(
        f"dicomweb.auth_file = {path!r}: its first line must be `Bearer TOKEN` or "
        "`Basic USER:PASSWORD` (printable ASCII, no spaces in the value)"
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def part10(ds: pydicom.Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file in Explicit VR Little Endian (PS3.10 7.1 <https://dicom.nema.org/medical/dicom/current/output/html/part10.html#sect_7.1>)."""
    ds.ensure_file_meta()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def multipart_related(parts: Sequence[bytes]) -> tuple[bytes, str]:
    """The body and Content-Type of a STOW-RS request (PS3.18 8.6.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part18.html#sect_8.6.1.2>, RFC 2387)."""
    boundary = uuid.uuid4().hex
    chunks = []
    for data in parts:
        chunks += [
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
            data,
            b"\r\n",
        ]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def parse_answer(status: int, content_type: str, body: bytes) -> Answer | None:
    """The per-instance outcome in a Store Instances Response (DICOM JSON, PS3.18 F.2 <https://dicom.nema.org/medical/dicom/current/output/html/part18.html#chapter_F>,
    or the Native DICOM Model, PS3.19 A.1 <https://dicom.nema.org/medical/dicom/current/output/html/part19.html#sect_A.1>); an empty answer says nothing per instance;
    None when the body cannot be read."""
    if not body.strip():
        return Answer(status, {}, frozenset())
    kind = content_type.split(";")[0].strip().lower()
    try:
        if kind.endswith("xml"):
            return _from_xml(status, body)
        return _from_json(status, body)
    except (ValueError, TypeError, KeyError, AttributeError, ET.ParseError):
        return None


def _json_items(ds: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    items = ds.get(tag, {}).get("Value", [])
    return [i for i in items if isinstance(i, dict)]


def _json_value(ds: dict[str, Any], tag: str) -> Any:
    values = ds.get(tag, {}).get("Value", [])
    return values[0] if values else None


def _from_json(status: int, body: bytes) -> Answer:
    ds = json.loads(body)
    if isinstance(ds, list):
        ds = ds[0] if ds else {}
    if not isinstance(ds, dict):
        raise ValueError("not a DICOM JSON data set")
    failed = {
        str(_json_value(item, REFERENCED_SOP_INSTANCE_UID)): int(
            _json_value(item, FAILURE_REASON) or 0x0110
        )
        for item in _json_items(ds, FAILED_SOP_SEQUENCE)
    }
    stored = frozenset(
        str(_json_value(item, REFERENCED_SOP_INSTANCE_UID))
        for item in _json_items(ds, REFERENCED_SOP_SEQUENCE)
    )
    url = _json_value(ds, RETRIEVE_URL)
    return Answer(status, failed, stored, str(url) if url else None)


def _from_xml(status: int, body: bytes) -> Answer:
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise ValueError("a DTD in a Store Instances Response")  # no entity expansion
    root = ET.fromstring(body)

    def value(item: ET.Element, tag: str) -> str | None:
        found = item.find(f"DicomAttribute[@tag='{tag}']/Value")
        return found.text if found is not None else None

    def items(tag: str) -> list[ET.Element]:
        return root.findall(f"DicomAttribute[@tag='{tag}']/Item")

    failed = {
        str(value(i, REFERENCED_SOP_INSTANCE_UID)): int(value(i, FAILURE_REASON) or 0x0110)
        for i in items(FAILED_SOP_SEQUENCE)
    }
    stored = frozenset(
        str(value(i, REFERENCED_SOP_INSTANCE_UID)) for i in items(REFERENCED_SOP_SEQUENCE)
    )
    return Answer(status, failed, stored, value(root, RETRIEVE_URL))


def judge(answer: Answer, sop_instance_uids: Sequence[str]) -> Failure | None:
    """None when ``answer`` says every one of ``sop_instance_uids`` is stored, else why not
    (see the module docstring for the rule)."""
    status = answer.status
    reasons = {
        uid: answer.failed[uid]
        for uid in sop_instance_uids
        if uid in answer.failed and answer.failed[uid] != STATUS_DUPLICATE_SOP_INSTANCE
    }
    if reasons and status in (200, 202, 409):
        uid, reason = next(iter(reasons.items()))
        return Failure(
            f"STOW-RS answered HTTP {status}; Failure Reason 0x{reason:04X} for {uid}",
            permanent=status_is_permanent(reason),
        )
    if status in (200, 202):
        return None
    if status == 409:
        if any(uid in answer.failed for uid in sop_instance_uids):  # 0x0111 only: a resend
            return None
        return Failure("STOW-RS answered HTTP 409 Conflict (nothing stored)", permanent=True)
    return Failure(f"STOW-RS answered HTTP {status}", permanent=http_is_permanent(status))


def http_is_permanent(status: int) -> bool:
    """Whether an HTTP status other than 200/202/409 means the same POST will fail again."""
    if status in _TRANSIENT_HTTP or status >= 500:
        return False
    return 300 <= status < 500  # redirects (not followed) and client errors


class StowChannel:
    """STOW-RS to one DICOMweb base URL (``http(s)://HOST[:PORT]/PATH``)."""

    def __init__(self, base_url: str, settings: Settings, objects: DicomObjects) -> None:
        parts = urlsplit(base_url)
        self.base_url = base_url
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.path = parts.path.rstrip("/")
        self.settings = settings
        self.objects = objects
        self.auth_file = settings.dicomweb.auth_file
        if read_auth_file(self.auth_file) and not self.https and not _is_loopback(self.host):
            raise ConfigError(
                f"{base_url}: dicomweb.auth_file would send credentials in clear text; use "
                "https:// (or a service on this machine)"
            )
        self.tls: ssl.SSLContext | None = None
        if self.https:
            tls = settings.tls
            if settings.dicomweb.ca_certificates:
                tls = dataclasses.replace(tls, ca_certificates=settings.dicomweb.ca_certificates)
            self.tls = client_context(tls)

    def _connect(self) -> http.client.HTTPConnection:
        timeout = self.settings.export.timeout_seconds
        conn: http.client.HTTPConnection
        if self.tls is not None:
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=min(CONNECT_TIMEOUT, timeout), context=self.tls
            )
        else:
            conn = http.client.HTTPConnection(
                self.host, self.port, timeout=min(CONNECT_TIMEOUT, timeout)
            )
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def send(self, deliveries: Sequence[Delivery], recorder: Recorder) -> tuple[int, bool]:
        """One connection to the service; one POST per delivery, each outcome recorded when known."""
        built = build_each(deliveries, self.objects.build, recorder)
        if not built:
            return 0, True
        try:
            authorization = read_auth_file(self.auth_file)
            conn = self._connect()
        except (ConfigError, OSError, http.client.HTTPException) as exc:
            failure = Failure(f"STOW-RS service {self.base_url} not reached: {_why(exc)}")
            fail_each(recorder, built, failure)
            return 0, False
        delivered = 0
        try:
            for delivery, datasets in built:
                try:
                    outcome, receipt = self._post(conn, datasets, authorization)
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()  # the next POST opens a new connection
                    outcome, receipt = Failure(f"STOW-RS POST failed: {_why(exc)}"), None
                delivered += record(recorder, delivery, outcome, receipt)
        finally:
            conn.close()
        return delivered, True

    def _post(
        self,
        conn: http.client.HTTPConnection,
        datasets: list[pydicom.Dataset],
        authorization: str | None,
    ) -> tuple[Failure | None, str | None]:
        """POST one delivery's data sets; (None, receipt) when all were stored, else (why, None)."""
        body, content_type = multipart_related([part10(ds) for ds in datasets])
        study = quote(str(datasets[0].StudyInstanceUID), safe=".")
        headers = {
            "Content-Type": content_type,
            "Accept": "application/dicom+json",
            "Content-Length": str(len(body)),
        }
        if authorization:
            headers["Authorization"] = authorization
        conn.request("POST", f"{self.path}/studies/{study}", body=body, headers=headers)
        response = conn.getresponse()
        data = response.read(MAX_ANSWER + 1)
        if len(data) > MAX_ANSWER or not response.isclosed():
            conn.close()  # an answer too long to read: drop the rest with the connection
        status = response.status
        answer = parse_answer(status, response.getheader("Content-Type", ""), data)
        if answer is None:
            if status in (202, 409):  # which instances failed cannot be read
                return Failure(f"STOW-RS answered HTTP {status} with an unreadable body"), None
            answer = Answer(status, {}, frozenset())
        failure = judge(answer, [str(ds.SOPInstanceUID) for ds in datasets])
        if failure is not None:
            return failure, None
        receipt = f"STOW-RS HTTP {status}, {len(datasets)} instance(s) stored"
        return None, receipt + (f"; {answer.retrieve_url}" if answer.retrieve_url else "")


def _why(exc: BaseException) -> str:
    """An exception as a reason: its type and text (never a header: none is in it)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
