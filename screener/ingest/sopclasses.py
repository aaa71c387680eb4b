"""The storage SOP classes and transfer syntaxes screener accepts (PS3.4 B.5 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.5>, PS3.5 A <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#chapter_A>)."""

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

#: PS3.4 A.4 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_A.4>: the Verification SOP Class (C-ECHO).
VERIFICATION = UID("1.2.840.10008.1.1")

#: Transfer syntaxes accepted for every image SOP class. pynetdicom accepts the first of
#: ours that the requestor proposes in a context (PS3.8 9.3.3.2 <https://dicom.nema.org/medical/dicom/current/output/html/part08.html#sect_9.3.3.2>), so the order is a choice:
#: - uncompressed first (the default): every DICOM AE supports Implicit VR Little Endian
#:   (PS3.5 10.1 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_10.1>), so a sender that proposes it can send it; a compressed image may then be
#:   decompressed by the sender;
#: - compressed first (``listener.prefer_compressed``): images travel as stored, for a
#:   sender that proposes its stored syntax beside uncompressed but cannot decompress. A
#:   sender that proposes a compressed syntax it cannot produce (dcmtk's dcmqrscp does, for
#:   uncompressed images) then fails its sub-operations.
#: Lossless before lossy either way, so a lossless original is never taken in a lossy form.
UNCOMPRESSED: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
)
COMPRESSED: tuple[UID, ...] = (
    JPEGLSLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLossless,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
    JPEG2000,
)
TRANSFER_SYNTAXES: tuple[UID, ...] = UNCOMPRESSED + COMPRESSED


def transfer_syntaxes(prefer_compressed: bool) -> list[UID]:
    """The accepted transfer syntaxes in order of preference."""
    return list(COMPRESSED + UNCOMPRESSED if prefer_compressed else UNCOMPRESSED + COMPRESSED)
