"""Sources in other character sets: the SR carries the source's Specific Character Set and its
names encode as PS3.5 Annexes H, I and K show; what cannot be carried is a ReportError."""

from __future__ import annotations

import io
import shutil
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.uid import ImplicitVRLittleEndian
from support import build_dicom

from screener.report.sr import ReportError, ScreeningFinding, build_heatmap_capture, build_sr

#: (Specific Character Set, Patient's Name, the name's bytes as PS3.5 encodes it, whether
#: dcmtk converts it to UTF-8 itself): PS3.5 H.3.1, H.3.2, I.2, K.1 and a Latin-1 name.
CASES: dict[str, tuple[Any, str, bytes, bool]] = {
    "japanese-H.3.1": (
        ["", "ISO 2022 IR 87"],
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
        b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B",
        False,  # dcmtk built with iconv cannot convert ISO 2022 IR 87
    ),
    "japanese-H.3.2": (
        ["ISO 2022 IR 13", "ISO 2022 IR 87"],
        "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう",
        b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J"
        b"=\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J",
        False,
    ),
    "korean-I.2": (
        ["", "ISO 2022 IR 149"],
        "Hong^Gildong=洪^吉洞=홍^길동",
        b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7"
        b"=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf",
        True,
    ),
    "utf8-K.1": (
        "ISO_IR 192",
        "Wang^XiaoDong=王^小東",
        "Wang^XiaoDong=王^小東".encode(),
        True,
    ),
    "latin1": ("ISO_IR 100", "Äneas^Rüdiger", "Äneas^Rüdiger".encode("latin-1"), True),
}


def _finding(model_uid: str) -> ScreeningFinding:
    return ScreeningFinding(
        probability=0.83,
        positive=True,
        threshold=0.5,
        model_name="screener-densenet121",
        model_version="1.0.0",
        model_uid=model_uid,
    )


def source_bytes(charset: Any, name: str | None = None, *, implicit: bool = False) -> bytes:
    """A built CR image (Part 10) whose header has ``charset`` and, if given, Patient's Name
    ``name``; in Implicit VR Little Endian with ``implicit`` (which has 32-bit lengths)."""
    ds = pydicom.dcmread(io.BytesIO(build_dicom()))
    out = io.BytesIO()
    with warnings.catch_warnings():  # invalid values are what some of these sources are for
        warnings.simplefilter("ignore")
        ds.SpecificCharacterSet = charset
        if name is not None:
            ds.PatientName = name
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def read_source(data: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():  # pydicom warns about an unknown character set
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def raw_patient_name(path: Path) -> bytes:
    """Patient's Name as the bytes in the file."""
    return bytes(pydicom.dcmread(path).get_item("PatientName").value).rstrip(b" ")


def dsrdump_patient_line(path: Path, charset: Any, converts: bool) -> str:
    """dsrdump's "Patient" line in UTF-8: converted by dcmtk (``+U8``) where it can, else
    dsrdump's own bytes decoded with the SR's Specific Character Set by pydicom."""
    tool = "/usr/bin/dsrdump" if Path("/usr/bin/dsrdump").is_file() else shutil.which("dsrdump")
    if tool is None:
        pytest.skip("dsrdump not installed (dcmtk)")
    argv = [tool, *(["+U8"] if converts else []), str(path)]
    proc = subprocess.run(argv, capture_output=True, timeout=60)
    assert proc.returncode == 0, f"dsrdump failed: {proc.stderr!r}"
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith(b"Patient ")]
    if converts:
        return line.decode("utf-8")
    values = charset if isinstance(charset, list) else [charset]
    return decode_bytes(line, convert_encodings(values), set())


@pytest.mark.parametrize("kind", ["3d", "comprehensive"])
@pytest.mark.parametrize("case", list(CASES))
def test_sr_of_a_source_in_its_character_set_is_valid_and_names_the_patient(
    case: str,
    kind: str,
    model_uid: str,
    dciodvfy: Callable[[Path], list[str]],
    tmp_path: Path,
) -> None:
    """An SR built from a Japanese, Korean, UTF-8 or Latin-1 header has its character set, the PS3.5 bytes for the name, no dciodvfy error, and dsrdump shows the name."""
    charset, name, encoded, converts = CASES[case]
    source = read_source(source_bytes(charset, name))
    sr = build_sr(source, _finding(model_uid), kind=kind)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)

    assert dciodvfy(path) == []
    back = pydicom.dcmread(path)
    assert back.SpecificCharacterSet == charset
    assert str(back.PatientName) == name
    assert raw_patient_name(path) == encoded
    line = dsrdump_patient_line(path, charset, converts)
    assert name in line, line


@pytest.mark.parametrize("case", ["japanese-H.3.1", "korean-I.2"])
def test_heatmap_capture_of_a_source_in_its_character_set_is_valid(
    case: str, dciodvfy: Callable[[Path], list[str]], tmp_path: Path
) -> None:
    """The heatmap Secondary Capture of a Japanese or Korean header carries its character set and name and has no dciodvfy error."""
    charset, name, encoded, _ = CASES[case]
    source = read_source(source_bytes(charset, name))
    overlay = np.zeros((32, 32, 3), dtype=np.uint8)
    path = tmp_path / "sc.dcm"
    build_heatmap_capture(source, overlay).save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == []
    assert pydicom.dcmread(path).SpecificCharacterSet == charset
    assert raw_patient_name(path) == encoded


def test_default_repertoire_sr_declares_no_character_set(model_uid: str) -> None:
    """A source without Specific Character Set (or an empty one, or ISO_IR 6) gives an SR without one."""
    for charset in (None, "", "ISO_IR 6"):
        source = read_source(build_dicom())
        if charset is not None:
            source.SpecificCharacterSet = charset
        assert "SpecificCharacterSet" not in build_sr(source, _finding(model_uid))


@pytest.mark.parametrize(
    ("charset", "message"),
    [
        ("ISO_IR 999", "'ISO_IR 999' is not a DICOM defined term"),
        ("ISO-8859-1", "'ISO-8859-1' is not a DICOM defined term"),
        (["ISO_IR 192", "ISO 2022 IR 87"], "not a valid combination of code extensions"),
        (["", "ISO 2022 IR 87", "ISO 2022 IR 87"], "not a valid combination"),
    ],
)
def test_unknown_character_set_is_a_report_error(
    charset: Any, message: str, model_uid: str
) -> None:
    """A Specific Character Set that is not a DICOM defined term (or combination) raises ReportError naming it."""
    source = read_source(source_bytes(charset))
    with pytest.raises(ReportError, match=message):
        build_sr(source, _finding(model_uid))
    with pytest.raises(ReportError, match=message):
        build_heatmap_capture(source, np.zeros((8, 8, 3), dtype=np.uint8))


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit-vr-as-UN", "implicit-vr"])
def test_patient_name_over_64_kib_is_a_report_error(implicit: bool, model_uid: str) -> None:
    """A 70 KB Patient's Name cannot be carried into an SR: ReportError naming the attribute, not the name."""
    source = read_source(source_bytes("ISO_IR 100", "Doe^" + "J" * 70_000, implicit=implicit))
    with warnings.catch_warnings():  # pydicom warns about the name's length on access
        warnings.simplefilter("ignore")
        with pytest.raises(ReportError, match="source PatientName") as raised:
            build_sr(source, _finding(model_uid))
    assert "JJJJ" not in str(raised.value)  # never the value itself (PHI)
