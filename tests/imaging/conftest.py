"""Shared fixtures of the pixel-pipeline tests: the real data and synthetic DICOM builders."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

REPO = Path(__file__).resolve().parents[2]

#: PHI planted in every synthetic data set; no message or log may ever show it.
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-31415"


def data_root() -> Path:
    """The shared data folder: $SCREENER_DATA, else ``<repo>/../shared/data``."""
    return Path(os.environ.get("SCREENER_DATA") or REPO.parent / "shared" / "data")


def _data_dir(name: str) -> Path:
    path = data_root() / "dicom" / name
    if not path.is_dir():
        pytest.skip(f"real DICOM data not found: looked in {path} (set SCREENER_DATA)")
    return path


@pytest.fixture(scope="session")
def wg04_dir() -> Path:
    """The NEMA WG04 compression test images."""
    return _data_dir("wg04_nonchest")


@pytest.fixture(scope="session")
def siim_dir() -> Path:
    """The SIIM chest CR samples (JPEG Baseline)."""
    return _data_dir("siim_chest_cr")


@pytest.fixture(scope="session")
def nih_dir() -> Path:
    """The NIH DX chest images (Implicit VR Little Endian)."""
    return _data_dir("nih_dx_header_variants")


def make_dataset(
    pixels: npt.NDArray[Any],
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **attributes: Any,
) -> Dataset:
    """A Secondary Capture data set holding ``pixels`` natively, plus ``attributes``.

    ``pixels`` is (rows, columns), (frames, rows, columns) or with a trailing 3 for colour.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.Modality = "OT"
    bits = bits_stored or pixels.dtype.itemsize * 8
    ds.set_pixel_data(pixels, photometric, bits, generate_instance_uid=False)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def make_encapsulated(
    frames: list[bytes],
    syntax: UID,
    rows: int,
    columns: int,
    bits_stored: int,
    pixel_representation: int = 0,
    photometric: str = "MONOCHROME2",
) -> Dataset:
    """A data set whose pixel data are the compressed ``frames`` in transfer syntax ``syntax``."""
    ds = make_dataset(np.zeros((rows, columns), np.uint16), "MONOCHROME2", 16)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = pixel_representation
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    return ds


def to_bytes(ds: Dataset, preamble: bool = True) -> bytes:
    """Serialise ``ds`` as a DICOM file (Part 10) or, without preamble, as a bare data set."""
    buffer = io.BytesIO()
    if preamble:
        ds.save_as(buffer, enforce_file_format=True)
    else:
        bare = Dataset()
        bare.update(ds)
        bare.save_as(buffer, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


@pytest.fixture
def phi() -> tuple[str, ...]:
    """The PHI values planted in every synthetic data set."""
    return (PATIENT_NAME, PATIENT_ID)


@pytest.fixture(name="make_dataset")
def make_dataset_fixture() -> Callable[..., Dataset]:
    """Build a native Secondary Capture data set from an array (see :func:`make_dataset`)."""
    return make_dataset


@pytest.fixture(name="make_encapsulated")
def make_encapsulated_fixture() -> Callable[..., Dataset]:
    """Build a data set of compressed frames (see :func:`make_encapsulated`)."""
    return make_encapsulated


@pytest.fixture(name="to_bytes")
def to_bytes_fixture() -> Callable[..., bytes]:
    """Serialise a data set (see :func:`to_bytes`)."""
    return to_bytes
