"""Query/Retrieve SCU: find studies on the PACS (C-FIND) and have them sent to us (C-MOVE).

Both use the Study Root Query/Retrieve Information Model (PS3.4 C.6.2 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_C.6.2>). The C-FIND asks at
STUDY level for the date window, once per modality (``ModalitiesInStudy`` with one value:
single value matching, PS3.4 C.2.2.2.1 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_C.2.2.2.1>; a list of values is not portable for a non-UID
key). ``ModalitiesInStudy`` is an optional key that some PACS (dcmtk's ``dcmqrscp``) neither
match nor return; for a study that comes back without it, a SERIES level C-FIND on the same
association asks for the ``Modality`` of each series (a required key there, PS3.4 C.6.2.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_C.6.2.1.2>).

The C-MOVE names the study and a Move Destination; the PACS opens its own association to
that AE title and stores the images there, so the destination must be known to the PACS
(its AE title, host and port) and our listener must be running.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime

import structlog
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association

from screener.dicomnet.peers import Peer, parse_peer
from screener.errors import ScreenerError

log = structlog.get_logger(__name__)

# pynetdicom's ``sop_class`` attributes are created at import time and invisible to mypy.
# Study Root Query/Retrieve Information Model - FIND
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
# Study Root Query/Retrieve Information Model - MOVE
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"

# PS3.4 Table C.4-1 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#table_C.4-1> (C-FIND) and Table C.4-2 (C-MOVE) statuses.
STATUS_SUCCESS = 0x0000
STATUS_PENDING = (0xFF00, 0xFF01)
# C-MOVE Warning: sub-operations complete, one or more failures or warnings.
STATUS_MOVE_WARNING = 0xB000


class RescanError(ScreenerError):
    """The PACS could not be queried or refused a request; the message names peer and status."""


def parse_pacs(text: str, key: str = "rescan.pacs") -> Peer:
    """The PACS to query, ``rescan.pacs`` (see :func:`screener.dicomnet.peers.parse_peer`)."""
    return parse_peer(text, key)


@dataclass(frozen=True)
class StudyMatch:
    """One study the PACS reported; only UIDs, accession number, date, time and modalities."""

    study_instance_uid: str
    accession_number: str | None
    study_date: str | None  # DA, YYYYMMDD
    study_time: str | None  # TM
    modalities: tuple[str, ...]  # empty: the PACS did not say

    def started_at(self) -> datetime | None:
        """StudyDate + StudyTime as a naive local datetime; None when the date is unusable."""
        if not self.study_date:
            return None
        try:
            day = datetime.strptime(self.study_date[:8], "%Y%m%d")
        except ValueError:
            return None
        digits = (self.study_time or "").split(".")[0].replace(":", "")  # ACR-NEMA HH:MM:SS
        try:
            hour = int(digits[0:2] or 0)
            minute = int(digits[2:4] or 0)
            second = int(digits[4:6] or 0)
            return day.replace(hour=hour, minute=minute, second=second)
        except ValueError:
            return day


@dataclass
class MoveOutcome:
    """What the last C-MOVE response said: status (PS3.4 C.4.2.1.5 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_C.4.2.1.5>) and sub-operation counts."""

    status: int
    completed: int = 0
    failed: int = 0
    warning: int = 0

    @property
    def ok(self) -> bool:
        return self.status in (STATUS_SUCCESS, STATUS_MOVE_WARNING) and self.failed == 0


def _date_range(since: datetime, until: datetime) -> str:
    """PS3.4 C.2.2.2.5.1 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_C.2.2.2.5.1> range matching on a DA value: ``YYYYMMDD-YYYYMMDD``."""
    start: date = since.date()
    end: date = until.date()
    return f"{start:%Y%m%d}-{end:%Y%m%d}"


def _in_window(match: StudyMatch, since: datetime, until: datetime) -> bool:
    """The date matched on the PACS; check the time too where there is one."""
    started = match.started_at()
    if started is None:
        return True  # the PACS matched it; we cannot tell better
    if match.study_time is None:
        return since.date() <= started.date() <= until.date()
    return since <= started <= until


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _status(rsp: Dataset) -> int | None:
    return int(rsp.Status) if "Status" in rsp else None


class PacsClient:
    """A Query/Retrieve SCU bound to one PACS; one association per ``session()``."""

    def __init__(
        self,
        pacs: Peer,
        calling_ae_title: str,
        timeout: float,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.pacs = pacs
        self.tls_context = tls_context
        self.calling_ae_title = calling_ae_title
        self.timeout = timeout

    @contextmanager
    def session(self) -> Iterator[Association]:
        ae = AE(ae_title=self.calling_ae_title)
        ae.add_requested_context(STUDY_ROOT_FIND)
        ae.add_requested_context(STUDY_ROOT_MOVE)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        tls_args = (self.tls_context, self.pacs.host) if self.tls_context else None
        assoc = ae.associate(
            self.pacs.host, self.pacs.port, ae_title=self.pacs.ae_title, tls_args=tls_args
        )
        if not assoc.is_established:
            raise RescanError(
                f"cannot associate with PACS {self.pacs}: rejected, aborted or no answer "
                f"(calling AE title {self.calling_ae_title!r})"
            )
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()

    def find_studies(
        self, since: datetime, until: datetime, modalities: Iterable[str]
    ) -> list[StudyMatch]:
        """Studies dated in [since, until] with any of ``modalities``, one per Study UID,
        sorted by date and time (:meth:`iter_studies`, gathered)."""
        return sorted(
            self.iter_studies(since, until, modalities),
            key=lambda m: (m.study_date or "", m.study_time or "", m.study_instance_uid),
        )

    def iter_studies(
        self, since: datetime, until: datetime, modalities: Iterable[str]
    ) -> Iterator[StudyMatch]:
        """Studies dated in [since, until] with any of ``modalities``, one per Study UID, each
        as its C-FIND response arrives (a PACS may answer with 100,000 studies: none is kept
        here, but those that come back without ``ModalitiesInStudy``).

        ``since`` and ``until`` are naive local times, as StudyDate/StudyTime are. The query
        matches on the date; the time is checked here, where the PACS returned it. A study
        of two wanted modalities comes back from both queries: the second answer, naming a
        modality queried before, is dropped. A study that comes back without
        ``ModalitiesInStudy`` is kept aside until the study-level answers end (one C-FIND at a
        time on an association), then asked at SERIES level.
        """
        wanted = sorted({m.upper() for m in modalities})
        found = 0

        def kept(match: StudyMatch) -> bool:
            if match.modalities and not set(wanted) & set(match.modalities):
                return False
            return _in_window(match, since, until)

        with self.session() as assoc:
            unsaid: dict[str, StudyMatch] = {}
            for n, modality in enumerate(wanted):
                for match in self._find_study_level(assoc, since, until, modality):
                    if not match.modalities:
                        unsaid.setdefault(match.study_instance_uid, match)
                    elif not set(wanted[:n]) & set(match.modalities) and kept(match):
                        # a study with a modality queried before came back then: once only
                        found += 1
                        yield match
            for match in unsaid.values():
                match = self._with_series_modalities(assoc, match)
                if kept(match):
                    found += 1
                    yield match
        log.info("pacs_studies_found", pacs=str(self.pacs), studies=found)

    def _find_study_level(
        self, assoc: Association, since: datetime, until: datetime, modality: str
    ) -> Iterator[StudyMatch]:
        # PS3.4 C.4.1 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_C.4.1> C-FIND, Study Root, STUDY level (C.6.2.1.1): empty keys are return keys.
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        query.StudyDate = _date_range(since, until)
        query.StudyTime = ""
        query.AccessionNumber = ""
        query.ModalitiesInStudy = modality
        for identifier in self._find(assoc, query):
            uid = _text(identifier, "StudyInstanceUID")
            if uid is None:
                continue
            value = identifier.get("ModalitiesInStudy")
            if value is None or value == "":
                modalities: tuple[str, ...] = ()
            elif isinstance(value, str):
                modalities = (value.strip().upper(),)
            else:
                modalities = tuple(str(v).strip().upper() for v in value if str(v).strip())
            yield StudyMatch(
                study_instance_uid=uid,
                accession_number=_text(identifier, "AccessionNumber"),
                study_date=_text(identifier, "StudyDate"),
                study_time=_text(identifier, "StudyTime"),
                modalities=modalities,
            )

    def _with_series_modalities(self, assoc: Association, match: StudyMatch) -> StudyMatch:
        # PS3.4 C.6.2.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_C.6.2.1.2>: SERIES level, Modality is a required key.
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = match.study_instance_uid
        query.SeriesInstanceUID = ""
        query.Modality = ""
        seen = {
            m
            for identifier in self._find(assoc, query)
            if (m := (_text(identifier, "Modality") or "").upper())
        }
        return StudyMatch(
            match.study_instance_uid,
            match.accession_number,
            match.study_date,
            match.study_time,
            tuple(sorted(seen)),
        )

    def _find(self, assoc: Association, query: Dataset) -> Iterator[Dataset]:
        for rsp, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
            status = _status(rsp)
            if status is None:
                raise RescanError(
                    f"C-FIND to PACS {self.pacs}: no valid response (timeout or abort)"
                )
            if status in STATUS_PENDING:
                if identifier is not None:
                    yield identifier
                continue
            if status != STATUS_SUCCESS:
                raise RescanError(
                    f"C-FIND to PACS {self.pacs} failed with status 0x{status:04X} "
                    f"(level {query.QueryRetrieveLevel})"
                )

    def move_study(
        self,
        assoc: Association,
        study_instance_uid: str,
        move_destination: str,
    ) -> MoveOutcome:
        """Ask the PACS to send one study to ``move_destination``; the final counts."""
        # PS3.4 C.4.2 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_C.4.2> C-MOVE, Study Root, STUDY level: the unique key names the study.
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_instance_uid
        outcome = MoveOutcome(status=-1)
        for rsp, _identifier in assoc.send_c_move(query, move_destination, STUDY_ROOT_MOVE):
            status = _status(rsp)
            if status is None:
                outcome.status = -1
                break
            outcome.status = status
            # PS3.4 C.4.2.1.6 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_C.4.2.1.6>-9: sub-operation counts, on pending and final responses.
            outcome.completed = int(
                rsp.get("NumberOfCompletedSuboperations", outcome.completed) or 0
            )
            outcome.failed = int(rsp.get("NumberOfFailedSuboperations", outcome.failed) or 0)
            outcome.warning = int(rsp.get("NumberOfWarningSuboperations", outcome.warning) or 0)
        return outcome
