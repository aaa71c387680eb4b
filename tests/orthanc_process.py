"""Debian's Orthanc as a child process on loopback, the real PACS of the tests that need one:
the rescan's C-FIND / C-MOVE peer (tests/rescan/rescan_support.py) and the DICOMweb peer
(tests/orthanc_web.py). Each writes its own options over :func:`orthanc_config`."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from support import listening, wait_for


def orthanc_binary() -> str | None:
    """Orthanc's executable (Debian package orthanc), or None when it is not installed."""
    return shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
    )


def orthanc_config(folder: Path, name: str, http_port: int) -> dict[str, Any]:
    """The options every test Orthanc shares, as Debian's /etc/orthanc/orthanc.json names them:
    its storage in ``folder``, REST on loopback ``http_port``, no jobs saved, no plug-ins."""
    return {
        "Name": name,
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "SaveJobs": False,
    }


@dataclass
class OrthancProcess:
    """A running Orthanc: its folder (orthanc.json, storage, orthanc.log) and its process."""

    folder: Path
    proc: subprocess.Popen[bytes]

    @classmethod
    def launch(
        cls, binary: str, folder: Path, config: dict[str, Any], ports: Sequence[int], **fields: Any
    ) -> Self:
        """Start Orthanc on ``config`` (written to ``folder``/orthanc.json) and wait until it
        listens on every one of ``ports``; one that exits, or never listens, fails with its log
        and is stopped. ``fields``: the subclass's own."""
        config_path = folder / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        with open(folder / "orthanc.log", "wb") as log:
            proc = subprocess.Popen(
                [binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT
            )
        pacs = cls(folder=folder, proc=proc, **fields)
        try:
            wait_for(lambda: all(listening(p) for p in ports) or proc.poll() is not None, 30)
            assert proc.poll() is None, f"Orthanc exited early:\n{pacs.log()}"
        except BaseException:
            pacs.stop()
            raise
        return pacs

    def log(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Terminate Orthanc; kill it when it has not ended within 20 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
