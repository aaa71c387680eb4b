"""What the SR and the heatmap capture take from the source image's header.

Strict on what we write, tolerant on what we read: a source image may lack Type 2
attributes (Patient's Sex, Study ID, Accession Number, ...) or carry them empty. highdicom
reads them as attributes of its ``evidence``, so :func:`evidence_header` hands it a copy of
the header in which every attribute highdicom reads is present (empty when the source has
none, which is what Type 2 allows, PS3.5 7.4 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_7.4>). The copy never carries Pixel Data.

The patient's and the study's identifying text is copied as the source has it, so our
objects carry the source's Specific Character Set (PS3.3 C.12.1.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.12.1.1.2>), e.g. ``['', 'ISO 2022
IR 87']`` for Japanese or ``['', 'ISO 2022 IR 149']`` for Korean: highdicom only knows some
of the defined terms, so :func:`character_set` checks the source's value against PS3.3 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html>
Tables C.12-2 to C.12-5 and :func:`apply_character_set` sets it on the finished object
(pydicom encodes every value with it on write, PS3.5 6.1.2.5 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_6.1.2.5>). What cannot be carried
faithfully -- an unknown character set, an identifying value too large for an element or
of unknown VR -- raises :class:`ReportError`: retrying would build the same failure.
"""

from __future__ import annotations

import copy
import datetime as dt
import warnings

import highdicom as hd
from pydicom import DataElement, Dataset, config
from pydicom import charset as charset_module
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import PersonName, validate_value

from screener import __version__
from screener.errors import ScreenerError

MANUFACTURER = "screener"

# highdicom warns about single-component person names with the name in the message; a
# warning goes to stderr, and a patient's name must never reach a log (PS3.15 E.1 <https://dicom.nema.org/medical/dicom/current/output/html/part15.html#sect_E.1>).
warnings.filterwarnings(
    "ignore", message=".*unlikely to represent the intended person name", module=r"highdicom\."
)

#: Attributes highdicom's SR/SC constructors read from the evidence (PS3.3 C.7.1.1 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.7.1.1>, C.7.2.1).
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")

#: PS3.5 7.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_7.1.2>: in Explicit VR (how our objects are sent) these VRs have a 16-bit length.
_MAX_SHORT_VALUE = 0xFFFE

#: PS3.3 C.12.1.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.12.1.1.2> Specific Character Set, single-valued: Table C.12-2 (single-byte, no
#: code extensions) and Table C.12-5 (multi-byte, no code extensions).
_STAND_ALONE = frozenset(
    {
        "ISO_IR 100",
        "ISO_IR 101",
        "ISO_IR 109",
        "ISO_IR 110",
        "ISO_IR 144",
        "ISO_IR 127",
        "ISO_IR 126",
        "ISO_IR 138",
        "ISO_IR 148",
        "ISO_IR 203",
        "ISO_IR 13",
        "ISO_IR 166",
        "ISO_IR 192",
        "GB18030",
        "GBK",
    }
)
#: Table C.12-3 (single-byte with code extensions) and Table C.12-4 (multi-byte with code
#: extensions); a multi-valued Specific Character Set lists only these (value 1 may be
#: empty: the default repertoire, ISO 2022 IR 6).
_CODE_EXTENSIONS = frozenset(
    {
        "ISO 2022 IR 6",
        "ISO 2022 IR 100",
        "ISO 2022 IR 101",
        "ISO 2022 IR 109",
        "ISO 2022 IR 110",
        "ISO 2022 IR 144",
        "ISO 2022 IR 127",
        "ISO 2022 IR 126",
        "ISO 2022 IR 138",
        "ISO 2022 IR 148",
        "ISO 2022 IR 203",
        "ISO 2022 IR 13",
        "ISO 2022 IR 166",
        "ISO 2022 IR 87",
        "ISO 2022 IR 159",
        "ISO 2022 IR 149",
        "ISO 2022 IR 58",
    }
)

#: A Specific Character Set value as it is written: one term, or several with code extensions.
CharacterSet = str | list[str]


class ReportError(ScreenerError):
    """A report (SR or capture) cannot be built from the given source or finding."""


