"""Files left in the watch folder (the daemon was down) are taken as the watcher takes them.

The work is :class:`screener.ingest.watcher.FolderWatcher`'s own: ``scan()`` notes every
file, a first ``process_settled()`` records each one's size and modification time, and a
second one ``watch.settle_seconds`` later takes those that have not changed (a file still
being copied in stays for the daemon or the next rescan). Accepted files are deleted,
unreadable ones moved to ``watch.rejected_dir`` with a ``.reason.txt`` and a ``rejected``
job, exactly as in ``screener serve``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from screener.config import WatchSettings
from screener.ingest.accept import Acceptor
from screener.ingest.watcher import FolderWatcher, digest_and_size


@dataclass(frozen=True)
class FolderOutcome:
    found: int
    taken: int = 0
    rejected: int = 0
    left: int = 0
    # dry run: each file's content digest (file_sha256) and size; never its name, which
    # may carry a patient's name or ID
    files: tuple[tuple[str, int], ...] = ()


def pending_files(settings: WatchSettings) -> list[Path]:
    """Files in the watch folder that the watcher would consider, without touching them."""
    root = Path(settings.dir).resolve()
    rejected = Path(settings.rejected_dir).resolve()
    if not root.is_dir():
        return []
    found: list[Path] = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if rejected in path.parents or name.endswith(".reason.txt"):
                continue  # the watcher's own rule (FolderWatcher.notice)
            found.append(path)
    return sorted(found)


def _reasons(rejected_dir: Path) -> int:
    return len(list(rejected_dir.glob("*.reason.txt"))) if rejected_dir.is_dir() else 0


def list_folder(settings: WatchSettings) -> FolderOutcome:
    """What a rescan would take from the watch folder (a dry run); touches nothing."""
    files = pending_files(settings)
    listed: list[tuple[str, int]] = []
    for path in files:
        try:
            listed.append(digest_and_size(path))  # in chunks: a dropped file may be huge
        except OSError:
            continue  # gone or unreadable: the watcher will say so when it takes it
    return FolderOutcome(found=len(files), left=len(files), files=tuple(listed))


def take_folder(settings: WatchSettings, acceptor: Acceptor) -> FolderOutcome:
    """Take every settled file in the watch folder through the watcher's own path."""
    files = pending_files(settings)
    if not files:
        return FolderOutcome(found=0)
    watcher = FolderWatcher(settings, acceptor)
    rejected_before = _reasons(watcher.rejected_dir)
    watcher.scan()
    watcher.process_settled()  # records size and mtime of each file
    time.sleep(settings.settle_seconds)
    taken = watcher.process_settled()
    return FolderOutcome(
        found=len(files),
        taken=taken,
        rejected=_reasons(watcher.rejected_dir) - rejected_before,
        left=len(pending_files(settings)),
    )
