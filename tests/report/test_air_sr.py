"""The AI result SR meets IHE AIR: the algorithm in the Contributing Equipment Sequence (Newcode1,
99IHE, "Processing Algorithm", Device UID = the bundle's UID) besides TID 4019 and the Device
Observer, one TID 1501 group per image; dciodvfy finds no error and highdicom reads it back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom import Dataset
from pydicom.sr.codedict import codes
from report.sr_readback import coded_value, measurement_report

from screener import __version__
from screener.report.sr import ScreeningFinding, build_sr

RETRAINED_UID = "1.2.826.0.1.3680043.8.498.99887766554433221100"


def _finding(model_uid: str, probability: float) -> ScreeningFinding:
    return ScreeningFinding(
        probability=probability,
        positive=probability >= 0.5,
        threshold=0.5,
        model_name="screener-densenet121",
        model_version="1.0.0",
        model_uid=model_uid,
    )


def _algorithm_items(sr: Dataset) -> list[Dataset]:
    """Contributing Equipment items whose Purpose of Reference is AIR's Processing Algorithm."""
    return [
        e
        for e in sr.ContributingEquipmentSequence
        if (
            e.PurposeOfReferenceCodeSequence[0].CodeValue,
            e.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator,
        )
        == ("Newcode1", "99IHE")
    ]


def _texts(node: object, concept: object) -> list[str]:
    return [
        str(i.TextValue)
        for i in hd.sr.utils.find_content_items(node, name=concept, recursive=True)  # type: ignore[arg-type]
    ]


@pytest.mark.parametrize("kind", ["3d", "comprehensive"])
@pytest.mark.parametrize("positive", [True, False], ids=["positive", "negative"])
def test_air_sr_of_a_real_image_has_no_dciodvfy_error_and_highdicom_reads_the_algorithm(
    kind: str,
    positive: bool,
    real_sources: list[Path],
    model_uid: str,
    dciodvfy: Callable[[Path], list[str]],
    tmp_path: Path,
) -> None:
    """A real film's SR has no dciodvfy error; read back with highdicom it names the algorithm (TID 4019, Device Observer, Contributing Equipment with the bundle's Device UID) and the finding of its one TID 1501 group."""
    source = pydicom.dcmread(real_sources[0], stop_before_pixels=True)
    sr = build_sr(source, _finding(model_uid, 0.83 if positive else 0.12), kind=kind)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == []

    doc = hd.sr.srread(path)
    assert isinstance(doc, hd.sr.Comprehensive3DSR if kind == "3d" else hd.sr.ComprehensiveSR)
    (algorithm,) = _algorithm_items(doc)
    assert algorithm.Manufacturer == "screener"
    assert algorithm.ManufacturerModelName == "screener-densenet121"
    assert list(algorithm.SoftwareVersions) == ["1.0.0", f"screener {__version__}"]
    assert algorithm.DeviceUID == model_uid
    assert algorithm.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Algorithm"
    schemes = {i.CodingSchemeDesignator for i in doc.CodingSchemeIdentificationSequence}
    assert {"99IHE", "99SCREENER"} <= schemes

    (group,) = measurement_report(
        doc
    ).get_image_measurement_groups()  # one TID 1501 group for the image
    assert group.finding_type == hd.sr.CodedConcept("233604007", "SCT", "Pneumonia")
    (image,) = group.source_images
    assert image.referenced_sop_instance_uid == source.SOPInstanceUID
    values = {e.name.value: coded_value(e).value for e in group.get_qualitative_evaluations()}
    assert values["233604007"] == ("52101004" if positive else "2667000")  # Present / Absent
    assert _texts(group[0], codes.DCM.AlgorithmName) == ["screener-densenet121"]
    assert _texts(group[0], codes.DCM.AlgorithmVersion) == ["1.0.0"]
    (observer,) = measurement_report(doc).get_observer_contexts()
    device_uids = [
        str(i.UID)
        for i in hd.sr.utils.find_content_items(
            doc, name=codes.DCM.DeviceObserverUID, recursive=True
        )
    ]
    assert device_uids == [model_uid] and observer  # the Device Observer is kept


def test_a_retrained_bundle_is_a_new_device_uid(real_sources: list[Path], model_uid: str) -> None:
    """The Device UID of the algorithm item follows the bundle: a retrained bundle's SR names its new UID, and nothing else of the item changes."""
    source = pydicom.dcmread(real_sources[2], stop_before_pixels=True)
    (before,) = _algorithm_items(build_sr(source, _finding(model_uid, 0.7)))
    (after,) = _algorithm_items(build_sr(source, _finding(RETRAINED_UID, 0.7)))
    assert (before.DeviceUID, after.DeviceUID) == (model_uid, RETRAINED_UID)
    assert before.ManufacturerModelName == after.ManufacturerModelName
