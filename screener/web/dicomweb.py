"""STOW-RS origin server: ``POST /dicom-web/studies`` and ``/dicom-web/studies/{study}``
(PS3.18 10.5 <https://dicom.nema.org/medical/dicom/current/output/html/part18.html#sect_10.5>), on the web worklist's port when ``dicomweb.accept_stow`` is on.

Each part of a ``multipart/related; type="application/dicom"`` body goes through the same
:class:`~screener.ingest.accept.Acceptor` as a C-STORE (the same size, deflate, UID, SOP class
and pixel checks, the spool, the queue), as it arrives: one part in memory at a time, the body
bounded by ``web.max_upload_mb`` and each part by ``listener.max_dataset_mb``. The answer is
the Store Instances Response (PS3.18 10.5.3 <https://dicom.nema.org/medical/dicom/current/output/html/part18.html#sect_10.5.3>) in DICOM JSON (or XML when the client
asks for ``application/dicom+xml``): a Referenced SOP Sequence item per stored instance, a
Failed SOP Sequence item with its Failure Reason per refused one, the C-STORE status the
listener would have answered (0xA700 Out of Resources, 0xA900 does not match SOP Class,
0xC000 Cannot understand, 0x0122 SOP Class not supported, 0x0110 Processing failure), and
0xA900 for an instance of another study than the one in the URL. HTTP status: 200 all
stored, 202 some stored, 409 none stored, 400 an unreadable body, 401 / 403 who may not,
415 another media type, 413 a body over ``web.max_upload_mb``.

Who may store: a Bearer token whose SHA-256 is in ``dicomweb.tokens_file`` (machine
clients), or HTTP Basic with a ``web.users`` password of a ``web.admins`` user (as queueing
an upload needs); failed attempts are throttled like logins. A browser's session cookie is
not taken here, so no other site can make a visitor's browser store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import structlog
from pydicom import dcmread
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from screener.errors import IngestError
from screener.ingest.inflate import DatasetTooLarge, check_size, limit_bytes
from screener.ingest.refusal import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_MISMATCH,
    STATUS_OUT_OF_RESOURCES,
    refusal_of,
)
from screener.ingest.uids import uid_problem
from screener.web.auth import decoy_hash, verify_password
from screener.web.context import WebState, state_of
from screener.web.related import BadRequest, Part, RelatedReader, UnsupportedMediaType, boundary_of

log = structlog.get_logger(__name__)

# PS3.18 10.5.3 <https://dicom.nema.org/medical/dicom/current/output/html/part18.html#sect_10.5.3> Failure Reasons: the C-STORE statuses of PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3>
# (screener.ingest.refusal), and this one for an instance the database could not take
PROCESSING_FAILURE = 0x0110


@dataclass(frozen=True)
class Outcome:
    """One part's fate: stored, or refused with a Failure Reason (UIDs when readable)."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    failure: int | None = None
    reason: str | None = None


# -- who may store ------------------------------------------------------------------------


def token_holders(path: str) -> dict[str, str]:
    """``dicomweb.tokens_file``: SHA-256 hex digest -> client name (lines ``NAME:SHA256``)."""
    if not path:
        return {}
    holders: dict[str, str] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        log.error("dicomweb_tokens_unreadable", path=path)  # every token refused until fixed
        return {}
    for line in lines:
        name, sep, digest = line.strip().rpartition(":")
        if sep and name and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
            holders[digest] = name[:64]
    return holders


def _token_client(web: WebState, token: str) -> str | None:
    digest = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
    for known, name in token_holders(web.settings.dicomweb.tokens_file).items():
        if hmac.compare_digest(known, digest):
            return name
    return None


