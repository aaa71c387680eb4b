"""The population guard: films of patients outside the model's training population are
skipped (``population:age``), not scored.

The bundle declares its population in ``model.json`` (``"population": {"age_years": [1, 5]}``
for the Kermany films: children one to five years old); ``[population]`` in screener.toml
can widen it for a site that has validated the model on its own patients. The age comes from
Patient's Age (0010,1010), else from Patient's Birth Date (0010,0030) against the Study,
Series, Acquisition or Content Date.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from pydicom import Dataset

from screener.config import PopulationSettings, Settings
from screener.ingest.selection import Skip

#: PS3.5 6.2 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_6.2> Age String: nnnD, nnnW, nnnM or nnnY. Real headers also carry bare numbers
#: (``38``, read as years), lower case and spaces (``5 y``), which we accept when reading.
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_DAYS_PER_UNIT = {"D": 1.0, "W": 7.0, "M": 365.25 / 12.0, "Y": 365.25}


@dataclass(frozen=True)
class AgeRange:
    """Screened ages in completed years, both ends inclusive."""

    min_years: int
    max_years: int

    def contains(self, age_years: float) -> bool:
        return self.min_years <= age_years < self.max_years + 1

    def __str__(self) -> str:
        return f"{self.min_years}-{self.max_years} years"


def age_from_patients_age(value: Any) -> float | None:
    """Years from a Patient's Age value, or None when it cannot be read."""
    if value is None:
        return None
    match = _AGE.match(str(value))
    if match is None:
        return None
    unit = match.group(2).upper() or "Y"
    return int(match.group(1)) * _DAYS_PER_UNIT[unit] / 365.25


def _da(value: Any) -> date | None:
    text = str(value or "").strip()
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def age_from_birth_date(ds: Dataset) -> float | None:
    """Years between Patient's Birth Date and the first of Study / Series / Acquisition /
    Content Date present, or None."""
    born = _da(ds.get("PatientBirthDate"))
    if born is None:
        return None
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        taken = _da(ds.get(keyword))
        if taken is not None:
            days = (taken - born).days
            return days / 365.25 if days >= 0 else None
    return None


def patient_age_years(ds: Dataset) -> float | None:
    """The patient's age at the study in years, or None when the header does not say."""
    age = age_from_patients_age(ds.get("PatientAge"))
    return age if age is not None else age_from_birth_date(ds)


def age_range(
    settings: PopulationSettings, bundle_population: dict[str, Any] | None
) -> AgeRange | None:
    """The screened age range: the bundle's declared one, with the site's overrides."""
    declared = (bundle_population or {}).get("age_years")
    low = settings.min_age_years
    high = settings.max_age_years
    if declared:
        low = int(declared[0]) if low < 0 else low
        high = int(declared[1]) if high < 0 else high
    if low < 0 and high < 0:
        return None
    return AgeRange(max(low, 0), high if high >= 0 else 200)


def apply_population(ds: Dataset, ages: AgeRange | None, allow_unknown_age: bool) -> Skip | None:
    """Why ``ds`` is outside the population (``population:age``), or None."""
    if ages is None:
        return None
    age = patient_age_years(ds)
    if age is None:
        if allow_unknown_age:
            return None
        return Skip(
            "age",
            "the patient's age is in neither Patient's Age nor Birth Date + Study Date, and "
            "population.allow_unknown_age is false",
            guard="population",
        )
    if not ages.contains(age):
        return Skip(
            "age",
            f"the patient's age ({age:.1f} years) is outside the model's population ({ages})",
            guard="population",
        )
    return None


def screened_ages(settings: Settings) -> AgeRange | None:
    """The age range for these settings and their model bundle's declared population.

    Read from ``model.json`` alone (no TensorFlow), so the listener knows it too. A bundle
    that cannot be read declares nothing here; the worker refuses to start on it anyway.
    """
    from screener.errors import ModelError
    from screener.model.bundle import read_metadata

    try:
        declared = read_metadata(settings.model.bundle).get("population")
    except ModelError:
        declared = None
    return age_range(settings.population, declared)
