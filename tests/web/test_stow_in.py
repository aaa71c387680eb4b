"""STOW-RS into screener (POST /dicom-web/studies on the web port): Orthanc's DICOMweb client
pushes a film to a real `screener web`, and to a real `screener serve` whose SR goes back to
Orthanc by STOW-RS and is found by QIDO-RS; each part of a request is checked as a C-STORE
is and answered per instance (PS3.18 10.5.3)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hostile import write_deflate_bomb
from orthanc_web import PASSWORD, USER, OrthancWeb, orthanc_web  # noqa: F401
from pydicom import dcmread
from sqlalchemy import select
from support import ServeProcess, build_dicom, data_root, free_port, serve_env, wait_for

from screener.db import AuditEvent, Database, Instance, Job
from screener.db.migrate import upgrade
from screener.web.auth import hash_password

ADMIN, ADMIN_PASSWORD = "pacs-push", "push-password-7"
READER, READER_PASSWORD = "reader", "reader-password-7"
TOKEN = "machine-token-" + "x" * 20
SR_3D = "1.2.840.10008.5.1.4.1.1.88.34"


def _film() -> Path:
    films = sorted((data_root() / "dicom" / "siim_chest_cr").glob("*.dcm"))
    if not films:
        pytest.skip(f"SIIM chest films not found under {data_root()} (SCREENER_DATA)")
    return films[0]


def _web_env(tmp_path: Path, db_url: str, port: int, **extra: str) -> dict[str, str]:
    tokens = tmp_path / "stow-tokens"
    tokens.write_text(f"robot:{hashlib.sha256(TOKEN.encode()).hexdigest()}\n")
    users = [
        f"{ADMIN}:{hash_password(ADMIN_PASSWORD)}",
        f"{READER}:{hash_password(READER_PASSWORD)}",
    ]
    return serve_env(
        tmp_path,
        db_url,
        free_port(),
        screener_web_port=str(port),
        screener_web_users=json.dumps(users),
        screener_web_admins=ADMIN,
        screener_dicomweb_accept_stow="true",
        screener_dicomweb_tokens_file=str(tokens),
        **extra,
    )


def _start(
    tmp_path: Path, db_url: str, command: str = "web", **extra: str
) -> tuple[int, ServeProcess]:
    db = Database(db_url)
    upgrade(db)
    db.dispose()
    port = free_port()
    process = ServeProcess(tmp_path, _web_env(tmp_path, db_url, port, **extra), command=command)
    process.start()
    wait_for(lambda: _post(port, "/dicom-web/studies", b"", {})[0] == 401, 30)
    return port, process


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
    """One POST; (status, Content-Type, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    except OSError:
        return 0, "", b""
    finally:
        conn.close()


def _stow(
    port: int, parts: list[bytes], path: str = "/dicom-web/studies", **headers: str
) -> tuple[int, str, bytes]:
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
            for part in parts
        )
        + f"--{boundary}--".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return _post(port, path, body, {"Content-Type": content_type, **headers})


def _bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def _sequence(answer: dict[str, Any], tag: str) -> list[tuple[str | None, int | None]]:
    """(SOP Instance UID, Failure Reason) of each item of a sequence of the answer."""
    return [
        (
            (item.get("00081155", {}).get("Value") or [None])[0],
            (item.get("00081197", {}).get("Value") or [None])[0],
        )
        for item in answer.get(tag, {}).get("Value", [])
    ]


def _instances(db_url: str) -> dict[str, tuple[str, str | None]]:
    """SOP Instance UID -> (source, its job's state)."""
    db = Database(db_url)
    try:
        with db.transaction() as session:
            rows = session.execute(
                select(Instance.sop_instance_uid, Instance.source, Job.state).outerjoin(
                    Job, Job.instance_id == Instance.id
                )
            ).all()
            return {uid: (source, str(state) if state else None) for uid, source, state in rows}
    finally:
        db.dispose()


def test_orthanc_pushes_a_film_by_stow_and_it_is_queued(
    tmp_path: Path,
    sqlite_url: str,
    orthanc_web: Callable[..., OrthancWeb],  # noqa: F811
) -> None:
    """Orthanc's STOW-RS client (its /dicom-web/servers/screener/stow) sends a SIIM film with an admin's Basic credentials; it is accepted, queued as from DICOMweb, and audited."""
    port, web = _start(tmp_path, sqlite_url)
    url = f"http://127.0.0.1:{port}/dicom-web"
    pacs = orthanc_web(servers={"screener": [url, ADMIN, ADMIN_PASSWORD]})
    film = _film()
    instance = pacs.upload(film.read_bytes())
    status, answer = pacs.call(
        "POST", "/dicom-web/servers/screener/stow", {"Resources": [instance]}
    )
    assert status == 200, (answer, web.log()[-3000:])

    sop = str(dcmread(film, stop_before_pixels=True).SOPInstanceUID)
    assert _instances(sqlite_url) == {sop: ("dicomweb", "queued")}
    db = Database(sqlite_url)
    with db.transaction() as session:
        audit = session.scalars(select(AuditEvent).where(AuditEvent.event == "stow_received")).one()
        assert (audit.actor, audit.message) == (ADMIN, f"STOW-RS from {ADMIN}: 1 stored, 0 refused")
    db.dispose()
    assert web.terminate() == 0