def _basic_client(web: WebState, credentials: str) -> tuple[str | None, str | None]:
    """(the user, None) for an admin's right password; (None, the user name tried) else."""
    try:
        user, sep, password = base64.b64decode(credentials, validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not sep:
        return None, None
    user = user.strip()[:64]
    stored = web.users.get(user)
    ok = verify_password(password, stored or decoy_hash())  # the same time for anyone
    if ok and stored is not None and user in web.admins:
        return user, None
    return None, user


def authenticate(web: WebState, authorization: str, address: str) -> tuple[str | None, int, str]:
    """Who sent the request (worker thread: password hashing); else (None, status, why)."""
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        if web.throttle.wait(f"stow@{address}"):
            return None, 429, "too many failed attempts: wait, then try again"
        client = _token_client(web, value)
        if client is None:
            web.throttle.failed(f"stow@{address}")
            return None, 401, "unknown bearer token"
        return client, 200, ""
    if scheme.lower() == "basic" and value:
        keys = [f"stow@{address}"]
        if web.throttle.wait(*keys):
            return None, 429, "too many failed attempts: wait, then try again"
        user, tried = _basic_client(web, value)
        if user is None:
            web.throttle.failed(*keys, *([f"stow-user:{tried}"] if tried else []))
            return None, 401, "wrong user or password, or not an administrator (web.admins)"
        web.throttle.succeeded(f"stow@{address}")
        return user, 200, ""
    return None, 401, "STOW-RS needs Authorization: Bearer TOKEN or Basic (a web.admins user)"


# -- one part -----------------------------------------------------------------------------


def _peek(data: bytes, limit: int) -> tuple[str | None, str | None, str | None]:
    """(SOP Class, SOP Instance, Study Instance UID) of a part when they can be read safely
    (the size and deflate checks first); Nones otherwise: the acceptor then says why."""
    try:
        check_size(data, limit)
        ds = dcmread(
            io.BytesIO(data),
            stop_before_pixels=True,
            force=True,  # a data set without file meta, which the acceptor also takes
            specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"],
        )
    except Exception:  # hostile bytes: the acceptor's own checks give the reason
        return None, None, None

    def uid(keyword: str) -> str | None:
        value = str(ds.get(keyword, "") or "").strip()
        return value if value and not uid_problem(value) else None

    return uid("SOPClassUID"), uid("SOPInstanceUID"), uid("StudyInstanceUID")


def store_part(web: WebState, part: Part, study: str | None, client: str) -> Outcome:
    """Check and queue one part as a C-STORE would be (worker thread); its outcome."""
    settings = web.settings
    limit = limit_bytes(settings.listener.max_dataset_mb)
    data = bytes(part.data)
    sop_class, sop_uid, study_uid = (None, None, None) if part.too_large else _peek(data, limit)

    def refused(status: int, reason: str, message: str) -> Outcome:
        log.warning(
            "stow_instance_refused",
            failure_reason=f"0x{status:04X}",
            reason=reason,
            error=message,
            sop_instance_uid=sop_uid,
            client=client,
        )
        web.acceptor_of().record_refusal(
            reason, f"STOW-RS 0x{status:04X}: {message}", sop_instance_uid=sop_uid
        )
        return Outcome(sop_class, sop_uid, status, reason)

    kind = part.content_type.split(";")[0].strip().lower()
    if kind and kind != "application/dicom":
        return refused(
            STATUS_CANNOT_UNDERSTAND, "not_application_dicom", "a part is not application/dicom"
        )
    if part.too_large:
        return refused(
            STATUS_OUT_OF_RESOURCES,
            DatasetTooLarge.reason,
            f"a part of {part.size} bytes is over listener.max_dataset_mb",
        )
    if study is not None and study_uid != study:
        return refused(
            STATUS_DATASET_MISMATCH, "study_mismatch", "the instance is of another study"
        )
    try:
        web.acceptor_of().accept(data, source="dicomweb")
    except IngestError as exc:
        return refused(*refusal_of(exc), str(exc))
    except Exception as exc:  # stage boundary: a database outage must not end the request
        log.exception("stow_store_failed", sop_instance_uid=sop_uid)
        return refused(PROCESSING_FAILURE, "internal_error", type(exc).__name__)
    return Outcome(sop_class, sop_uid)


# -- the response -------------------------------------------------------------------------


def _item(outcome: Outcome) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": _ui(outcome.sop_class_uid),  # Referenced SOP Class UID
        "00081155": _ui(outcome.sop_instance_uid),  # Referenced SOP Instance UID
    }
    if outcome.failure is not None:
        item["00081197"] = {"vr": "US", "Value": [outcome.failure]}  # Failure Reason
    else:
        item["00081190"] = {"vr": "UR"}  # Retrieve URL: Type 2, empty (no WADO-RS here)
    return item


def _ui(uid: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [uid]} if uid else {"vr": "UI"}


