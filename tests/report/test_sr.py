"""The second-read SR and the heatmap capture: built by highdicom, valid per dciodvfy and dsrdump."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset

from screener.report.sr import (
    SR_SOP_CLASSES,
    ReportError,
    ScreeningFinding,
    build_heatmap_capture,
    build_sr,
)


def _finding(model_uid: str, probability: float = 0.83, threshold: float = 0.5) -> ScreeningFinding:
    return ScreeningFinding(
        probability=probability,
        positive=probability >= threshold,
        threshold=threshold,
        model_name="screener-densenet121",
        model_version="1.0.0",
        model_uid=model_uid,
    )


def _items(ds: Dataset) -> list[Dataset]:
    """Every content item of an SR tree, depth first."""
    out: list[Dataset] = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(_items(item))
    return out


def _named(ds: Dataset, code_value: str) -> list[Dataset]:
    return [i for i in _items(ds) if i.ConceptNameCodeSequence[0].CodeValue == code_value]


@pytest.mark.parametrize("positive", [True, False], ids=["positive", "negative"])
@pytest.mark.parametrize("kind", ["3d", "comprehensive"])
@pytest.mark.parametrize("index", [0, 1, 2], ids=["siim-cr-1", "siim-cr-2", "nih-dx-test1"])
def test_sr_of_a_real_image_passes_dciodvfy_and_renders_in_dsrdump(
    index: int,
    kind: str,
    positive: bool,
    real_sources: list[Path],
    model_uid: str,
    dciodvfy: Callable[[Path], list[str]],
    dsrdump: Callable[[Path], str],
    tmp_path: Path,
) -> None:
    """An SR built from a real header (read without pixels) has no dciodvfy error and dsrdump shows the finding."""
    source = pydicom.dcmread(real_sources[index], stop_before_pixels=True)
    sr = build_sr(source, _finding(model_uid, 0.83 if positive else 0.12), kind=kind)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)

    assert dciodvfy(path) == []
    text = dsrdump(path)
    assert "Comprehensive 3D SR" in text if kind == "3d" else "Comprehensive SR" in text
    assert '(233604007,SCT,"Pneumonia")' in text
    assert ('(52101004,SCT,"Present")' if positive else '(2667000,SCT,"Absent")') in text
    assert ("Second read recommended" in text) is positive
    assert sr.SOPClassUID == SR_SOP_CLASSES[kind]


def test_sr_content_follows_tid_1500(real_sources: list[Path], model_uid: str) -> None:
    """Study, patient, source reference, certainty, observer, algorithm and equipment are as specified."""
    source = pydicom.dcmread(real_sources[0], stop_before_pixels=True)
    sr = build_sr(source, _finding(model_uid, 0.8312, threshold=0.42))

    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.Modality == "SR" and sr.SeriesNumber == 9001
    assert sr.PatientID == source.PatientID and sr.PatientSex == source.PatientSex
    assert "PixelData" not in sr
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    (image,) = [i for i in _items(sr) if i.ValueType == "IMAGE"]
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID

    (certainty,) = _named(sr, "111012")  # DCM Certainty of Finding
    value = certainty.MeasuredValueSequence[0]
    assert float(value.NumericValue) == pytest.approx(83.12)
    assert value.MeasurementUnitsCodeSequence[0].CodeValue == "%"
    assert value.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
    (observer,) = _named(sr, "121012")  # DCM Device Observer UID
    assert str(observer.UID) == model_uid
    (name,) = _named(sr, "111001")  # TID 4019 Algorithm Name
    (version,) = _named(sr, "111003")
    (parameter,) = _named(sr, "111002")
    assert (name.TextValue, version.TextValue) == ("screener-densenet121", "1.0.0")
    assert parameter.TextValue == "threshold=0.4200"
    (recommendation,) = _named(sr, "121075")
    assert recommendation.ConceptCodeSequence[0].CodeMeaning == "Second read recommended"

    screener = [e for e in sr.ContributingEquipmentSequence if e.Manufacturer == "screener"]
    assert len(screener) == 1  # IHE AIR's algorithm item (tests/report/test_air_sr.py)
    purpose = screener[0].PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodeMeaning) == ("Newcode1", "Processing Algorithm")
    assert screener[0].SoftwareVersions


def test_negative_sr_has_no_recommendation(real_sources: list[Path], model_uid: str) -> None:
    """A negative finding says Pneumonia: Absent and recommends nothing."""
    source = pydicom.dcmread(real_sources[2], stop_before_pixels=True)
    sr = build_sr(source, _finding(model_uid, 0.1))
    (evaluation,) = _named(sr, "233604007")
    assert evaluation.ConceptCodeSequence[0].CodeValue == "2667000"
    assert _named(sr, "121075") == []


@pytest.mark.parametrize("kind", ["3d", "comprehensive"])
def test_not_assessed_sr_says_so_and_passes_dciodvfy(
    kind: str,
    real_sources: list[Path],
    model_uid: str,
    dciodvfy: Callable[[Path], list[str]],
    dsrdump: Callable[[Path], str],
    tmp_path: Path,
) -> None:
    """An image outside the model's domain gets a valid SR with Pneumonia: Indeterminate,
    'not assessed', no certainty and no recommendation, even when its number was high."""
    source = pydicom.dcmread(real_sources[0], stop_before_pixels=True)
    finding = ScreeningFinding(
        probability=0.99,
        positive=False,
        threshold=0.5,
        model_name="screener-default",
        model_version="1.0.0",
        model_uid=model_uid,
        assessed=False,
    )
    sr = build_sr(source, finding, kind=kind)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == []
    text = dsrdump(path)
    assert '(82334004,SCT,"Indeterminate")' in text
    assert "Not assessed: image outside the model's domain" in text
    assert _named(sr, "111012") == []  # no Certainty of Finding
    assert _named(sr, "121075") == []  # no recommendation
    (evaluation,) = _named(sr, "233604007")
    assert evaluation.ConceptCodeSequence[0].CodeValue == "82334004"


def test_a_finding_not_assessed_cannot_be_positive(model_uid: str) -> None:
    """A flag on an image the model did not assess is refused."""
    with pytest.raises(ReportError, match="not assessed"):
        ScreeningFinding(0.99, True, 0.5, "m", "1", model_uid, assessed=False)


def test_rebuild_with_the_same_uid_is_the_same_document(
    real_sources: list[Path], model_uid: str
) -> None:
    """A retry passing the same SOP Instance UID and content time rebuilds the identical SR."""
    source = pydicom.dcmread(real_sources[1], stop_before_pixels=True)
    when = dt.datetime(2026, 11, 22, 4, 0, tzinfo=dt.UTC)
    uid = pydicom.uid.generate_uid()
    a, b = (
        build_sr(source, _finding(model_uid), sop_instance_uid=uid, content_datetime=when)
        for _ in range(2)
    )
    assert a.SOPInstanceUID == b.SOPInstanceUID == uid
    assert a == b  # element for element, timestamps included


def test_image_library_is_written_when_the_header_has_its_descriptors(
    real_sources: list[Path],
    model_uid: str,
    dciodvfy: Callable[[Path], list[str]],
    tmp_path: Path,
) -> None:
    """A DX header with Patient Orientation and Imager Pixel Spacing is listed in a TID 1600 Image Library."""
    source = pydicom.dcmread(real_sources[2], stop_before_pixels=True)
    source.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image, For Presentation
    source.PatientOrientation = ["L", "F"]
    source.ImagerPixelSpacing = [0.143, 0.143]
    sr = build_sr(source, _finding(model_uid))
    assert len(_named(sr, "111028")) == 1  # DCM Image Library
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert dciodvfy(tmp_path / "sr.dcm") == []


def test_malformed_source_values_are_not_copied(real_sources: list[Path], model_uid: str) -> None:
    """A Patient's Age that breaks its VR (SIIM's "38") is left out rather than copied into the SR."""
    source = pydicom.dcmread(real_sources[0], stop_before_pixels=True)
    source.PatientAge = "38"
    assert "PatientAge" not in build_sr(source, _finding(model_uid))
    source.PatientAge = "038Y"
    assert build_sr(source, _finding(model_uid)).PatientAge == "038Y"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("probability", 1.5, "probability = 1.5"),
        ("threshold", -0.1, "threshold = -0.1"),
        ("model_uid", "not-a-uid", "not a valid DICOM UID"),
        ("frame_number", 0, "frames count from 1"),
    ],
)
def test_invalid_finding_is_refused(
    field: str, value: object, message: str, model_uid: str
) -> None:
    """A finding with a value out of its range raises ReportError naming the value and the rule."""
    kwargs: dict[str, object] = {
        "probability": 0.5,
        "positive": True,
        "threshold": 0.5,
        "model_name": "m",
        "model_version": "1",
        "model_uid": model_uid,
        field: value,
    }
    with pytest.raises(ReportError, match=message):
        ScreeningFinding(**kwargs)  # type: ignore[arg-type]


def test_unknown_sr_kind_is_refused(real_sources: list[Path], model_uid: str) -> None:
    """An sr_kind other than 3d or comprehensive raises ReportError listing the allowed values."""
    source = pydicom.dcmread(real_sources[0], stop_before_pixels=True)
    with pytest.raises(ReportError, match="allowed values are 3d, comprehensive"):
        build_sr(source, _finding(model_uid), kind="enhanced")


def test_source_without_uids_is_refused(model_uid: str) -> None:
    """A source lacking its SOP Instance UID cannot be referenced, and says so."""
    with pytest.raises(ReportError, match="SOPInstanceUID"):
        build_sr(Dataset(), _finding(model_uid))


@pytest.mark.parametrize("index", [0, 2], ids=["siim-cr-1", "nih-dx-test1"])
def test_heatmap_capture_passes_dciodvfy(
    index: int,
    real_sources: list[Path],
    dciodvfy: Callable[[Path], list[str]],
    tmp_path: Path,
) -> None:
    """The heatmap Secondary Capture is in the source's study, references it and has no dciodvfy error."""
    source = pydicom.dcmread(real_sources[index], stop_before_pixels=True)
    overlay = np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    uid = pydicom.uid.generate_uid()
    sc = build_heatmap_capture(source, overlay, sop_instance_uid=uid)
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)

    assert dciodvfy(path) == []
    back = pydicom.dcmread(path)
    assert back.SOPInstanceUID == uid and back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert back.PhotometricInterpretation == "RGB"
    assert np.array_equal(back.pixel_array, overlay)


def test_heatmap_capture_refuses_a_grey_array(real_sources: list[Path]) -> None:
    """An overlay that is not RGB uint8 raises ReportError naming its shape and dtype."""
    source = pydicom.dcmread(real_sources[0], stop_before_pixels=True)
    with pytest.raises(ReportError, match=r"shape \(8, 8\)"):
        build_heatmap_capture(source, np.zeros((8, 8), dtype=np.uint8))
