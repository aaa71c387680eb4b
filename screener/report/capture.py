"""The heatmap overlay as a Secondary Capture image in the source image's study.

PS3.3 A.8.1 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_A.8.1> Secondary Capture Image IOD, built by ``highdicom.sc.SCImage``: an RGB 8-bit
picture (the Grad-CAM overlay from :func:`screener.model.gradcam.overlay`), patient and
study copied from the source, a Source Image Sequence (PS3.3 C.7.6.1.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.7.6.1.1.2>) pointing at the
screened image, and Contributing Equipment naming screener.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from screener.report.header import (
    MANUFACTURER,
    ReportError,
    apply_character_set,
    character_set,
    derived_uid,
    evidence_header,
    processing_equipment,
)

_BIPED = {v.value for v in hd.PatientOrientationValuesBiped}


def build_heatmap_capture(
    source: Dataset,
    overlay_rgb: npt.NDArray[Any],
    *,
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    series_number: int = 9002,
    instance_number: int = 1,
    model_name: str = "screener",
) -> Dataset:
    """A Secondary Capture of ``overlay_rgb`` (rows x columns x 3, uint8) in ``source``'s study."""
    if overlay_rgb.ndim != 3 or overlay_rgb.shape[2] != 3 or overlay_rgb.dtype != np.uint8:
        raise ReportError(
            f"overlay of shape {overlay_rgb.shape} and dtype {overlay_rgb.dtype} is invalid: "
            "a heatmap capture is an RGB uint8 array (rows, columns, 3)"
        )
    header = evidence_header(source)
    orientation = _patient_orientation(header)
    now = dt.datetime.now(dt.UTC)
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=np.ascontiguousarray(overlay_rgb),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid
        or derived_uid("heatmap-series", str(header.StudyInstanceUID)),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or str(generate_uid()),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=orientation or ("A", "F"),
        contributing_equipment=[processing_equipment(model_name, now)],
        series_description="screener heatmap overlay",
        # highdicom refuses valid terms such as ['', 'ISO 2022 IR 149']: set below instead
        specific_character_set=None,
    )
    # PS3.3 C.12.1.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.12.1.1.2>: the patient's and study's text is the source's, in its character set
    apply_character_set(capture, character_set(header))
    if orientation is None:
        # PS3.3 C.7.6.1 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.7.6.1>: Patient Orientation is Type 2C; when the source does not state it we
        # do not guess, and leave it empty as the source did (highdicom asks for a value).
        capture.PatientOrientation = []
    if "Laterality" not in capture:
        # PS3.3 C.7.3.1 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.7.3.1> General Series: Laterality is Type 2C (paired body parts); a chest is
        # not paired, so it is present and empty unless the source states one.
        laterality = str(header.get("Laterality", ""))
        capture.Laterality = laterality if laterality in ("R", "L") else ""
    # PS3.3 C.7.6.1.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.7.6.1.1.2> Source Image Sequence: the screened image this picture derives from
    ref = Dataset()
    ref.ReferencedSOPClassUID = header.SOPClassUID
    ref.ReferencedSOPInstanceUID = header.SOPInstanceUID
    ref.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    ]
    capture.SourceImageSequence = [ref]
    capture.DerivationDescription = "Grad-CAM heat map of the pneumonia score over the image"
    capture.BurnedInAnnotation = "NO"
    return capture


def _patient_orientation(header: Dataset) -> tuple[str, str] | None:
    value = header.get("PatientOrientation") or []
    if len(value) == 2 and all(str(v) in _BIPED for v in value):
        return str(value[0]), str(value[1])
    return None
