"""The population guard: films of patients outside the bundle's declared ages are skipped
with ``population:age`` and never scored; a site can widen the range."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from screener.config import PopulationSettings, Settings
from screener.db import Database, Job, JobState
from screener.db.migrate import upgrade
from screener.ingest.accept import Acceptor
from screener.ingest.population import AgeRange, age_range, patient_age_years
from screener.ingest.spool import Spool


@pytest.mark.parametrize(
    ("age", "years"),
    [
        ("005Y", 5.0),
        ("038Y", 38.0),
        ("38", 38.0),  # the bare number real headers carry (SIIM, NIH): years
        ("5 y", 5.0),
        ("018M", 1.5),
        ("052W", 52 * 7 / 365.25),
        ("400D", 400 / 365.25),
    ],
)
def test_patients_age_is_read(age: str, years: float) -> None:
    """Patient's Age in every AS unit, and the non-standard forms real headers carry, give years."""
    ds = pydicom.Dataset()
    ds.PatientAge = age
    assert patient_age_years(ds) == pytest.approx(years)


@pytest.mark.parametrize("age", ["", "abc", "Y", "-5Y", "1234Y", "5X"])
def test_unreadable_age_is_unknown(age: str) -> None:
    """An empty or malformed Patient's Age is unknown, not zero."""
    ds = pydicom.Dataset()
    ds.PatientAge = age
    assert patient_age_years(ds) is None


def test_birth_date_against_study_date() -> None:
    """Without Patient's Age, the age is Birth Date to Study Date (then Series, Acquisition, Content)."""
    ds = pydicom.Dataset()
    ds.PatientBirthDate = "20200301"
    ds.StudyDate = "20230301"
    assert patient_age_years(ds) == pytest.approx(3.0, abs=0.01)
    del ds.StudyDate
    ds.ContentDate = "20220301"
    assert patient_age_years(ds) == pytest.approx(2.0, abs=0.01)
    ds.ContentDate = "20190101"  # before birth: nonsense, so unknown
    assert patient_age_years(ds) is None
    ds.PatientBirthDate = "2020"  # not a DA
    assert patient_age_years(ds) is None


def test_age_range_counts_completed_years() -> None:
    """1-5 years takes a child from the first birthday to the day before the sixth."""
    ages = AgeRange(1, 5)
    assert ages.contains(1.0) and ages.contains(5.99)
    assert not ages.contains(0.9) and not ages.contains(6.0)


def test_site_settings_override_the_declared_range() -> None:
    """Settings widen either end of the bundle's range; -1 keeps the bundle's."""
    declared = {"age_years": [1, 5]}
    assert age_range(PopulationSettings(), declared) == AgeRange(1, 5)
    widened = PopulationSettings(min_age_years=0, max_age_years=17)
    assert age_range(widened, declared) == AgeRange(0, 17)
    assert age_range(PopulationSettings(), None) is None


def _bundle_with_population(tmp_path: Path, shipped: Path) -> Path:
    """A bundle folder whose model.json declares ages 1-5 (the acceptor reads only that)."""
    folder = tmp_path / "bundle"
    folder.mkdir()
    meta = json.loads((shipped / "model.json").read_text())
    meta["population"] = {"age_years": [1, 5]}
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def _accept(settings: Settings, data: bytes) -> Job:
    db = Database(settings.database.url)
    try:
        upgrade(db)
        accepted = Acceptor(db, Spool(settings.storage.spool_dir, 0), settings).accept(
            data, source="dicom"
        )
        with db.transaction() as session:
            job = session.scalars(select(Job).where(Job.id == accepted.job_id)).one()
            session.expunge(job)
            return job
    finally:
        db.dispose()


def _film(dicom_dir: Path, **header: Any) -> bytes:
    """A real adult SIIM chest film (Patient's Age "38") with header changes."""
    import io

    path = sorted((dicom_dir / "siim_chest_cr").glob("*.dcm"))[0]
    ds = pydicom.dcmread(path)
    for keyword, value in header.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_adult_film_is_skipped_with_population_age(
    tmp_path: Path,
    db_url: str,
    make_settings: Callable[..., Settings],
    dicom_dir: Path,
    model_bundle: Path,
) -> None:
    """A real adult film (Patient's Age 38) is stored as skipped, population:age, never queued."""
    bundle = _bundle_with_population(tmp_path, model_bundle)
    settings = make_settings(db_url, model__bundle=str(bundle), population__max_age_years=-1)
    job = _accept(settings, _film(dicom_dir))
    assert job.state == JobState.SKIPPED
    assert job.reason == "population:age"
    assert "38.0 years" in (job.last_error or "") and "1-5 years" in (job.last_error or "")


@pytest.mark.parametrize(
    ("header", "overrides", "state"),
    [
        ({"PatientAge": "004Y"}, {}, JobState.QUEUED),
        ({"PatientAge": "006M"}, {}, JobState.SKIPPED),  # younger than the training films
        (
            {"PatientAge": None, "PatientBirthDate": "20160101", "StudyDate": "20200601"},
            {},
            JobState.QUEUED,
        ),
        ({"PatientAge": None}, {}, JobState.QUEUED),  # unknown: left to the domain guard
        ({"PatientAge": None}, {"population__allow_unknown_age": False}, JobState.SKIPPED),
        ({}, {"population__max_age_years": 90}, JobState.QUEUED),  # a site that validated adults
    ],
)
def test_population_decisions(
    tmp_path: Path,
    sqlite_url: str,
    make_settings: Callable[..., Settings],
    dicom_dir: Path,
    model_bundle: Path,
    header: dict[str, Any],
    overrides: dict[str, Any],
    state: JobState,
) -> None:
    """Children inside the declared ages are queued; younger ones, adults and (when required) unknown ages are skipped."""
    bundle = _bundle_with_population(tmp_path, model_bundle)
    values = {"model__bundle": str(bundle), "population__max_age_years": -1, **overrides}
    job = _accept(make_settings(sqlite_url, **values), _film(dicom_dir, **header))
    assert job.state == state
    if state == JobState.SKIPPED:
        assert job.reason == "population:age"
