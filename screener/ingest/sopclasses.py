"""The storage SOP classes and transfer syntaxes screener accepts (PS3.4 B.5, PS3.5 A)."""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

#: CR, DX (for presentation and for processing) and Secondary Capture images.
IMAGE_STORAGE_SOP_CLASSES: frozenset[UID] = frozenset(
    UID(uid)
    for uid in (
        "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
        "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture
    )
)

#: PS3.4 A.4: the Verification SOP Class (C-ECHO).
VERIFICATION = UID("1.2.840.10008.1.1")

#: Transfer syntaxes accepted for every image SOP class, in order of preference.
#: pynetdicom accepts the first of these that the requestor proposes (PS3.8 9.3.3.2), so
#: compressed syntaxes come first: a sender proposes the syntax an image is stored in plus
#: those it can convert to, and preferring the compressed one lets the image travel as
#: stored (a PACS such as dcmqrscp cannot decompress, and a C-MOVE would fail with A702).
#: Lossless before lossy, so a lossless original is never taken in a lossy form.
TRANSFER_SYNTAXES: tuple[UID, ...] = (
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLossless,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    JPEG2000,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
