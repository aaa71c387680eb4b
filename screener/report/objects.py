"""The DICOM objects one delivery carries, for the channels that carry DICOM (C-STORE and
STOW-RS): the AI result SR (and, if configured, the heatmap's Secondary Capture), or the IHE
AIRAI assessment SR of a read."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import SecondaryCaptureImageStorage

from screener.config import Settings
from screener.db import OUTSIDE_DOMAIN, Result
from screener.db.engine import as_utc
from screener.report.assessment import AssessedRead, build_assessment_sr
from screener.report.delivery import Delivery
from screener.report.header import ReportError, derived_uid
from screener.report.sr import SR_SOP_CLASSES, ScreeningFinding, build_heatmap_capture, build_sr

#: Given a result, the worker's heatmap overlay (RGB uint8) or None.
OverlayLoader = Callable[[Result], npt.NDArray[np.uint8] | None]

SOP_CLASS_NAMES = {
    SR_SOP_CLASSES["3d"]: "Comprehensive 3D SR",
    SR_SOP_CLASSES["comprehensive"]: "Comprehensive SR",
    str(SecondaryCaptureImageStorage): "Secondary Capture",
}


def finding_of(result: Result) -> ScreeningFinding:
    """What the model concluded about one image, as the SR (and the other channels) say it."""
    assessed = result.label != OUTSIDE_DOMAIN
    return ScreeningFinding(
        probability=float(result.probability),
        positive=assessed and result.probability >= result.threshold,
        assessed=assessed,
        threshold=float(result.threshold),
        model_name=result.model_name,
        model_version=result.model_version,
        model_uid=result.model_uid,
        frame_number=result.frame_number or 1,
    )


class DicomObjects:
    """Builds the data sets of a delivery, the same ones on every retry."""

    def __init__(self, settings: Settings, overlay_loader: OverlayLoader | None = None) -> None:
        self.settings = settings
        self.overlay_loader = overlay_loader

    def build(self, delivery: Delivery) -> list[pydicom.Dataset]:
        """The data sets of ``delivery``, each checked to encode."""
        header = pydicom.dcmread(delivery.spool_path, stop_before_pixels=True)
        if delivery.is_assessment:
            datasets = [self._assessment(delivery, header)]
        else:
            datasets = self._result(delivery, header)
        for ds in datasets:
            check_encodes(ds)
        return datasets

    def _result(self, delivery: Delivery, header: pydicom.Dataset) -> list[pydicom.Dataset]:
        result = delivery.result
        export = self.settings.export
        sr = build_sr(
            header,
            finding_of(result),
            kind=export.sr_kind,
            sop_instance_uid=delivery.object_uid,
            instance_number=result.id,
            content_datetime=as_utc(result.scored_at),
        )
        datasets = [sr]
        if export.heatmap_capture and self.overlay_loader is not None:
            overlay = self.overlay_loader(result)
            if overlay is not None:
                capture_uid = derived_uid("heatmap", delivery.object_uid)
                datasets.append(
                    build_heatmap_capture(
                        header,
                        overlay,
                        sop_instance_uid=capture_uid,
                        instance_number=result.id,
                        model_name=result.model_name,
                    )
                )
        return datasets

    def _assessment(self, delivery: Delivery, header: pydicom.Dataset) -> pydicom.Dataset:
        """The IHE AIRAI assessment SR of a read (:mod:`screener.report.assessment`)."""
        review, result = delivery.review, delivery.result
        if review is None or not delivery.assessed_uid:
            raise ReportError("an assessment needs its read and the UID of the SR it assesses")
        if review.radiologist_positive is None:
            raise ReportError("a read that could not tell is no assessment of the AI result")
        read = AssessedRead(
            reader=review.reader,
            reader_positive=review.radiologist_positive,
            model_positive=review.model_positive,
            read_at=as_utc(review.created_at),
            model_uid=result.model_uid,
            assessed_sop_instance_uid=delivery.assessed_uid,
            frame_number=result.frame_number or 1,
        )
        return build_assessment_sr(
            header,
            read,
            kind=self.settings.export.sr_kind,
            sop_instance_uid=delivery.object_uid,
            instance_number=review.id,
        )


def check_encodes(ds: pydicom.Dataset) -> None:
    """Encode ``ds`` as it will be sent, so that a data set pydicom cannot write is a build
    error (permanent) rather than a send that fails to start (transient).

    The message names the exception type only: pydicom's text may quote a value (PHI).
    """
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False  # Explicit VR Little Endian
    try:
        write_dataset(fp, ds)
    except Exception as exc:
        raise ReportError(
            f"the {SOP_CLASS_NAMES.get(str(ds.SOPClassUID), 'data set')} cannot be encoded "
            f"in Explicit VR Little Endian ({type(exc).__name__})"
        ) from exc
    finally:
        fp.close()
