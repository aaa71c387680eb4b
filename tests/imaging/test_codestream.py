"""The codec-header checks, on crafted streams: each rule alone, and what must still pass."""

from __future__ import annotations

import struct

import pytest
from pydicom.uid import UID, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from screener.errors import ImageError
from screener.imaging.codestream import (
    check_encapsulated_items,
    check_frame,
    check_native_length,
)
from screener.ingest.uids import uid_problem


def _jpeg(rows: int = 64, columns: int = 64, sof: int = 0xC0, scan: bytes = b"\x12\x34") -> bytes:
    frame = struct.pack(">BHHB", 8, rows, columns, 1) + b"\x01\x11\x00"
    return (
        b"\xff\xd8"
        + b"\xff" + bytes([sof]) + struct.pack(">H", 2 + len(frame)) + frame
        + b"\xff\xda" + struct.pack(">H", 8) + b"\x01\x01\x00\x00\x3f\x00"
        + scan
        + b"\xff\xd9"
    )  # fmt: skip


def _check(frame: bytes, syntax: UID = JPEGBaseline8Bit, rows: int = 64, columns: int = 64) -> None:
    check_frame(frame, syntax, rows=rows, columns=columns, samples=1, bits_allocated=8, index=0)


def _corrupt(frame: bytes, syntax: UID = JPEGBaseline8Bit) -> str:
    with pytest.raises(ImageError) as caught:
        _check(frame, syntax)
    assert caught.value.reason == "corrupt_pixel_data"
    return str(caught.value)


def test_a_consistent_jpeg_header_passes_with_or_without_a_padding_byte() -> None:
    """SOI, SOF matching Rows x Columns, a scan, EOI: accepted, also padded to even."""
    _check(_jpeg())
    _check(_jpeg() + b"\x00")


def test_jpeg_sof_size_must_match_rows_and_columns() -> None:
    """The bomb: an SOF claiming 65500 x 65500 px under a 64 x 64 header."""
    assert "65500 x 65500" in _corrupt(_jpeg(65500, 65500))


def test_jpeg_sof_kind_must_match_the_transfer_syntax() -> None:
    """A lossless (SOF3) stream under JPEG Baseline, a baseline one under JPEG-LS."""
    assert "SOF3" in _corrupt(_jpeg(sof=0xC3))
    assert "SOF0" in _corrupt(_jpeg(), JPEGLSLossless)


def test_jpeg_stream_must_end_with_eoi() -> None:
    """A stream cut before its EOI is corrupt."""
    assert "no EOI" in _corrupt(_jpeg()[:-2])


def test_jpeg_scan_may_hold_no_impossible_marker() -> None:
    """0xFF followed by a byte no marker has (here 0x47) inside coded data is damage;
    stuffed 0xFF00 and restart markers are not."""
    assert "FF47" in _corrupt(_jpeg(scan=b"\x12\xff\x47\x34"))
    _check(_jpeg(scan=b"\x12\xff\x00\x34\xff\xd0\x56"))


def test_jpeg2000_siz_must_match_and_end_with_eoc() -> None:
    """SIZ 128 x 128 under a 64 x 64 header, and a codestream without EOC."""
    siz = struct.pack(">HHIIIIIIIIH", 41, 0, 64, 64, 0, 0, 64, 64, 0, 0, 1) + b"\x07\x01\x01"
    stream = b"\xff\x4f\xff\x51" + siz + b"\xff\xd9"
    _check(stream, JPEG2000Lossless)
    big = b"\xff\x4f\xff\x51" + siz.replace(
        struct.pack(">II", 64, 64), struct.pack(">II", 128, 128), 1
    )
    assert "128 x 128" in _corrupt(big + b"\xff\xd9", JPEG2000Lossless)
    assert "no EOC" in _corrupt(stream[:-2], JPEG2000Lossless)


def test_rle_header_segments_and_offsets() -> None:
    """PS3.5 G.5: one segment for 8-bit grey, offsets starting at 64 inside the frame."""
    header = struct.pack("<16I", 1, 64, *([0] * 14))
    _check(header + b"\x00" * 8, RLELossless)
    assert "3 segment" in _corrupt(
        struct.pack("<16I", 3, 64, 70, 80, *([0] * 12)) + b"\x00" * 32, RLELossless
    )
    assert "beyond" in _corrupt(struct.pack("<16I", 1, 64, *([0] * 14)), RLELossless)


def test_native_length_must_be_exact_up_to_one_padding_byte() -> None:
    """PS3.5 8.1.1: 64 x 64 x 8 bits is 4096 bytes; 4097 pads, 4095 and 8192 are corrupt."""
    sizes = {"rows": 64, "columns": 64, "frames": 1, "samples": 1, "bits_allocated": 8}
    check_native_length(4096, **sizes)
    check_native_length(4097, **sizes)
    for length in (4095, 8192):
        with pytest.raises(ImageError, match="need exactly 4096"):
            check_native_length(length, **sizes)


def test_encapsulated_items_must_lie_inside_the_value() -> None:
    """An item that claims more bytes than follow it is corrupt; a sound sequence passes."""
    item = b"\xfe\xff\x00\xe0"
    check_encapsulated_items(item + struct.pack("<I", 0) + item + struct.pack("<I", 4) + b"abcd")
    with pytest.raises(ImageError, match="beyond"):
        check_encapsulated_items(
            item + struct.pack("<I", 0) + item + struct.pack("<I", 400) + b"abcd"
        )


@pytest.mark.parametrize(
    ("uid", "problem"),
    [
        ("1.2.840.10008.5.1.4.1.1.1", None),
        ("0.1.2", None),
        ("1." + "2" * 63, "characters long"),
        ("1.2.840.0123", "leading zero"),
        ("1.2..3", "empty component"),
        ("1.2.3.", "empty component"),
        ("../../tmp/x", "digits and dots"),
        ("1.2.ü", "digits and dots"),
        ("", "empty component"),
    ],
)
def test_uid_rules_of_ps3_5_section_9_1(uid: str, problem: str | None) -> None:
    """At most 64 characters, digits and dots, no empty component and no leading zero."""
    found = uid_problem(uid)
    assert (found is None) if problem is None else (found is not None and problem in found)
