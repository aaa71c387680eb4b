"""The skip rule: why a DICOM object would not be scored. The selection rules first (is it a
chest film of a screened modality and view, :mod:`screener.ingest.selection`), then the
population guard (is the patient inside the model's population,
:mod:`screener.ingest.population`). One rule, used by the daemon's ingest and by the web's
upload preview, so the preview says what the daemon would do."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset

from screener.config import SelectionSettings, Settings
from screener.ingest.population import AgeRange, apply_population, screened_ages
from screener.ingest.selection import Skip, apply_selection


@dataclass(frozen=True)
class SkipRule:
    """The rule for one set of settings (the screened ages read once from the bundle)."""

    selection: SelectionSettings
    ages: AgeRange | None
    allow_unknown_age: bool

    @classmethod
    def of(cls, settings: Settings) -> SkipRule:
        return cls(
            settings.selection, screened_ages(settings), settings.population.allow_unknown_age
        )

    def __call__(self, ds: Dataset) -> Skip | None:
        """Why ``ds`` is skipped (``selection:modality``, ``population:age``...), or None."""
        return apply_selection(ds, self.selection) or apply_population(
            ds, self.ages, self.allow_unknown_age
        )


__all__ = ["SkipRule"]