def response_dataset(outcomes: list[Outcome]) -> dict[str, Any]:
    """The Store Instances Response Module as DICOM JSON (PS3.18 F.2 <https://dicom.nema.org/medical/dicom/current/output/html/part18.html#chapter_F>)."""
    stored = [_item(o) for o in outcomes if o.failure is None]
    failed = [_item(o) for o in outcomes if o.failure is not None]
    ds: dict[str, Any] = {"00081190": {"vr": "UR"}}
    if failed:
        ds["00081198"] = {"vr": "SQ", "Value": failed}
    if stored:
        ds["00081199"] = {"vr": "SQ", "Value": stored}
    return ds


def as_xml(ds: dict[str, Any]) -> str:
    """A DICOM JSON data set in the Native DICOM Model (PS3.19 A.1 <https://dicom.nema.org/medical/dicom/current/output/html/part19.html#sect_A.1>)."""

    def attributes(d: dict[str, Any]) -> str:
        out = []
        for tag, element in d.items():
            inner = ""
            for n, value in enumerate(element.get("Value", []), 1):
                if element["vr"] == "SQ":
                    inner += f'<Item number="{n}">{attributes(value)}</Item>'
                else:
                    inner += f'<Value number="{n}">{escape(str(value))}</Value>'
            out.append(f'<DicomAttribute tag="{tag}" vr="{element["vr"]}">{inner}</DicomAttribute>')
        return "".join(out)

    return f'<?xml version="1.0" encoding="UTF-8"?><NativeDicomModel>{attributes(ds)}</NativeDicomModel>'


def _answer(request: Request, status: int, outcomes: list[Outcome]) -> Response:
    ds = response_dataset(outcomes)
    if "application/dicom+xml" in request.headers.get("accept", "").lower():
        return Response(as_xml(ds), status_code=status, media_type="application/dicom+xml")
    return Response(json.dumps(ds), status_code=status, media_type="application/dicom+json")


# -- the endpoint -------------------------------------------------------------------------


async def store_instances(request: Request) -> Response:
    """``POST /dicom-web/studies[/{study}]``: authenticate, then store each part as it arrives."""
    web = state_of(request)
    if not web.settings.dicomweb.accept_stow:
        return PlainTextResponse("STOW-RS is off here (dicomweb.accept_stow)", status_code=404)
    address = web.proxies.client_address(request)
    authorization = request.headers.get("authorization", "")
    client, status, why = await run_in_threadpool(authenticate, web, authorization, address)
    if client is None:
        log.warning("stow_refused", status=status, reason=why, client_address=address)
        headers = {"WWW-Authenticate": 'Basic realm="screener STOW-RS"'} if status == 401 else {}
        return PlainTextResponse(why, status_code=status, headers=headers)
    study = request.path_params.get("study")
    if study is not None and uid_problem(study):
        return PlainTextResponse("the study in the URL is not a UID", status_code=400)
    try:
        reader = RelatedReader(
            boundary_of(request.headers.get("content-type", "")),
            limit_bytes(web.settings.listener.max_dataset_mb),
        )
    except UnsupportedMediaType as exc:
        return PlainTextResponse(str(exc), status_code=415)
    except BadRequest as exc:
        return PlainTextResponse(str(exc), status_code=400)
    outcomes: list[Outcome] = []
    try:
        async for chunk in request.stream():
            reader.write(chunk)
            for part in reader.take():  # each part stored as soon as it is complete
                outcomes.append(await run_in_threadpool(store_part, web, part, study, client))
        reader.finish()
    except BadRequest as exc:
        log.warning("stow_refused", status=400, reason=str(exc), client=client)
        return PlainTextResponse(str(exc), status_code=400)
    stored = sum(o.failure is None for o in outcomes)
    log.info("stow_received", client=client, stored=stored, failed=len(outcomes) - stored)
    if not outcomes:
        return PlainTextResponse("the request holds no instance", status_code=400)
    await run_in_threadpool(
        web.audit,
        "stow_received",
        client,
        f"STOW-RS from {client}: {stored} stored, {len(outcomes) - stored} refused",
    )
    # PS3.18 10.5.3 <https://dicom.nema.org/medical/dicom/current/output/html/part18.html#sect_10.5.3>: 200 all stored, 202 some, 409 none
    status = 200 if stored == len(outcomes) else 202 if stored else 409
    return _answer(request, status, outcomes)
