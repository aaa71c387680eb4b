"""The FHIR channel: each result as a transaction Bundle (:mod:`screener.report.fhir_bundle`)
POSTed to a FHIR R4 server's base URL (FHIR R4 RESTful API, transaction interaction:
https://hl7.org/fhir/R4/http.html#transaction).

What the server answers decides the row:

* 200 / 201: delivered; the receipt is each entry's ``response.location`` from the
  transaction-response Bundle (or the ``Location`` header);
* 408 Request Timeout, 429 Too Many Requests and every 5xx: transient, retried with backoff;
* any other 4xx (the server judged the Bundle, typically with an OperationOutcome: its issues'
  severity, code and element paths are recorded, never their free text, which may echo PHI),
  and 3xx (``fhir.base_url`` is not the server's base): permanent, dead-lettered at once;
* no connection, a TLS failure, no answer within ``fhir.timeout_seconds``: transient.

``fhir.token_file`` is read at each delivery (a renewed token needs no restart) and sent as
``Authorization: Bearer``. https:// servers are verified against ``fhir.ca_certificates`` or
the system's CAs, and their name against the host called, over TLS 1.2 or later (the BCP 195
profile of :mod:`screener.dicomnet.tls`); the ``[tls]`` section's certificate is presented
when ``tls.certificate`` is set (mutual TLS), as for STOW-RS and HL7. A server that refuses
our certificate (or wants one we do not have) is a TLS failure: transient, since from here
it cannot be told from a handshake a network fault broke, and the fix (the server's CA list,
our certificate) is configuration after which the next try delivers.
"""

from __future__ import annotations

import dataclasses
import json
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
import urllib3

from screener.config import Settings
from screener.dicomnet.tls import client_context
from screener.errors import ConfigError
from screener.report.delivery import Delivery, Failure, Recorder, build_each, fail_each, record
from screener.report.destinations import FHIR_PREFIX, Target
from screener.report.fhir_bundle import build_bundle
from screener.report.objects import finding_of
from screener.report.order import order_of

#: Seconds to wait for a TCP connection: a server that is down must fail fast.
CONNECT_TIMEOUT = 3.0
#: Most bytes of an answer read: a transaction-response of three entries is a few KB.
MAX_ANSWER = 1024 * 1024
FHIR_JSON = "application/fhir+json"
#: Statuses of a 4xx that may pass: the server timed out reading, or asks us to slow down.
TRANSIENT_4XX = frozenset({408, 429})


class TokenError(Exception):
    """The bearer token file cannot be read."""


def read_token(path: str) -> str | None:
    """The bearer token in ``path`` (one line of printable ASCII), None without a file."""
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"fhir.token_file cannot be read ({type(exc).__name__})") from None
    if not text or any(not 0x20 < ord(c) < 0x7F for c in text):
        raise TokenError("fhir.token_file must hold one token of printable ASCII, no spaces")
    return text


def _tls_context(settings: Settings) -> ssl.SSLContext:
    """The client context: the server checked against ``fhir.ca_certificates`` (else the
    system's CAs) and its name always; ``tls.certificate`` presented when set."""
    cas = settings.fhir.ca_certificates
    if cas and not Path(cas).is_file():
        raise ConfigError(f"fhir.ca_certificates = {cas!r} is invalid: no such file")
    tls = dataclasses.replace(settings.tls, ca_certificates=cas, check_hostname=True)
    return client_context(tls)


def _codes(value: Any, limit: int = 60) -> str:
    """A code or path from the server's answer: printable ASCII only, bounded."""
    return "".join(c for c in str(value) if 0x20 <= ord(c) < 0x7F)[:limit]


def outcome_summary(body: Any) -> str:
    """The issues of an OperationOutcome as ``severity/code at path``, '' when it is none."""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return ""
    issues = body.get("issue")
    parts = []
    for issue in issues[:5] if isinstance(issues, list) else []:
        if not isinstance(issue, dict):
            continue
        where = issue.get("expression") or issue.get("location") or []
        path = f" at {_codes(where[0])}" if isinstance(where, list) and where else ""
        parts.append(f"{_codes(issue.get('severity'), 12)}/{_codes(issue.get('code'), 30)}{path}")
    return "; ".join(parts)


