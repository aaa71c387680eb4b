"""The pixel data's own headers, checked against the Image Pixel Module before any decoding.

A decoder allocates what the *codestream* says, not what Rows and Columns say: a 131 KB
JPEG whose SOF claims 65500 x 65500 asks for 4 GB. So before a single pixel is decoded,
every frame's codec header is read and must agree with (0028,0010) Rows, (0028,0011)
Columns, (0028,0002) Samples per Pixel and (0028,0100) Bits Allocated, and the stream must
be of the kind its transfer syntax names (a JPEG stream labelled JPEG-LS, RLE or a native
syntax is corrupt, not "another format"). Each check reads a few bytes; nothing is decoded.

* JPEG (ISO/IEC 10918-1 B.2.2 frame header, SOF0-SOF15) and JPEG-LS (ISO/IEC 14495-1 C.2.2,
  SOF55): precision, lines, samples per line, components; the SOF kind must match the
  transfer syntax (PS3.5 A.4.1 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_A.4.1>, A.4.3); the stream must start with SOI and end with EOI,
  and the entropy-coded data may hold no marker that cannot occur there (B.1.1.5).
* JPEG 2000 (ISO/IEC 15444-1 A.5.1 SIZ): image size, components, precision; ends with EOC.
* RLE (PS3.5 G.5 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_G.5>): the 64-byte header's segment count must be Samples per Pixel x Bits
  Allocated / 8, its offsets increasing and inside the frame.
* Native, i.e. any transfer syntax pydicom does not call compressed (PS3.5 8.1.1 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_8.1.1>): the value
  length must be exactly what the module needs (plus one byte of padding to an even
  length), and the data may not be encapsulated.
* Encapsulated (PS3.5 A.4 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_A.4>): every item of the Pixel Data sequence lies inside the value.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from screener.errors import ImageError

#: The frame header markers each JPEG transfer syntax may carry (PS3.5 A.4.1 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_A.4.1>, A.4.3).
#: Baseline (process 1) streams are also valid Extended (process 2 and 4) streams; some
#: encoders mark 8-bit baseline streams SOF1, which every decoder reads.
SOF0, SOF1, SOF3, SOF55 = 0xC0, 0xC1, 0xC3, 0xF7
JPEG_SOF_FOR_SYNTAX: dict[UID, frozenset[int]] = {
    JPEGBaseline8Bit: frozenset({SOF0, SOF1}),
    JPEGExtended12Bit: frozenset({SOF0, SOF1}),
    JPEGLossless: frozenset({SOF3}),
    JPEGLosslessSV1: frozenset({SOF3}),
    JPEGLSLossless: frozenset({SOF55}),
    JPEGLSNearLossless: frozenset({SOF55}),
}
J2K_SYNTAXES = frozenset(JPEG2000TransferSyntaxes)

_SOF_NAMES = {SOF0: "SOF0 (baseline)", SOF1: "SOF1 (extended)", SOF3: "SOF3 (lossless)"}
_SOF_NAMES[SOF55] = "SOF55 (JPEG-LS)"

#: ISO/IEC 10918-1 Table B.1: SOFn markers (C4 DHT, C8 JPG and CC DAC are not frames).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: Markers without a length field: TEM, RST0-7, SOI, EOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8, 0xD9})
#: What may follow 0xFF inside or right after entropy-coded data (B.1.1.5, B.2.4): stuffing,
#: fill, restarts, and the marker segments allowed between scans or at the end.
_AFTER_FF_IN_SCAN = frozenset(
    {0x00, 0xFF, *range(0xD0, 0xD8), 0xC4, 0xCC, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDF, 0xFE}
    | set(range(0xE0, 0xF0))
)

_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_EOI = b"\xff\xd9"  # JPEG EOI and JPEG 2000 EOC share the code


@dataclass(frozen=True)
class StreamHeader:
    """What a codestream says of the image it holds."""

    kind: int  # the SOF marker, or 0 for JPEG 2000
    precision: int
    rows: int
    columns: int
    components: int


def corrupt(message: str) -> ImageError:
    return ImageError("corrupt_pixel_data", message)


def _u16(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos : pos + 2], "big")


def _ends_with_eoi(stream: bytes) -> bool:
    """EOI / EOC last, allowing the one byte that pads a fragment to an even length."""
    # PS3.5 A.4 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_A.4>: encoders pad with 0x00 (some with 0xFF)
    return stream.endswith(_EOI) or (stream[-1:] in (b"\x00", b"\xff") and stream[-3:-1] == _EOI)


def jpeg_header(stream: bytes) -> tuple[StreamHeader, int]:
    """The frame header of a JPEG / JPEG-LS stream and where its first scan's data starts."""
    if stream[:2] != b"\xff\xd8":
        raise corrupt("the frame is not a JPEG stream: it does not start with SOI (FFD8)")
    pos, header = 2, None
    while pos + 4 <= len(stream):
        if stream[pos] != 0xFF:
            raise corrupt(f"the JPEG stream has no marker where one must be (byte {pos})")
        marker = stream[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = _u16(stream, pos + 2)
        if length < 2 or pos + 2 + length > len(stream):
            raise corrupt(
                f"the JPEG marker segment FF{marker:02X} at byte {pos} claims {length} bytes, "
                "beyond the end of the stream"
            )
        if marker in _JPEG_SOF or marker == SOF55:
            if length < 8:
                raise corrupt(f"the JPEG frame header FF{marker:02X} is too short")
            header = StreamHeader(
                kind=marker,
                precision=stream[pos + 4],
                rows=_u16(stream, pos + 5),
                columns=_u16(stream, pos + 7),
                components=stream[pos + 9],
            )
        if marker == 0xDA:  # SOS: the entropy-coded data follow its header
            if header is None:
                raise corrupt("the JPEG stream has a scan before its frame header (SOF)")
            return header, pos + 2 + length
        pos += 2 + length
    raise corrupt("the JPEG stream ends before its first scan (no SOF and SOS)")


def check_jpeg_scan(stream: bytes, scan_start: int, jpeg_ls: bool) -> None:
    """Markers inside entropy-coded data: only those ISO/IEC 10918-1 B.1.1.5 allows.

    JPEG-LS (14495-1 A.1) stuffs a zero *bit* after 0xFF instead, so there 0xFF followed by
    a byte below 0x80 is data; a byte at or above it must be a marker we know.
    """
    data = np.frombuffer(stream, dtype=np.uint8)[scan_start:]
    positions = np.flatnonzero(data[:-1] == 0xFF)
    if positions.size == 0:
        return
    following = data[positions + 1]
    if jpeg_ls:
        following = following[following >= 0x80]
        allowed = _AFTER_FF_IN_SCAN | {0xF7, 0xF8, 0xFF}
    else:
        allowed = _AFTER_FF_IN_SCAN
    bad = following[~np.isin(following, np.fromiter(allowed, dtype=np.uint8))]
    if bad.size:
        raise corrupt(
            f"the JPEG stream's coded data hold {bad.size} invalid marker(s) "
            f"(the first FF{int(bad[0]):02X}): the data are damaged"
        )


def j2k_header(stream: bytes) -> tuple[StreamHeader, bytes]:
    """The SIZ marker of a JPEG 2000 codestream (or of the one inside a JP2 file)."""
    # PS3.5 A.4.4 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_A.4.4>
    # wants a bare codestream; tolerate JP2
    if stream.startswith(_JP2_SIGNATURE):
        at = stream.find(b"jp2c")
        if at < 0:
            raise corrupt("the JP2 file holds no codestream box (jp2c)")
        stream = stream[at + 4 :]
    if not stream.startswith(_J2K_SOC_SIZ) or len(stream) < 42:
        raise corrupt(
            "the frame is not a JPEG 2000 codestream: it does not start with SOC and SIZ "
            "(FF4F FF51)"
        )
    # SIZ: Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz Csiz, then Ssiz XRsiz YRsiz
    x, y, x0, y0 = (int.from_bytes(stream[i : i + 4], "big") for i in range(8, 24, 4))
    components = _u16(stream, 40)
    if components == 0 or len(stream) < 42 + 3 * components:
        raise corrupt("the JPEG 2000 SIZ marker is truncated")
    precision = (stream[42] & 0x7F) + 1
    if x <= x0 or y <= y0:
        raise corrupt("the JPEG 2000 SIZ marker describes an empty image")
    return StreamHeader(0, precision, y - y0, x - x0, components), stream


def _check_rle(frame: bytes, samples: int, bits_allocated: int, index: int) -> None:
    if len(frame) < 64:
        raise corrupt(f"RLE frame {index + 1} is shorter than its 64-byte header")
    header = np.frombuffer(frame[:64], dtype="<u4")
    segments = int(header[0])
    expected = samples * bits_allocated // 8
    if segments != expected:
        raise corrupt(
            f"RLE frame {index + 1} declares {segments} segment(s); Samples per Pixel "
            f"{samples} x Bits Allocated {bits_allocated} need {expected}"
        )
    offsets = [int(v) for v in header[1 : 1 + segments]]
    if offsets[0] != 64 or any(b <= a for a, b in itertools.pairwise(offsets)):
        raise corrupt(f"RLE frame {index + 1} has segment offsets that are not in order")
    if offsets[-1] >= len(frame):
        raise corrupt(f"RLE frame {index + 1} has a segment offset beyond its data")


def check_frame(
    frame: bytes,
    syntax: UID,
    *,
    rows: int,
    columns: int,
    samples: int,
    bits_allocated: int,
    index: int,
) -> StreamHeader | None:
    """Check one encoded frame against the Image Pixel Module and its transfer syntax.

    Returns what the codestream says (``None`` for RLE); raises ``corrupt_pixel_data``.
    """
    which = f"frame {index + 1}"
    if syntax == RLELossless:
        _check_rle(frame, samples, bits_allocated, index)
        return None
    if syntax in J2K_SYNTAXES:
        header, codestream = j2k_header(frame)
        if not _ends_with_eoi(codestream):
            raise corrupt(f"the JPEG 2000 codestream of {which} is cut short: it has no EOC")
    elif syntax in JPEG_SOF_FOR_SYNTAX:
        header, scan_start = jpeg_header(frame)
        allowed = JPEG_SOF_FOR_SYNTAX[syntax]
        if header.kind not in allowed:
            found = _SOF_NAMES.get(header.kind, f"SOF marker FF{header.kind:02X}")
            raise corrupt(
                f"{which} is a JPEG stream with {found}, which transfer syntax "
                f"{syntax.name} ({syntax}) does not carry"
            )
        if not _ends_with_eoi(frame):
            raise corrupt(f"the JPEG stream of {which} is cut short: it has no EOI")
        check_jpeg_scan(frame, scan_start, jpeg_ls=header.kind == SOF55)
    else:
        raise corrupt(f"transfer syntax {syntax} is not an encapsulated syntax screener knows")
    if (header.rows, header.columns) != (rows, columns):
        raise corrupt(
            f"the codestream of {which} says {header.columns} x {header.rows} px but "
            f"(0028,0011) Columns x (0028,0010) Rows is {columns} x {rows}"
        )
    if header.components != samples:
        raise corrupt(
            f"the codestream of {which} has {header.components} component(s) but "
            f"(0028,0002) Samples per Pixel is {samples}"
        )
    if not 1 <= header.precision <= bits_allocated:
        raise corrupt(
            f"the codestream of {which} has {header.precision}-bit samples but "
            f"(0028,0100) Bits Allocated is {bits_allocated}"
        )
    return header


def native_length(rows: int, columns: int, frames: int, samples: int, bits_allocated: int) -> int:
    """Bytes of native Pixel Data the Image Pixel Module calls for, before padding (PS3.5 8.1.1 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_8.1.1>)."""
    return (rows * columns * frames * samples * bits_allocated + 7) // 8


def check_native_length(
    length: int, *, rows: int, columns: int, frames: int, samples: int, bits_allocated: int
) -> None:
    """PS3.5 8.1.1 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_8.1.1> and 8.4: native Pixel Data holds exactly the pixels, padded to even."""
    expected = native_length(rows, columns, frames, samples, bits_allocated)
    if not expected <= length <= expected + 1:
        raise corrupt(
            f"the native Pixel Data holds {length} bytes; {frames} frame(s) of {columns} x "
            f"{rows} px, {samples} sample(s) of {bits_allocated} bits need exactly {expected}"
        )


def check_encapsulated_items(pixel_data: bytes) -> None:
    """PS3.5 A.4 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_A.4>: a sequence of items (FFFE,E000) each of an even length inside the value."""
    pos, end = 0, len(pixel_data)
    while pos + 8 <= end:
        group, element = (
            int.from_bytes(pixel_data[pos + i : pos + i + 2], "little") for i in (0, 2)
        )
        length = int.from_bytes(pixel_data[pos + 4 : pos + 8], "little")
        if (group, element) == (0xFFFE, 0xE0DD):  # sequence delimiter
            return
        if (group, element) != (0xFFFE, 0xE000):
            raise corrupt(f"the encapsulated Pixel Data has no item tag at byte {pos}")
        if length == 0xFFFFFFFF or pos + 8 + length > end:
            raise corrupt(
                f"an item of the encapsulated Pixel Data claims {length} bytes, beyond the "
                f"{end - pos - 8} that follow it"
            )
        pos += 8 + length
    if pos != end:
        raise corrupt("the encapsulated Pixel Data ends inside an item header")
