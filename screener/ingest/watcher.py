"""The folder watcher: files dropped into a folder are accepted like C-STOREs.

Any file name is welcome; DICOM is recognised by content. A file is taken once its size and
modification time have not changed for ``watch.settle_seconds`` (it is no longer being
copied in). An accepted file is removed from the watch folder only after it is durable in
the spool and the database. A file that cannot be accepted is moved to ``rejected_dir``
with a ``.reason.txt`` beside it and a ``rejected`` job recording why; it never stops the
watcher. Files already present at start-up are picked up too. A file larger than
``listener.max_dataset_mb`` is rejected (``dataset_too_large``) from its size, never read
whole; one that inflates past it (Deflated) is rejected by the accept path.

File names, and the names of folders below the watch folder, often carry a patient's name
or ID, so they are never recorded: not in the log, the database, the rejected folder or its
``.reason.txt``. A file is identified by the SHA-256 of its content (``file_sha256``, the
first 16 hex digits); a rejected file is renamed ``<time>-<digest>.dcm``. Messages of
errors that may quote the path (an ``OSError``'s) are reduced to their text.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from screener.config import WatchSettings, writable_dir
from screener.errors import IngestError
from screener.ingest.accept import Acceptor, DoesNotMatchSOPClass, NotUnderstood, OutOfResources
from screener.ingest.inflate import MB, DatasetTooLarge, limit_bytes

log = structlog.get_logger(__name__)


#: How many hex digits of the content SHA-256 identify a file (log, rejected name, database).
DIGEST_HEX = 16


def file_digest(data: bytes) -> str:
    """The identifier of a dropped file: the start of its content's SHA-256 (never its name)."""
    return hashlib.sha256(data).hexdigest()[:DIGEST_HEX]


def describe_os_error(exc: OSError) -> str:
    """An ``OSError`` without the file name(s) that ``str(exc)`` would quote."""
    return exc.strerror or type(exc).__name__


def digest_and_size(path: Path) -> tuple[str, int]:
    """:func:`file_digest` of a file read in chunks (whatever its size), and its size."""
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()[:DIGEST_HEX]
        return digest, f.tell()


@dataclass
class _Pending:
    size: int
    mtime_ns: int
    stable_since: float
    deferred_since: float | None = None  # below the spool's disk floor since then


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
        self.dir = writable_dir("watch.dir", settings.dir)
        self.rejected_dir = writable_dir("watch.rejected_dir", settings.rejected_dir)
        self._pending: dict[Path, _Pending] = {}
        # Any text that quotes a path below the watch folder loses it from there on.
        self._path_pattern = re.compile(re.escape(str(self.dir)) + r".*")
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
            except Exception as exc:  # stage boundary: the watcher must keep going
                log.error(
                    "watcher_error",
                    error_type=type(exc).__name__,
                    error=self._scrub(str(exc)),
                    traceback=self._scrub("".join(traceback.format_exception(exc))),
                )

    def _scrub(self, text: str) -> str:
        """``text`` without any path below the watch folder (file and folder names are PHI)."""
        return self._path_pattern.sub("<watched file>", text)

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
                except OSError as exc:  # e.g. no permission on its folder: retried next time
                    log.warning("watch_file_stat_failed", error=describe_os_error(exc))
                    continue
                if (st.st_size, st.st_mtime_ns) != (pending.size, pending.mtime_ns):
                    self._pending[path] = _Pending(
                        st.st_size, st.st_mtime_ns, now, pending.deferred_since
                    )
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
        limit = limit_bytes(self.acceptor.settings.listener.max_dataset_mb)
        data, digest = b"", ""
        try:
            size = path.stat().st_size
            if size > limit:  # never read whole: identified by its digest, read in chunks
                digest, size = digest_and_size(path)
            else:
                data = path.read_bytes()  # settled: one that grew since is refused by parse
        except FileNotFoundError:
            return True
        except OSError as exc:
            error = describe_os_error(exc)
            log.warning("watch_file_unreadable", error=error)
            return self._reject(path, None, "unreadable_file", f"cannot read the file: {error}")
        if size > limit:
            self._resumed(path, digest)
            return self._reject(
                path,
                digest,
                DatasetTooLarge.reason,
                f"the file is {size} bytes, over listener.max_dataset_mb ({limit // MB} MB)",
            )
        digest = file_digest(data)
        try:
            outcome = self.acceptor.accept(data, source="folder")
        except OutOfResources as exc:
            self._deferred(path, digest, str(exc))
            return False  # stays in the folder; retried when space returns
        except (NotUnderstood, DoesNotMatchSOPClass, DatasetTooLarge) as exc:
            self._resumed(path, digest)
            return self._reject(path, digest, exc.reason, self._scrub(str(exc)))
        except IngestError as exc:
            self._resumed(path, digest)
            return self._reject(path, digest, "ingest_error", self._scrub(str(exc)))
        except Exception as exc:  # e.g. the database is down: keep the file, try again later
            log.error(
                "watch_file_failed",
                file_sha256=digest,
                error_type=type(exc).__name__,
                error=self._scrub(str(exc)),
                traceback=self._scrub("".join(traceback.format_exception(exc))),
            )
            return False
        self._resumed(path, digest)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # accepted all the same; a second take is a duplicate
            log.warning("watch_file_not_removed", file_sha256=digest, error=describe_os_error(exc))
        log.info(
            "watch_file_taken",
            file_sha256=digest,
            outcome=outcome.outcome,
            sop_instance_uid=outcome.sop_instance_uid,
        )
        return True

    def _deferred(self, path: Path, digest: str, error: str) -> None:
        """Below the spool's disk floor: logged once when a file's deferral starts."""
        with self._lock:
            pending = self._pending.get(path)
            if pending is None or pending.deferred_since is not None:
                return
            pending.deferred_since = time.monotonic()
        log.warning("watch_file_deferred", file_sha256=digest, error=self._scrub(error))

    def _resumed(self, path: Path, digest: str) -> None:
        """A file that was deferred is finally handled."""
        with self._lock:
            pending = self._pending.get(path)
            since = pending.deferred_since if pending is not None else None
            if pending is not None:
                pending.deferred_since = None
        if since is not None:
            log.info(
                "watch_file_resumed",
                file_sha256=digest,
                deferred_seconds=round(time.monotonic() - since, 1),
            )

    def _reject(self, path: Path, digest: str | None, reason: str, message: str) -> bool:
        """Move ``path`` to the rejected folder under a name that says nothing of the original.

        False if it could not be moved (it stays, and is tried again later)."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        ident = digest or f"unreadable-{uuid.uuid4().hex[:DIGEST_HEX]}"
        target = self.rejected_dir / f"{stamp}-{ident}.dcm"
        n = 1
        while target.exists():
            target = self.rejected_dir / f"{stamp}-{ident}-{n}.dcm"
            n += 1
        try:
            shutil.move(str(path), str(target))
        except OSError as exc:
            log.error(
                "watch_file_reject_failed",
                file_sha256=digest,
                reason=reason,
                error=describe_os_error(exc),
            )
            return False
        target.with_name(target.name + ".reason.txt").write_text(
            f"reason: {reason}\nmessage: {message}\nfile_sha256: {digest or '-'}\n",
            encoding="utf-8",
        )
        job_id = self.acceptor.record_rejected_file(target, reason, message)
        log.warning(
            "watch_file_rejected",
            file_sha256=digest,
            moved_to=str(target),
            reason=reason,
            job_id=job_id,
        )
        return True
