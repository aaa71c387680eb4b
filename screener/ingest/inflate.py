"""The size of a received data set, checked before pydicom reads it (``listener.max_dataset_mb``).

pydicom reads a Deflated Explicit VR Little Endian data set (PS3.5 A.5 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_A.5>) with one
``zlib.decompress`` of the whole rest of the file: 3 MB of deflated zeros become 3 GB in
memory before a single element is looked at. :func:`check_size` inflates such a stream
first, a chunk at a time with nothing kept, and stops as soon as the output passes the
limit; a plain data set is measured by its length. The accept path (:func:`screener.ingest.
accept.parse`: C-STORE, the watch folder, the web's queued upload) and the web's assessment
of an upload (:mod:`screener.web.modelwork`) call it before any ``dcmread`` of the bytes.
"""

from __future__ import annotations

import io
import zlib

from pydicom.filereader import _read_command_set_elements, _read_file_meta_info, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

from screener.errors import IngestError

MB = 1 << 20
#: Compressed bytes handed to zlib at a time, and the most inflated bytes it returns at once:
#: what inflating costs in memory, whatever the stream inflates to.
INPUT_CHUNK = 1 << 16
OUTPUT_CHUNK = 1 << 20


class DatasetTooLarge(IngestError):
    """The data set is over ``listener.max_dataset_mb``, as received or as inflated
    (C-STORE status A700, Refused: Out of Resources, PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3>)."""

    reason = "dataset_too_large"


def limit_bytes(max_dataset_mb: int) -> int:
    """``listener.max_dataset_mb`` in bytes."""
    return max_dataset_mb * MB


def check_size(data: bytes, limit: int) -> None:
    """Raise :class:`DatasetTooLarge` if ``data`` (a Part 10 file or a raw data set) is
    longer than ``limit`` bytes or, Deflated, inflates to more."""
    if len(data) > limit:
        raise DatasetTooLarge(
            f"the data set is {len(data)} bytes, over listener.max_dataset_mb ({limit // MB} MB)"
        )
    stream = deflated_stream(data)
    if stream is not None and inflated_size(stream, limit) > limit:
        raise DatasetTooLarge(
            f"the Deflated data set ({len(stream)} bytes, PS3.5 A.5) inflates to more than "
            f"listener.max_dataset_mb ({limit // MB} MB)"
        )


def deflated_stream(data: bytes) -> memoryview | None:
    """The deflated part of ``data`` when its File Meta Information says Deflated Explicit
    VR Little Endian, else None.

    Found as ``dcmread`` finds it, with its own functions in its own order (preamble, if any;
    group 0002; any group 0000; the rest is the stream): whatever pydicom would inflate is
    measured here first. Bytes whose header pydicom cannot read give None: pydicom fails on
    them too, before inflating anything.
    """
    fp = io.BytesIO(data)
    try:
        read_preamble(fp, force=True)
        meta = _read_file_meta_info(fp)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return None
        _read_command_set_elements(fp)
    except Exception:  # malformed header: left to the parse that follows, which fails it
        return None
    return memoryview(data)[fp.tell() :]


def inflated_size(stream: bytes | memoryview, limit: int) -> int:
    """The number of bytes raw-deflate ``stream`` inflates to, counted no further than
    ``limit`` + one chunk; nothing inflated is kept. A stream zlib cannot inflate counts
    what it gave before failing (its parse then fails as corrupt)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, as pydicom inflates it
    total = 0
    view = memoryview(stream)
    try:
        for start in range(0, len(view), INPUT_CHUNK):
            pending: bytes | memoryview = view[start : start + INPUT_CHUNK]
            while pending:
                total += len(inflater.decompress(pending, OUTPUT_CHUNK))
                if total > limit or inflater.eof:
                    return total
                pending = inflater.unconsumed_tail
        # all input consumed: what zlib still holds is the rest of one match at most
        total += len(inflater.flush())
    except zlib.error:
        pass
    return total


__all__ = ["DatasetTooLarge", "check_size", "deflated_stream", "inflated_size", "limit_bytes"]
