"""Debian's Orthanc with its DICOMweb plugin (package orthanc-dicomweb) on loopback: the real
STOW-RS / QIDO-RS peer of the DICOMweb tests (tests/report/test_stow.py, tests/web/
test_stow_in.py). Import the fixture into a test module: ``from orthanc_web import orthanc_web``."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from orthanc_process import OrthancProcess, orthanc_binary, orthanc_config
from support import free_port, listening, wait_for

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
#: The user Orthanc's HTTP server knows (AuthenticationEnabled): our STOW-RS logs in as it.
USER, PASSWORD = "stow", "stow-secret-1"


@dataclass
class OrthancWeb(OrthancProcess):
    """A running Orthanc: REST and DICOMweb (``/dicom-web``) on ``http_port``, behind Basic
    authentication as :data:`USER`."""

    http_port: int
    fronts: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def dicomweb(self) -> str:
        """The DICOMweb base URL (what ``export.destinations`` names)."""
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def https_front(self, certificate: Path, key: Path) -> str:
        """An HTTPS front (socat, TLS terminated with ``certificate``) to this Orthanc; its
        DICOMweb base URL. Orthanc's own HTTPS (``SslEnabled``) is not used: Debian's 1.10.1
        segfaults in its civetweb worker at the first HTTPS request on this OpenSSL."""
        socat = shutil.which("socat")
        if socat is None:
            pytest.skip("socat (Debian package socat) is needed for an HTTPS front")
        port = free_port()
        listen = (
            f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,"
            f"cert={certificate},key={key},verify=0"
        )
        front = subprocess.Popen(
            [socat, listen, f"TCP:127.0.0.1:{self.http_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.fronts.append(front)
        wait_for(lambda: listening(port) or front.poll() is not None, 20)
        assert front.poll() is None, "socat exited at start"
        return f"https://127.0.0.1:{port}/dicom-web"

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """An authenticated REST call; (HTTP status, decoded JSON answer or None)."""
        data = None if body is None else json.dumps(body).encode()
        request = self._request(path, data, method)
        request.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                raw = answer.read()
                return answer.status, json.loads(raw) if raw.strip() else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")

    def qido_instance(self, study: str, sop_instance_uid: str) -> dict[str, Any]:
        """What QIDO-RS finds of one instance of ``study`` (its DICOM JSON attributes); fails
        unless it finds exactly that one."""
        status, found = self.call(
            "GET", f"/dicom-web/studies/{study}/instances?SOPInstanceUID={sop_instance_uid}"
        )
        assert status == 200, found
        (instance,) = found
        return dict(instance)

    def upload(self, data: bytes) -> str:
        """Store a Part 10 file through the REST API; its Orthanc instance id."""
        with urllib.request.urlopen(
            self._request("/instances", data, "POST"), timeout=60
        ) as answer:
            return str(json.loads(answer.read())["ID"])

    def file(self, sop_instance_uid: str) -> bytes:
        """The Part 10 file Orthanc stored for an instance (found by its SOP Instance UID with
        ``/tools/find``, read from ``/instances/{id}/file``)."""
        query = {"Level": "Instance", "Query": {"SOPInstanceUID": sop_instance_uid}}
        status, found = self.call("POST", "/tools/find", query)
        assert status == 200 and len(found) == 1, (status, found)
        request = self._request(f"/instances/{found[0]}/file")
        with urllib.request.urlopen(request, timeout=60) as answer:
            return bytes(answer.read())

    def _request(
        self, path: str, data: bytes | None = None, method: str = "GET"
    ) -> urllib.request.Request:
        """A request to this Orthanc, logged in as :data:`USER` (HTTP Basic)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method
        )
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
        return request

    def stop(self) -> None:
        """Stop the HTTPS fronts, then Orthanc."""
        for front in self.fronts:
            front.kill()
            front.wait(timeout=10)
        super().stop()


@pytest.fixture
def orthanc_web(tmp_path: Path) -> Iterator[Callable[..., OrthancWeb]]:
    """Start Orthanc with DICOMweb (on ``http_port``, a free one if not given); ``servers``
    are its DICOMweb peers (name -> [URL, user, password], or the plugin's object form,
    ``{"Url": URL, "HttpHeaders": {...}}``), which its STOW-RS client pushes to."""
    binary = orthanc_binary()
    if binary is None or not PLUGIN.exists():
        pytest.skip("Orthanc and its DICOMweb plugin (Debian: orthanc, orthanc-dicomweb) needed")
    started: list[OrthancWeb] = []

    def start(
        servers: dict[str, list[str] | dict[str, Any]] | None = None,
        name: str = "orthanc",
        http_port: int | None = None,
    ) -> OrthancWeb:
        folder = tmp_path / name
        folder.mkdir()
        http_port = http_port or free_port()
        # Options as in Debian's /etc/orthanc/orthanc.json and the plugin's documentation
        config = {
            **orthanc_config(folder, "screener-dicomweb-test", http_port),
            "Plugins": [str(PLUGIN)],
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "DicomServerEnabled": False,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": servers or {}},
        }
        pacs = OrthancWeb.launch(binary, folder, config, [http_port], http_port=http_port)
        started.append(pacs)
        return pacs

    yield start
    for pacs in started:
        pacs.stop()
