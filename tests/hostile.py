"""A generated corpus of hostile and malformed DICOM inputs, each with what screener must do.

Every case is built here from a real SIIM chest film (JPEG Baseline) or a synthetic chest
image encoded with the real codecs (RLE, JPEG 2000, JPEG-LS, native); nothing is committed.
A case is built for a given UID root, so the same case can travel twice (C-STORE and the
watch folder) without the second being a duplicate of the first.

``Expect`` says what must happen: over C-STORE the status (or ``NO_CONTEXT`` when the
listener rejects the presentation context at association time) and then either the job's
final state and reason, or, for a refusal, the reason recorded in ``audit_events``; from the
watch folder a refusal becomes a ``rejected`` job with the same reason.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLSLossless,
    RLELossless,
)

CR = "1.2.840.10008.5.1.4.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"

NO_CONTEXT = -2  # the listener accepted no presentation context for the case's syntax
EMPTY = "empty_data_set"  # this case is sent as a C-STORE request with no data set at all


@dataclass(frozen=True)
class Expect:
    status: int  # C-STORE status, or NO_CONTEXT
    state: str | None  # the job's final state when accepted (done, failed, skipped)
    reason: str | None  # the job's reason, or the refusal's
    folder_reason: str | None = None  # from the watch folder, when C-STORE cannot carry it

    def from_folder(self) -> tuple[str, str | None]:
        """(state, reason) of the job a dropped copy of the case ends as."""
        if self.folder_reason is not None:
            return "rejected", self.folder_reason
        if self.state is None:
            return "rejected", self.reason
        return self.state, self.reason


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[str], bytes]  # UID root -> a Part 10 file (or EMPTY's marker)
    expect: Expect

    @property
    def is_bomb(self) -> bool:
        return "bomb" in self.name


def _uids(root: str, name: str) -> tuple[str, str, str]:
    n = zlib.crc32(name.encode()) % 10**8 + 1
    return f"{root}.1.{n}", f"{root}.2.{n}", f"{root}.3.{n}"


def _write(ds: Dataset, syntax: UID) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", CR)
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3.4")
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    out = io.BytesIO()
    little = syntax != ExplicitVRBigEndian
    implicit = syntax == ImplicitVRLittleEndian
    # None: a data set in memory (pydicom takes it; its annotation names only files)
    part10 = FileDataset(None, ds, file_meta=meta, preamble=b"\x00" * 128)  # type: ignore[arg-type]
    dcmwrite(out, part10, implicit_vr=implicit, little_endian=little, force_encoding=True)
    return out.getvalue()


def _header(root: str, name: str, **attrs: object) -> Dataset:
    sop, study, series = _uids(root, name)
    ds = Dataset()
    ds.SOPClassUID = CR
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientName = "Hostile^Case"
    ds.PatientID = "HOSTILE"
    ds.AccessionNumber = name[:16]
    ds.StudyDate = "20261128"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _chest(side: int = 256) -> np.ndarray:
    """A synthetic 'chest': two dark lungs in a bright body, smooth, 8-bit."""
    y, x = np.mgrid[0:side, 0:side] / side
    body = 200 - 60 * ((x - 0.5) ** 2 + (y - 0.5) ** 2)
    lungs = np.exp(-(((x - 0.3) / 0.12) ** 2 + ((y - 0.5) / 0.25) ** 2))
    lungs += np.exp(-(((x - 0.7) / 0.12) ** 2 + ((y - 0.5) / 0.25) ** 2))
    chest: np.ndarray = np.clip(body - 140 * lungs, 0, 255).astype(np.uint8)
    return chest


class Sources:
    """The pixel data the cases are made of: a real SIIM film and synthetic encodings."""

    def __init__(self, siim_dir: Path) -> None:
        films = sorted(siim_dir.glob("*.dcm"))
        self.films = films
        self.siim = dcmread(films[0])
        self.jpeg = next(generate_frames(self.siim.PixelData, number_of_frames=1))
        self.image = _chest()

    def siim_case(self, root: str, name: str, index: int = 0) -> Dataset:
        ds = dcmread(self.films[index])
        sop, study, series = _uids(root, name)
        ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = sop, study, series
        ds.AccessionNumber = name[:16]
        return ds

    def encoded(self, syntax: UID) -> bytes:
        """One frame of the synthetic image in ``syntax``."""
        ds = _header("1.2.3", "enc", Rows=256, Columns=256, BitsAllocated=8, BitsStored=8)
        ds.HighBit = 7
        ds.PixelData = self.image.tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(syntax, self.image, encoding_plugin="" if syntax != RLELossless else "pydicom")
        return next(generate_frames(ds.PixelData, number_of_frames=1))


def _jpeg_film(
    src: Sources, root: str, name: str, frame: bytes | None = None, *, raw: bytes | None = None
) -> Dataset:
    ds = src.siim_case(root, name)
    ds.PixelData = (
        raw if raw is not None else encapsulate([frame if frame is not None else src.jpeg])
    )
    return ds


def _with_sof(jpeg: bytes, rows: int, columns: int) -> bytes:
    data = bytearray(jpeg)
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", rows, columns)
    return bytes(data)


def _flipped(data: bytes, count: int, seed: int = 1) -> bytes:
    out = bytearray(data)
    for i in random.Random(seed).sample(range(1000, len(data) - 10), count):
        out[i] ^= 0xFF
    return bytes(out)


def _synthetic(
    src: Sources, root: str, name: str, syntax: UID, frame: bytes, **attrs: object
) -> bytes:
    ds = _header(root, name, Rows=256, Columns=256, BitsAllocated=8, BitsStored=8, HighBit=7)
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = encapsulate([frame])
    return _write(ds, syntax)


def _native(root: str, name: str, pixels: np.ndarray, **attrs: object) -> Dataset:
    bits = 16 if pixels.dtype == np.uint16 else 8
    ds = _header(
        root,
        name,
        Rows=pixels.shape[0],
        Columns=pixels.shape[1],
        BitsAllocated=bits,
        BitsStored=12 if bits == 16 else 8,
        HighBit=11 if bits == 16 else 7,
    )
    ds.PixelData = pixels.tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def build_cases(src: Sources) -> list[Case]:
    """Every case: 17 valid films and the malformed ones, each with what must happen."""
    ok = Expect(0x0000, "done", None)
    corrupt = Expect(0x0000, "failed", "corrupt_pixel_data")
    too_large = Expect(0x0000, "failed", "image_too_large")

    def cannot_understand(reason: str) -> Expect:
        return Expect(0xC000, None, reason)

    cases: list[Case] = []

    # Callable[..., bytes]: the lambdas bind the loop's values as defaults (r is the UID root)
    def add(name: str, expect: Expect, build: Callable[..., bytes]) -> None:
        cases.append(Case(name, build, expect))

    # -- valid films beside the hostile ones: all must be scored ----------------------
    for i in range(10):
        add(
            f"valid_siim_{i}",
            ok,
            lambda r, i=i: _write(src.siim_case(r, f"valid_siim_{i}", i), JPEGBaseline8Bit),
        )
    for syntax in (RLELossless, JPEG2000Lossless, JPEGLSLossless):
        add(
            f"valid_{syntax.keyword}",
            ok,
            lambda r, s=syntax: _synthetic(src, r, f"valid_{s.keyword}", s, src.encoded(s)),
        )
    chest16 = src.image.astype(np.uint16) * 16
    add(
        "valid_native_16bit",
        ok,
        lambda r: _write(_native(r, "valid_native_16bit", chest16), ExplicitVRLittleEndian),
    )
    add(
        "valid_native_8bit_implicit",
        ok,
        lambda r: _write(
            _native(r, "valid_native_8bit_implicit", src.image), ImplicitVRLittleEndian
        ),
    )
    add(
        "valid_monochrome1",
        ok,
        lambda r: _write(
            _native(
                r, "valid_monochrome1", 255 - src.image, PhotometricInterpretation="MONOCHROME1"
            ),
            ExplicitVRLittleEndian,
        ),
    )

    # -- the decompression bomb, and pixel budgets ------------------------------------
    add(
        "bomb_jpeg_sof_65500",
        corrupt,
        lambda r: _write(
            _jpeg_film(src, r, "bomb_jpeg_sof_65500", _with_sof(src.jpeg, 65500, 65500)),
            JPEGBaseline8Bit,
        ),
    )
    add(
        "bomb_header_and_sof_60000",
        too_large,
        lambda r: _write(
            _set(
                _jpeg_film(src, r, "bomb_header_and_sof_60000", _with_sof(src.jpeg, 60000, 60000)),
                Rows=60000,
                Columns=60000,
            ),
            JPEGBaseline8Bit,
        ),
    )
    add(
        "bomb_over_pixel_budget_15000",
        too_large,
        lambda r: _write(
            _set(
                _jpeg_film(
                    src, r, "bomb_over_pixel_budget_15000", _with_sof(src.jpeg, 15000, 15000)
                ),
                Rows=15000,
                Columns=15000,
            ),
            JPEGBaseline8Bit,
        ),
    )
    add(
        "bomb_multiframe_100",
        too_large,
        lambda r: _write(
            _set(_jpeg_film(src, r, "bomb_multiframe_100"), NumberOfFrames=100), JPEGBaseline8Bit
        ),
    )
    j2k = src.encoded(JPEG2000Lossless)
    add(
        "bomb_j2k_siz_60000",
        corrupt,
        lambda r: _synthetic(
            src, r, "bomb_j2k_siz_60000", JPEG2000Lossless, _j2k_size(j2k, 60000, 60000)
        ),
    )

    # -- corrupt JPEG streams ----------------------------------------------------------
    jpeg = src.jpeg
    for name, frame in (
        ("jpeg_cut_in_half", jpeg[: len(jpeg) // 2]),
        ("jpeg_without_eoi", jpeg[:-2]),
        ("jpeg_200_flipped_bytes", _flipped(jpeg, 200)),
        ("jpeg_20_flipped_bytes", _flipped(jpeg, 20, seed=7)),
        ("jpeg_sof_1x1", _with_sof(jpeg, 1, 1)),
        ("jpeg_no_soi", b"\x00\x00" + jpeg[2:]),
        ("jpeg_segment_length_beyond", jpeg[:4] + b"\xff\xff" + jpeg[6:]),
        ("jpeg_only_headers", jpeg[: jpeg.index(b"\xff\xda")] + b"\xff\xd9"),
        ("jpeg_random_bytes", bytes(random.Random(3).getrandbits(8) for _ in range(4096))),
    ):
        add(
            name,
            corrupt,
            lambda r, n=name, f=frame: _write(_jpeg_film(src, r, n, _even(f)), JPEGBaseline8Bit),
        )
    enc = bytearray(encapsulate([jpeg]))
    enc[12:16] = struct.pack("<I", len(enc) * 2)  # the frame's item claims twice the data
    add(
        "jpeg_fragment_length_beyond_data",
        corrupt,
        lambda r: _write(
            _jpeg_film(src, r, "jpeg_fragment_length_beyond_data", raw=bytes(enc)), JPEGBaseline8Bit
        ),
    )
    add(
        "jpeg_three_frames_declared_one_sent",
        corrupt,
        lambda r: _write(
            _set(_jpeg_film(src, r, "jpeg_three_frames_declared_one_sent"), NumberOfFrames=3),
            JPEGBaseline8Bit,
        ),
    )
    add(
        "jpeg_header_says_rgb",
        corrupt,
        lambda r: _write(
            _set(
                _jpeg_film(src, r, "jpeg_header_says_rgb"),
                SamplesPerPixel=3,
                PhotometricInterpretation="RGB",
                PlanarConfiguration=0,
            ),
            JPEGBaseline8Bit,
        ),
    )
    add(
        "jpeg_header_12_bits_allocated",
        Expect(0x0000, "failed", "undecodable_pixel_data"),
        lambda r: _write(
            _set(_jpeg_film(src, r, "jpeg_header_12_bits_allocated"), BitsAllocated=12),
            JPEGBaseline8Bit,
        ),
    )

    # -- the stream is not what its transfer syntax says --------------------------------
    for syntax in (JPEGLSLossless, JPEG2000Lossless, RLELossless, JPEGLossless):
        name = f"jpeg_labelled_{syntax.keyword}"
        add(name, corrupt, lambda r, n=name, s=syntax: _write(_jpeg_film(src, r, n), s))
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        # the encapsulated film relabelled, and the JPEG bytes as one native value
        name = f"jpeg_labelled_{syntax.keyword}"
        add(
            name,
            cannot_understand("corrupt_pixel_data"),
            lambda r, n=name, s=syntax: _relabel(
                _write(_jpeg_film(src, r, n), JPEGBaseline8Bit), s
            ),
        )
        name = f"jpeg_labelled_{syntax.keyword}_as_one_value"
        add(
            name,
            cannot_understand("truncated"),
            lambda r, n=name, s=syntax: _write(_jpeg_film(src, r, n), s),
        )
    # not offered by the listener: refused at association time, refused from the folder
    add(
        "jpeg_labelled_big_endian",
        Expect(NO_CONTEXT, None, None, "missing_uid"),
        lambda r: _relabel(
            _write(_jpeg_film(src, r, "jpeg_labelled_big_endian"), JPEGBaseline8Bit),
            ExplicitVRBigEndian,
        ),
    )
    add(
        "jpeg_labelled_unknown_uid",
        Expect(NO_CONTEXT, None, None, "corrupt_pixel_data"),
        lambda r: _relabel(
            _write(_jpeg_film(src, r, "jpeg_labelled_unknown_uid"), JPEGBaseline8Bit),
            UID("1.2.3.4.5.6.7"),
        ),
    )
    rle = src.encoded(RLELossless)
    jls = src.encoded(JPEGLSLossless)
    for name, syntax, frame in (
        ("rle_segment_count_3", RLELossless, struct.pack("<I", 3) + rle[4:]),
        ("rle_offset_beyond_data", RLELossless, rle[:4] + struct.pack("<I", 10**6) + rle[8:]),
        ("rle_header_only", RLELossless, rle[:64]),
        ("j2k_cut_in_half", JPEG2000Lossless, j2k[: len(j2k) // 2]),
        ("j2k_siz_says_128", JPEG2000Lossless, _j2k_size(j2k, 128, 128)),
        ("j2k_is_jpeg_ls", JPEG2000Lossless, jls),
        ("jpegls_cut_in_half", JPEGLSLossless, jls[: len(jls) // 2]),
        ("jpegls_sof_says_128", JPEGLSLossless, _jls_size(jls, 128, 128)),
        ("jpegls_is_j2k", JPEGLSLossless, j2k),
        ("rle_is_jpeg_ls", RLELossless, jls),
    ):
        add(name, corrupt, lambda r, n=name, s=syntax, f=frame: _synthetic(src, r, n, s, _even(f)))
    add(
        "native_twice_the_data",
        corrupt,
        lambda r: _write(
            _set(_native(r, "native_twice_the_data", src.image), PixelData=src.image.tobytes() * 2),
            ExplicitVRLittleEndian,
        ),
    )
    add(
        "native_half_the_data",
        cannot_understand("truncated"),
        lambda r: _write(
            _set(
                _native(r, "native_half_the_data", src.image),
                PixelData=src.image.tobytes()[: 256 * 128],
            ),
            ExplicitVRLittleEndian,
        ),
    )

    # -- UIDs (PS3.5 9.1) -------------------------------------------------------------
    for name, keyword, value in (
        ("uid_study_path_traversal", "StudyInstanceUID", "../../../../../tmp/x"),
        ("uid_study_200_characters", "StudyInstanceUID", "1." + "2" * 198),
        ("uid_series_non_ascii", "SeriesInstanceUID", "1.2.840.ü.5"),
        ("uid_series_leading_zero", "SeriesInstanceUID", "1.2.840.0123.5"),
        ("uid_study_empty_component", "StudyInstanceUID", "1.2..840"),
        ("uid_series_letters", "SeriesInstanceUID", "1.2.abc.3"),
        ("uid_study_trailing_dot", "StudyInstanceUID", "1.2.840."),
    ):
        add(
            name,
            cannot_understand("invalid_uid"),
            lambda r, n=name, k=keyword, v=value: _write(
                _set(_native(r, n, src.image), **{k: v}), ExplicitVRLittleEndian
            ),
        )
    for name, keyword in (
        ("missing_study_uid", "StudyInstanceUID"),
        ("missing_series_uid", "SeriesInstanceUID"),
    ):
        add(
            name,
            cannot_understand("missing_uid"),
            lambda r, n=name, k=keyword: _write(
                _without(_native(r, n, src.image), k), ExplicitVRLittleEndian
            ),
        )

    # -- the data set itself ----------------------------------------------------------
    add(
        "sop_class_ct",
        Expect(0x0122, None, "unsupported_sop_class"),
        lambda r: _write(
            _set(_native(r, "sop_class_ct", src.image), SOPClassUID=CT), ExplicitVRLittleEndian
        ),
    )
    add(
        "sop_class_sr",
        Expect(0x0122, None, "unsupported_sop_class"),
        lambda r: _write(_sr(r), ExplicitVRLittleEndian),
    )
    add(
        "no_pixel_data",
        Expect(0xA900, None, "no_pixel_data"),
        lambda r: _write(
            _without(_native(r, "no_pixel_data", src.image), "PixelData"), ExplicitVRLittleEndian
        ),
    )
    # a sender reading the file sends no Pixel Data at all (A900); the folder sees the cut
    add(
        "truncated_in_pixel_data_header",
        Expect(0xA900, None, "no_pixel_data", "truncated"),
        lambda r: _cut_at_pixel_data(
            _write(_native(r, "truncated_in_pixel_data_header", src.image), ExplicitVRLittleEndian)
        ),
    )
    add("empty_data_set", Expect(0xC000, None, "empty_data_set", "not_dicom"), lambda r: b"")
    add(
        "rows_zero",
        Expect(0x0000, "failed", "image_too_small"),
        lambda r: _write(_set(_native(r, "rows_zero", src.image), Rows=0), ExplicitVRLittleEndian),
    )
    add(
        "bits_allocated_12",
        cannot_understand("truncated"),
        lambda r: _write(
            _set(_native(r, "bits_allocated_12", src.image), BitsAllocated=12),
            ExplicitVRLittleEndian,
        ),
    )
    add(
        "palette_color",
        Expect(0x0000, "failed", "unsupported_photometric_interpretation"),
        lambda r: _write(
            _set(_native(r, "palette_color", src.image), PhotometricInterpretation="PALETTE COLOR"),
            ExplicitVRLittleEndian,
        ),
    )
    add(
        "monochrome_with_3_samples",
        cannot_understand("truncated"),
        lambda r: _write(
            _set(_native(r, "monochrome_with_3_samples", src.image), SamplesPerPixel=3),
            ExplicitVRLittleEndian,
        ),
    )
    add(
        "no_photometric_interpretation",
        Expect(0x0000, "failed", "unsupported_photometric_interpretation"),
        lambda r: _write(
            _without(
                _native(r, "no_photometric_interpretation", src.image), "PhotometricInterpretation"
            ),
            ExplicitVRLittleEndian,
        ),
    )
    add(
        "rows_missing",
        Expect(0x0000, "failed", "unreadable_image"),
        lambda r: _write(
            _without(_native(r, "rows_missing", src.image), "Rows"), ExplicitVRLittleEndian
        ),
    )

    # -- odd but valid: stored and scored (or skipped by selection) -------------------
    add(
        "patient_name_70kb",
        ok,
        lambda r: _write(
            _set(_native(r, "patient_name_70kb", src.image), PatientName="A" * 70_000),
            ImplicitVRLittleEndian,
        ),
    )
    add(
        "charset_unknown",
        ok,
        lambda r: _write(
            _set(_native(r, "charset_unknown", src.image), SpecificCharacterSet="ISO_IR 999"),
            ExplicitVRLittleEndian,
        ),
    )
    add(
        "charset_japanese",
        ok,
        lambda r: _write(
            _set(
                _native(r, "charset_japanese", src.image),
                SpecificCharacterSet=["", "ISO 2022 IR 87"],
                PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう",
            ),
            ExplicitVRLittleEndian,
        ),
    )
    add(
        "window_center_garbage",
        ok,
        lambda r: _write(
            _raw_window(_native(r, "window_center_garbage", chest16)), ExplicitVRLittleEndian
        ),
    )
    add(
        "private_element_5mb",
        ok,
        lambda r: _write(
            _private(_native(r, "private_element_5mb", src.image)), ExplicitVRLittleEndian
        ),
    )
    add(
        "sequence_nested_50_deep",
        ok,
        lambda r: _write(
            _nested(_native(r, "sequence_nested_50_deep", src.image), 50), ExplicitVRLittleEndian
        ),
    )
    add(
        "modality_mr",
        Expect(0x0000, "skipped", "selection:modality"),
        lambda r: _write(
            _set(_native(r, "modality_mr", src.image), Modality="MR"), ExplicitVRLittleEndian
        ),
    )
    add(
        "body_part_head",
        Expect(0x0000, "skipped", "selection:body_part_examined"),
        lambda r: _write(
            _set(_native(r, "body_part_head", src.image), BodyPartExamined="HEAD"),
            ExplicitVRLittleEndian,
        ),
    )
    return cases


# -- small builders ------------------------------------------------------------------


def _set(ds: Dataset, **attrs: object) -> Dataset:
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _without(ds: Dataset, keyword: str) -> Dataset:
    del ds[keyword]
    return ds


def _relabel(data: bytes, syntax: UID) -> bytes:
    """The same bytes with another (0002,0010) Transfer Syntax UID in the file meta."""
    tag = b"\x02\x00\x10\x00UI"
    at = data.index(tag)
    old_length = struct.unpack("<H", data[at + 6 : at + 8])[0]
    value = str(syntax).encode() + (b"\x00" if len(str(syntax)) % 2 else b"")
    out = data[:at] + tag + struct.pack("<H", len(value)) + value + data[at + 8 + old_length :]
    group = out.find(b"\x02\x00\x00\x00UL")  # (0002,0000) File Meta Group Length, if any
    if group < 0:
        return out
    group += 8
    length = struct.unpack("<I", out[group : group + 4])[0] + len(value) - old_length
    return out[:group] + struct.pack("<I", length) + out[group + 4 :]


def _even(frame: bytes) -> bytes:
    return frame + b"\x00" if len(frame) % 2 else frame


def _j2k_size(codestream: bytes, rows: int, columns: int) -> bytes:
    data = bytearray(codestream)  # SIZ: Xsiz at 8, Ysiz at 12 (XOsiz, YOsiz are 0 here)
    data[8:16] = struct.pack(">II", columns, rows)
    return bytes(data)


def _jls_size(stream: bytes, rows: int, columns: int) -> bytes:
    data = bytearray(stream)
    sof = data.index(b"\xff\xf7")
    data[sof + 5 : sof + 9] = struct.pack(">HH", rows, columns)
    return bytes(data)


def _sr(root: str) -> Dataset:
    sop, study, series = _uids(root, "sop_class_sr")
    ds = Dataset()
    ds.SOPClassUID = COMPREHENSIVE_SR
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = sop, study, series
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    return ds


def _cut_at_pixel_data(data: bytes) -> bytes:
    at = data.index(b"\xe0\x7f\x10\x00")
    return data[: at + 6]


def _raw_window(ds: Dataset) -> Dataset:
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    for tag, value in (
        (0x00281050, b"abc "),
        (0x00281051, b"-1e9"),
        (0x00281052, b"1 "),
        (0x00281053, b"0 "),
    ):
        ds._dict[Tag(tag)] = RawDataElement(Tag(tag), "DS", len(value), value, 0, False, True)
    return ds


def _private(ds: Dataset) -> Dataset:
    block = ds.private_block(0x0011, "HOSTILE", create=True)
    block.add_new(0x01, "OB", bytes(5 * 1024 * 1024))
    return ds


def _nested(ds: Dataset, depth: int) -> Dataset:
    inner = Dataset()
    inner.CodeValue = "X"
    for _ in range(depth):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    ds.ContentSequence = Sequence([inner])
    return ds


# -- data sets over listener.max_dataset_mb (tests/ingest/test_dataset_bounds.py) ---------------

#: One deflated piece of zeros, repeated to make a bomb (64 MiB each: zlib's output for it
#: is about 64 KB, so the file grows by 64 KB per 64 MiB it inflates to).
_ZEROS_PIECE = 64 << 20


def _explicit_le(ds: Dataset) -> bytes:
    """``ds``'s elements encoded in Explicit VR Little Endian (no preamble, no file meta)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def _part10_prefix(ds: Dataset, syntax: UID) -> bytes:
    """Preamble, "DICM" and the File Meta Information of ``ds`` in ``syntax``."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, meta)
    return fp.getvalue()


def _full_flush(data: bytes, *, last: bool = False) -> bytes:
    """``data`` raw-deflated on its own, ending on a byte boundary (Z_FULL_FLUSH: nothing
    after it refers back), or with the final block (``last``): such pieces concatenate into
    one valid deflate stream."""
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return deflater.compress(data) + deflater.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH)


def write_deflate_bomb(path: Path, root: str, inflated: int = 3 << 30) -> Dataset:
    """A Deflated Explicit VR Little Endian CR file (PS3.5 A.5) of about 3 MB whose data set
    inflates to ``inflated`` bytes and more: a valid header, one private OB element of zeros,
    then a small film. Written piece by piece, never held whole; returns the header."""
    assert inflated % _ZEROS_PIECE == 0, "a whole number of 64 MiB pieces"
    ds = _header(root, "deflate_bomb", Rows=64, Columns=64, BitsAllocated=8, BitsStored=8)
    ds.HighBit = 7
    ds.PixelData = bytes(64 * 64)
    before, after = Dataset(), Dataset()
    for element in ds:
        (before if element.tag.group < 0x0009 else after).add(element)
    before.add_new(0x00090010, "LO", "SCREENER BOMB")  # private creator of (0009,10xx)
    ob_header = struct.pack("<HH2sHI", 0x0009, 0x1000, b"OB", 0, inflated)
    zeros = _full_flush(bytes(_ZEROS_PIECE))
    with path.open("wb") as f:
        f.write(_part10_prefix(ds, DeflatedExplicitVRLittleEndian))
        f.write(_full_flush(_explicit_le(before) + ob_header))
        for _ in range(inflated // _ZEROS_PIECE):
            f.write(zeros)
        f.write(_full_flush(_explicit_le(after), last=True))
    return ds


def deflated_film(source: Path, root: str, name: str) -> bytes:
    """A real film re-encoded in Deflated Explicit VR Little Endian, under new UIDs."""
    ds = dcmread(source)
    sop, study, series = _uids(root, name)
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = sop, study, series
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def endless_film(root: str, announced: int = 0xFFFFFFF0) -> tuple[Dataset, bytes]:
    """The header of a CR film whose native Pixel Data (7FE0,0010) announces ``announced``
    bytes, encoded up to the first byte of its value (Explicit VR Little Endian): what a
    sender streams before the pixels."""
    ds = _header(root, "endless_film", Rows=46341, Columns=46341, BitsAllocated=16)
    ds.BitsStored, ds.HighBit = 12, 11
    encoded = _explicit_le(ds) + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, announced)
    return ds, encoded