def locations(body: Any, header: str | None) -> str:
    """What the server says it made: each entry's ``status location``, else the Location header."""
    found = []
    if isinstance(body, dict) and body.get("resourceType") == "Bundle":
        for entry in body.get("entry") or []:
            response = entry.get("response") if isinstance(entry, dict) else None
            if isinstance(response, dict):
                status = _codes(response.get("status", ""), 20)
                found.append(f"{status} {_codes(response.get('location', ''), 200)}".strip())
    if not found and header:
        found.append(_codes(header, 200))
    return "; ".join(found)


class FhirChannel:
    """Transaction Bundles to one ``fhir+https://HOST/fhir`` base URL."""

    def __init__(self, target: Target, settings: Settings) -> None:
        self.address = target.address
        self.base_url = target.address.removeprefix(FHIR_PREFIX)
        self.settings = settings
        fhir = settings.fhir
        try:
            read_token(fhir.token_file)  # a token file that cannot be read stops start-up
            ctx = _tls_context(settings)
        except (TokenError, ConfigError, ssl.SSLError, OSError) as exc:
            raise ConfigError(f"[fhir]: {exc}") from None
        timeout = urllib3.Timeout(
            connect=min(CONNECT_TIMEOUT, fhir.timeout_seconds), read=fhir.timeout_seconds
        )
        self.pool = urllib3.PoolManager(
            num_pools=1, timeout=timeout, retries=False, ssl_context=ctx, maxsize=1
        )

    def _build(self, delivery: Delivery) -> bytes:
        header = pydicom.dcmread(delivery.spool_path, stop_before_pixels=True)
        order = order_of(header)
        bundle = build_bundle(delivery, order, finding_of(delivery.result), self.settings.fhir)
        return bundle.model_dump_json().encode("utf-8")

    def send(self, deliveries: Sequence[Delivery], recorder: Recorder) -> tuple[int, bool]:
        """One POST per delivery; a server that cannot be reached ends the batch."""
        built = build_each(deliveries, self._build, recorder, noun="the FHIR Bundle")
        delivered = 0
        for i, (delivery, body) in enumerate(built):
            try:
                headers = self._headers()
            except TokenError as exc:
                recorder.failed(delivery, Failure(str(exc)))
                continue
            try:
                response = self.pool.request(
                    "POST",
                    self.base_url,
                    body=body,
                    headers=headers,
                    preload_content=False,
                    redirect=False,
                )
            except urllib3.exceptions.HTTPError as exc:
                unreachable = Failure(f"no answer from {self.base_url} ({type(exc).__name__})")
                fail_each(recorder, built[i:], unreachable)
                return delivered, False
            failure: Failure | None
            try:
                failure, receipt = self._judge(response)
            except urllib3.exceptions.HTTPError as exc:  # the answer broke off
                failure, receipt = Failure(f"the answer broke off ({type(exc).__name__})"), ""
            finally:
                response.release_conn()
            delivered += record(recorder, delivery, failure, receipt)
        return delivered, True

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
        token = read_token(self.settings.fhir.token_file)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _judge(self, response: urllib3.BaseHTTPResponse) -> tuple[Failure | None, str]:
        """The outcome of one answer and its receipt."""
        data = response.read(MAX_ANSWER + 1, decode_content=True)
        try:
            body = json.loads(data) if 0 < len(data) <= MAX_ANSWER else None
        except ValueError:
            body = None
        status = response.status
        if 200 <= status < 300:
            return None, locations(body, response.headers.get("Location"))
        issues = outcome_summary(body)
        reason = f"the FHIR server answered {status}" + (f": {issues}" if issues else "")
        if status in TRANSIENT_4XX or status >= 500:
            return Failure(reason), ""
        if 300 <= status < 400:
            return Failure(
                f"{reason} (a redirect: fhir.base_url must be the server's base)", True
            ), ""
        return Failure(reason, permanent=400 <= status < 500), ""
