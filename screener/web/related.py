"""A ``multipart/related`` request body read as it streams in (RFC 2387; PS3.18 8.6.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part18.html#sect_8.6.1.2>):
the parts of a STOW-RS request, one at a time, each bounded in size.

Starlette's form parser knows ``multipart/form-data`` only; python-multipart's
:class:`MultipartParser` (what it uses underneath) reads any multipart body given its
boundary. A part is kept in memory until it is complete, never more than ``max_part``
bytes of it: a longer part is counted and dropped, and reported as too large. The whole
body is bounded before it gets here (:class:`screener.web.guard.BodyLimit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header

#: Parts of one request at most (each is a DICOM instance; a study of chest films has few).
MAX_PARTS = 1000


class BadRequest(Exception):
    """The body is not a readable multipart/related message (HTTP 400)."""


class UnsupportedMediaType(Exception):
    """A request that is not ``multipart/related; type="application/dicom"`` (HTTP 415)."""


@dataclass
class Part:
    """One body part: its Content-Type, its bytes (empty when ``too_large``), its size."""

    content_type: str = ""
    data: bytearray = field(default_factory=bytearray)
    size: int = 0
    too_large: bool = False


def boundary_of(content_type: str) -> bytes:
    """The boundary of a STOW-RS request's Content-Type; raises when it is not one we take.

    PS3.18 10.5.1.1 <https://dicom.nema.org/medical/dicom/current/output/html/part18.html#sect_10.5.1.1>: ``multipart/related; type="application/dicom"`` (DICOM Part 10
    files); the metadata-and-bulk-data forms (``application/dicom+json``, ``+xml``) are not
    supported.
    """
    kind, options = parse_options_header(content_type)
    if kind.lower() != b"multipart/related":
        raise UnsupportedMediaType("the request must be multipart/related")
    part_type = options.get(b"type", b"application/dicom").strip().lower()
    if part_type != b"application/dicom":
        raise UnsupportedMediaType(
            'only multipart/related; type="application/dicom" (Part 10 instances) is supported'
        )
    boundary = options.get(b"boundary", b"")
    if not boundary or len(boundary) > 200:
        raise BadRequest("the multipart/related Content-Type has no usable boundary")
    return boundary


class RelatedReader:
    """Feed it the body's chunks (:meth:`write`); take the parts completed so far (:meth:`take`)."""

    def __init__(self, boundary: bytes, max_part: int) -> None:
        self.max_part = max_part
        self._done: list[Part] = []
        self._part: Part | None = None
        self._field = bytearray()
        self._value = bytearray()
        self._count = 0
        self.ended = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_part_data": self._data,
                "on_part_end": self._end,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_end": self._on_end,
            },
        )

    def write(self, chunk: bytes) -> None:
        """Parse the next chunk of the body; BadRequest when it is not multipart."""
        try:
            self._parser.write(chunk)
        except BadRequest:
            raise
        except Exception as exc:  # python-multipart's MultipartParseError and friends
            raise BadRequest(f"the multipart/related body cannot be read ({exc})") from None

    def take(self) -> list[Part]:
        """The parts completed since the last call."""
        done, self._done = self._done, []
        return done

    def finish(self) -> None:
        """The body has ended: BadRequest if its closing boundary never came."""
        if not self.ended:
            raise BadRequest("the multipart/related body ended before its closing boundary")

    # -- the parser's callbacks ----------------------------------------------------------

    def _begin(self) -> None:
        self._count += 1
        if self._count > MAX_PARTS:
            raise BadRequest(f"more than {MAX_PARTS} parts in one request")
        self._part = Part()

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part is None:
            return
        part.size += end - start
        if part.size > self.max_part:
            part.too_large = True
            part.data = bytearray()  # counted, not kept
        elif not part.too_large:
            part.data += data[start:end]

    def _end(self) -> None:
        if self._part is not None:
            self._done.append(self._part)
        self._part = None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._part is not None and self._field.strip().lower() == b"content-type":
            self._part.content_type = self._value.decode("latin-1").strip()[:200]
        self._field, self._value = bytearray(), bytearray()

    def _on_end(self) -> None:
        self.ended = True
