"""Reading our SRs back for the tests: the content tree flattened, and highdicom's reading of a
TID 1500 Measurement Report with its coded values asserted, not assumed (highdicom types them
loosely). Shared by test_air_sr, test_assessments and test_reach_chain."""

from __future__ import annotations

import highdicom as hd
import pydicom


def content_items(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    """Every content item of an SR's content tree, depth first."""
    out: list[pydicom.Dataset] = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(content_items(item))
    return out


def measurement_report(
    doc: hd.sr.EnhancedSR | hd.sr.ComprehensiveSR | hd.sr.Comprehensive3DSR,
) -> hd.sr.MeasurementReport:
    """The document's content as highdicom reads it back: the TID 1500 Measurement Report."""
    content = doc.content
    assert isinstance(content, hd.sr.MeasurementReport)
    return content


def coded_value(evaluation: hd.sr.QualitativeEvaluation) -> hd.sr.CodedConcept:
    """A qualitative evaluation's value: a code (highdicom types it as a number too)."""
    value = evaluation.value
    assert isinstance(value, hd.sr.CodedConcept)
    return value