def evidence_header(source: Dataset) -> Dataset:
    """A pixel-free copy of ``source`` with every attribute highdicom reads present.

    The copy keeps the source's Specific Character Set, checked and normalised by
    :func:`character_set` (absent for the default repertoire).
    """
    missing = [k for k in _REQUIRED if not str(source.get(k, "")).strip()]
    if missing:
        raise ReportError(
            f"source image lacks {', '.join(missing)}; an SR must reference the image's UIDs"
        )
    charset = character_set(source)
    header = Dataset()
    for element in source:
        if element.tag.group == 0x7FE0:  # Pixel Data and its siblings stay behind
            continue
        if element.keyword == "SpecificCharacterSet":
            continue  # set below, checked
        if element.keyword in _TYPE2_COPIED:
            _check_carried(element, charset)
        if element.keyword in _REQUIRED:
            pass  # referenced exactly as received, even if the sender broke the UI rules
        elif element.VR != "SQ" and not _conformant(element):
            continue  # a malformed value (e.g. Patient's Age "38") is not copied into our objects
        header.add(copy.deepcopy(element))
    for keyword in _TYPE2_COPIED:
        if keyword not in header or header[keyword].value is None:
            setattr(header, keyword, "")
    if str(header.get("PatientSex", "")) not in ("M", "F", "O", ""):
        header.PatientSex = ""  # PS3.3 C.7.1.1 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.7.1.1>: enumerated values M, F, O
    apply_character_set(header, charset)
    return header


def character_set(source: Dataset) -> CharacterSet | None:
    """The source's Specific Character Set as our objects must declare it; None: the default.

    PS3.3 C.12.1.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.12.1.1.2>: one defined term of Tables C.12-2 / C.12-5, or several of Tables
    C.12-3 / C.12-4 (code extensions, PS3.5 6.1.2.5 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_6.1.2.5>), value 1 possibly empty. Anything else
    is a :class:`ReportError`: the source's text cannot be decoded with certainty, so it
    cannot be carried into an SR.
    """
    if "SpecificCharacterSet" not in source:
        return None
    raw = source["SpecificCharacterSet"].value
    if raw is None:
        return None
    if isinstance(raw, bytes | bytearray):  # read as UN: not a code string at all
        raise ReportError(
            "source Specific Character Set is not a code string (VR UN): "
            "its text cannot be decoded (PS3.3 C.12.1.1.2)"
        )
    values = [str(v).strip() for v in (raw if isinstance(raw, MultiValue | list) else [raw])]
    if not any(values) or values == ["ISO_IR 6"]:  # empty, or the default repertoire named
        return None
    if len(values) == 1:
        (term,) = values
        if term in _STAND_ALONE or term in _CODE_EXTENSIONS:  # Table C.12-3 terms may stand alone
            _check_pydicom_knows([term])
            return term
        raise ReportError(
            f"source Specific Character Set {term!r} is not a DICOM defined term "
            "(PS3.3 C.12.1.1.2): its text cannot be decoded, so the SR cannot carry it"
        )
    first, rest = values[0], values[1:]
    bad = [v for v in rest if v not in _CODE_EXTENSIONS]
    if (first and first not in _CODE_EXTENSIONS) or bad or len(set(values)) != len(values):
        raise ReportError(
            f"source Specific Character Set {values!r} is not a valid combination of "
            "code extensions (PS3.3 C.12.1.1.2, Tables C.12-3 and C.12-4): its text "
            "cannot be decoded, so the SR cannot carry it"
        )
    _check_pydicom_knows(values)
    return values


def _check_pydicom_knows(terms: list[str]) -> None:
    unknown = [t for t in terms if t and t not in charset_module.python_encoding]
    if unknown:
        raise ReportError(
            f"source Specific Character Set {unknown[0]!r} is a DICOM term that this "
            "installation cannot encode (pydicom has no codec for it)"
        )


def apply_character_set(ds: Dataset, charset: CharacterSet | None) -> None:
    """Declare ``charset`` as ``ds``'s Specific Character Set (absent: the default repertoire).

    highdicom refuses some valid terms (an empty value 1, ISO 2022 IR 149), so our objects
    are built without one and given the source's here; pydicom encodes with it on write.
    """
    if charset is None:
        if "SpecificCharacterSet" in ds:
            del ds.SpecificCharacterSet
        return
    ds.SpecificCharacterSet = list(charset) if isinstance(charset, list) else charset


