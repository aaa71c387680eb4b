"""The folder watcher: files dropped into a folder are accepted like C-STOREs.

Any file name is welcome; DICOM is recognised by content. A file is taken once its size and
modification time have not changed for ``watch.settle_seconds`` (it is no longer being
copied in). An accepted file is removed from the watch folder only after it is durable in
the spool and the database. A file that cannot be accepted is moved to ``rejected_dir``
with a ``.reason.txt`` beside it and a ``rejected`` job recording why; it never stops the
watcher. Files already present at start-up are picked up too.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from screener.config import WatchSettings
from screener.errors import IngestError
from screener.ingest.accept import Acceptor, DoesNotMatchSOPClass, NotUnderstood, OutOfResources

log = structlog.get_logger(__name__)


@dataclass
class _Pending:
    size: int
    mtime_ns: int
    stable_since: float


class _Events(FileSystemEventHandler):
    def __init__(self, watcher: FolderWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        path = getattr(event, "dest_path", "") or event.src_path
        self.watcher.notice(Path(os.fsdecode(path)))


class FolderWatcher:
    def __init__(self, settings: WatchSettings, acceptor: Acceptor) -> None:
        self.settings = settings
        self.acceptor = acceptor
        self.dir = Path(settings.dir).resolve()
        self.rejected_dir = Path(settings.rejected_dir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        self._pending: dict[Path, _Pending] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._observer: Any = None
        self._thread: threading.Thread | None = None

    def notice(self, path: Path) -> None:
        """Note a path to check (from a file-system event or a scan)."""
        if self.rejected_dir in path.parents or path.name.endswith(".reason.txt"):
            return
        with self._lock:
            self._pending.setdefault(path, _Pending(-1, -1, time.monotonic()))

    def scan(self) -> int:
        """Note every file under the watch folder (start-up, and a backstop for lost events)."""
        count = 0
        for root, _dirs, files in os.walk(self.dir):
            for name in files:
                self.notice(Path(root) / name)
                count += 1
        return count

    def start(self) -> None:
        self._observer = Observer()
        self._observer.schedule(_Events(self), str(self.dir), recursive=True)
        self._observer.start()
        found = self.scan()
        self._thread = threading.Thread(target=self._run, name="folder-watcher", daemon=True)
        self._thread.start()
        log.info("watcher_started", dir=str(self.dir), files_present=found)

    def stop(self) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=30)
        log.info("watcher_stopped")

    def _run(self) -> None:
        last_scan = time.monotonic()
        while not self._stop.wait(self.settings.poll_seconds):
            try:
                self.process_settled()
                if time.monotonic() - last_scan > 60:  # backstop for lost events
                    self.scan()
                    last_scan = time.monotonic()
            except Exception:  # stage boundary: the watcher must keep going
                log.exception("watcher_error")

    def process_settled(self) -> int:
        """Take every pending file that has stopped growing; returns how many were handled."""
        now = time.monotonic()
        ready: list[Path] = []
        with self._lock:
            for path, pending in list(self._pending.items()):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    del self._pending[path]
                    continue
                if (st.st_size, st.st_mtime_ns) != (pending.size, pending.mtime_ns):
                    self._pending[path] = _Pending(st.st_size, st.st_mtime_ns, now)
                elif now - pending.stable_since >= self.settings.settle_seconds:
                    ready.append(path)
        handled = 0
        for path in ready:
            if self._take(path):
                handled += 1
                with self._lock:
                    self._pending.pop(path, None)
        return handled

    def _take(self, path: Path) -> bool:
        """Accept or reject one settled file. False if it must be retried later."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return True
        except OSError as exc:
            log.warning("watch_file_unreadable", path=str(path), error=str(exc))
            self._reject(path, "unreadable_file", f"cannot read the file: {exc}")
            return True
        try:
            outcome = self.acceptor.accept(data, source="folder")
        except OutOfResources as exc:
            log.warning("watch_file_deferred", path=str(path), error=str(exc))
            return False  # stays in the folder; retried when space returns
        except (NotUnderstood, DoesNotMatchSOPClass) as exc:
            self._reject(path, exc.reason, str(exc))
            return True
        except IngestError as exc:
            self._reject(path, "ingest_error", str(exc))
            return True
        except Exception:  # e.g. the database is down: keep the file, try again later
            log.exception("watch_file_failed", path=str(path))
            return False
        path.unlink(missing_ok=True)
        log.info(
            "watch_file_taken",
            path=path.name,
            outcome=outcome.outcome,
            sop_instance_uid=outcome.sop_instance_uid,
        )
        return True

    def _reject(self, path: Path, reason: str, message: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.rejected_dir / f"{stamp}-{path.name}"
        n = 1
        while target.exists():
            target = self.rejected_dir / f"{stamp}-{n}-{path.name}"
            n += 1
        shutil.move(str(path), str(target))
        target.with_name(target.name + ".reason.txt").write_text(
            f"reason: {reason}\nmessage: {message}\noriginal: {path}\n", encoding="utf-8"
        )
        job_id = self.acceptor.record_rejected_file(path, target, reason, message)
        log.warning(
            "watch_file_rejected",
            path=path.name,
            moved_to=str(target),
            reason=reason,
            job_id=job_id,
        )