def test_each_part_is_checked_and_answered_per_instance(tmp_path: Path, sqlite_url: str) -> None:
    """A film, an SR, garbage and an oversized part in one request: 202 with the film referenced and each refusal's Failure Reason (0x0122, 0xC000, 0xA700); a study-specific POST refuses another study's film (409, 0xA900); a deflate bomb is refused 0xA700 and a body over web.max_upload_mb 413; wrong credentials, a reader's, no STOW media type are refused."""
    port, web = _start(
        tmp_path, sqlite_url, screener_listener_max_dataset_mb="1", screener_web_max_upload_mb="3"
    )
    film = build_dicom(seed=1)
    film_uid = str(dcmread(io.BytesIO(film)).SOPInstanceUID)
    sr = build_dicom(sop_class_uid=SR_3D, pixel_data=False)
    sr_uid = str(dcmread(io.BytesIO(sr)).SOPInstanceUID)
    big = b"\0" * (1024 * 1024 + 10)
    status, kind, body = _stow(port, [film, sr, b"not DICOM at all", big], **_bearer())
    assert (status, kind) == (202, "application/dicom+json"), body
    answer = json.loads(body)
    assert _sequence(answer, "00081199") == [(film_uid, None)]
    assert _sequence(answer, "00081198") == [(sr_uid, 0x0122), (None, 0xC000), (None, 0xA700)]
    assert _instances(sqlite_url) == {film_uid: ("dicomweb", "queued")}

    other = build_dicom(seed=2)
    status, _, body = _stow(port, [other], path="/dicom-web/studies/1.2.3.4", **_bearer())
    assert status == 409
    assert [r for _, r in _sequence(json.loads(body), "00081198")] == [0xA900]

    write_deflate_bomb(tmp_path / "bomb.dcm", "1.2.826.0.1.3680043.8.498.7725", 1 << 28)
    status, _, body = _stow(port, [(tmp_path / "bomb.dcm").read_bytes()], **_bearer())
    assert status == 409  # 300 KB sent, 256 MiB inflated: over listener.max_dataset_mb
    # its UIDs are inside the deflated stream, which is never inflated to read them
    assert _sequence(json.loads(body), "00081198") == [(None, 0xA700)]
    assert _stow(port, [b"\0" * (4 << 20)], **_bearer())[0] == 413  # over web.max_upload_mb

    status, kind, body = _stow(
        port, [build_dicom(seed=3)], **_bearer(), Accept="application/dicom+xml"
    )
    assert (status, kind.split(";")[0]) == (200, "application/dicom+xml")
    assert b'<DicomAttribute tag="00081199" vr="SQ">' in body

    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert _stow(port, [film], Authorization="Bearer wrong-token")[0] == 401
    assert _stow(port, [film], Authorization=basic(ADMIN, "wrong"))[0] == 401
    assert _stow(port, [film], Authorization=basic(READER, READER_PASSWORD))[0] == 401  # not admin
    assert _stow(port, [film])[0] == 401
    json_type = {"Content-Type": "application/dicom+json", **_bearer()}
    assert _post(port, "/dicom-web/studies", b"[]", json_type)[0] == 415
    torn = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=b', **_bearer()}
    assert _post(port, "/dicom-web/studies", b"--b\r\n\r\nxx", torn)[0] == 400
    assert len(_instances(sqlite_url)) == 2  # the film and the XML request's film only
    assert "Doe^Jane" not in web.log() and TOKEN not in web.log()
    assert web.terminate() == 0


@pytest.mark.timeout(420)
def test_film_by_stow_is_scored_and_its_sr_is_in_orthanc_by_stow(
    tmp_path: Path,
    sqlite_url: str,
    orthanc_web: Callable[..., OrthancWeb],  # noqa: F811
) -> None:
    """The whole DICOMweb round: Orthanc pushes a film to `screener serve` by STOW-RS, it is scored, and its SR lands in Orthanc by STOW-RS, where QIDO-RS finds it in the film's study."""
    pacs_port = free_port()
    auth = tmp_path / "stow-auth"
    auth.write_text(f"Basic {USER}:{PASSWORD}\n")
    port, daemon = _start(
        tmp_path,
        sqlite_url,
        command="serve",
        screener_export_destinations=f"http://127.0.0.1:{pacs_port}/dicom-web",
        screener_dicomweb_auth_file=str(auth),
    )
    url = f"http://127.0.0.1:{port}/dicom-web"
    pacs = orthanc_web(servers={"screener": [url, ADMIN, ADMIN_PASSWORD]}, http_port=pacs_port)
    film = _film()
    study = str(dcmread(film, stop_before_pixels=True).StudyInstanceUID)
    instance = pacs.upload(film.read_bytes())
    status, answer = pacs.call(
        "POST", "/dicom-web/servers/screener/stow", {"Resources": [instance]}
    )
    assert status == 200, answer

    def sr_found() -> list[Any]:
        status, found = pacs.call("GET", f"/dicom-web/studies/{study}/instances?Modality=SR")
        return found if status == 200 and found else []

    (sr,) = wait_for(sr_found, timeout=300, interval=1.0)
    assert sr["00080016"]["Value"] == [SR_3D]
    assert daemon.terminate() == 0