def _check_carried(element: DataElement, charset: CharacterSet | None) -> None:
    """An identifying attribute that our objects copy must fit them as the source has it.

    A value read as bytes (VR UN: a PN over 64 KiB cannot be sent in Explicit VR any other
    way) or longer than an Explicit VR element holds (PS3.5 7.1.2 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_7.1.2>) would be written as UN
    or not at all; the SR would not name the patient as the images do. The message names
    the attribute and sizes, never the value (PS3.15 E.1 <https://dicom.nema.org/medical/dicom/current/output/html/part15.html#sect_E.1>).
    """
    value = element.value
    if value is None or value == "":
        return
    if isinstance(value, bytes | bytearray):
        raise ReportError(
            f"source {element.keyword} has VR UN ({len(value)} bytes), not a readable value; "
            "the SR cannot carry it"
        )
    encodings = charset_module.convert_encodings(
        [charset] if isinstance(charset, str) else charset or ["ISO_IR 6"]
    )
    values = value if isinstance(value, MultiValue) else [value]
    size = len(values) - 1  # backslash separators
    for v in values:
        if isinstance(v, PersonName):
            size += len(v.encode(encodings))
        else:
            size += len(charset_module.encode_string(str(v), encodings))
        if size > _MAX_SHORT_VALUE:
            raise ReportError(
                f"source {element.keyword} is {size} bytes long or more: over the "
                f"{_MAX_SHORT_VALUE} bytes a {element.VR} value can hold (PS3.5 7.1.2), "
                "so the SR cannot carry it"
            )


def _conformant(element: DataElement) -> bool:
    """Whether every value of ``element`` is valid for its VR (PS3.5 6.2 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_6.2>)."""
    values = element.value if isinstance(element.value, MultiValue) else [element.value]
    try:
        for value in values:
            if isinstance(value, str) and value:  # parsed numbers were checked by pydicom
                validate_value(str(element.VR), value, config.RAISE)
    except ValueError:
        return False
    return True


def processing_equipment(model_name: str, content_time: dt.datetime) -> hd.ContributingEquipment:
    """Contributing Equipment naming screener (PS3.3 C.12.1.1.5 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.12.1.1.5>, CID 7005 Processing Equipment)."""
    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model_name[:64],
        software_versions=__version__,
        contribution_datetime=content_time,
        contribution_description="pneumonia screening for a second read",
    )


#: IHE AIR's Purpose of Reference of the algorithm's Contributing Equipment item (a code IHE
#: assigned ahead of DICOM, in IHE's private scheme 99IHE; declared in every SR that uses it).
IHE_SCHEME = "99IHE"
PROCESSING_ALGORITHM = hd.sr.CodedConcept("Newcode1", IHE_SCHEME, "Processing Algorithm")


def algorithm_equipment(
    model_name: str, model_version: str, model_uid: str, content_time: dt.datetime
) -> hd.ContributingEquipment:
    """The algorithm as IHE AIR identifies it: a Contributing Equipment item (PS3.3 C.12.1.1.5 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.12.1.1.5>)
    with Purpose of Reference (Newcode1, 99IHE, "Processing Algorithm"), Manufacturer,
    Manufacturer's Model Name (the model), Software Versions (the model's, then screener's) and
    Device UID = the model bundle's UID, which a retrained bundle changes (IHE RAD TF AIR
    <https://wiki.ihe.net/index.php/AI_Results>)."""
    equipment = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        # highdicom takes only CID 7005 terms here: AIR's purpose replaces it below
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model_name[:64],
        software_versions=[model_version[:64], f"screener {__version__}"[:64]],
        contribution_datetime=content_time,
        contribution_description="pneumonia screening for a second read",
    )
    equipment.PurposeOfReferenceCodeSequence = [PROCESSING_ALGORITHM]
    equipment.DeviceUID = model_uid  # (0018,1002), Type 3 in the Contributing Equipment Sequence
    return equipment


def derived_uid(*parts: str) -> str:
    """A UID that is the same every time for the same parts (a rebuild makes the same SR)."""
    return str(generate_uid(entropy_srcs=["screener", *parts]))
