"""The spool: where accepted instances wait, written atomically.

A file is written under ``.tmp/``, flushed and fsynced, then renamed into place and its
folder fsynced; a crash leaves either no file or a whole one, never half of one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from screener.config import writable_dir
from screener.errors import IngestError


class OutOfResources(IngestError):
    """The spool disk is below its free-space floor (C-STORE status A700)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _safe(uid: str) -> str:
    """UIDs are digits and dots (PS3.5 9.1 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_9.1>); anything else is replaced so a path stays a path."""
    return "".join(c if c.isdigit() or c == "." else "_" for c in uid)[:64] or "_"


class Spool:
    def __init__(self, root: str | Path, min_free_mb: int) -> None:
        self.root = writable_dir("storage.spool_dir", root)
        self.tmp = writable_dir("storage.spool_dir", self.root / ".tmp")
        self.min_free_bytes = min_free_mb * 1024 * 1024

    def check_free_space(self, incoming: int = 0) -> None:
        free = shutil.disk_usage(self.root).free
        if free - incoming < self.min_free_bytes:
            raise OutOfResources(
                f"spool disk has {free // (1024 * 1024)} MB free; storage.min_free_mb is "
                f"{self.min_free_bytes // (1024 * 1024)} MB"
            )

    def path_for(self, study_uid: str, sop_uid: str, sha256: str) -> Path:
        return self.root / _safe(study_uid) / f"{_safe(sop_uid)}.{sha256[:12]}.dcm"

    def write(self, target: Path, data: bytes) -> None:
        """Write ``data`` to ``target`` atomically and durably."""
        self.check_free_space(len(data))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OutOfResources(f"cannot write to the spool at {target.parent}: {exc}") from exc

    def remove(self, path: str | Path) -> None:
        Path(path).unlink(missing_ok=True)

    def sweep_tmp(self) -> int:
        """Remove partial files left by a crash; returns how many."""
        count = 0
        for part in self.tmp.glob("*.part"):
            part.unlink(missing_ok=True)
            count += 1
        return count

    def files(self) -> list[Path]:
        return [p for p in self.root.glob("*/*.dcm") if p.is_file()]
