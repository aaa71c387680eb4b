"""Selection rules: which accepted instances are screened and which are stored as skipped.

The default screens chest radiographs: Modality CR or DX; BodyPartExamined CHEST or
absent; ViewPosition PA/AP or absent. A skipped instance records the rule that skipped it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset

from screener.config import SelectionSettings


@dataclass(frozen=True)
class Skip:
    rule: str  # machine-readable: "modality", "body_part_examined", "view_position", "age"
    message: str
    guard: str = "selection"  # or "population"

    @property
    def reason(self) -> str:
        """The job's recorded reason, e.g. ``selection:modality`` or ``population:age``."""
        return f"{self.guard}:{self.rule}"


def _value(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return str(value).strip().upper() if value is not None else ""


def _allowed(values: list[str]) -> str:
    return ", ".join(values) if values else "(none)"


def apply_selection(ds: Dataset, rules: SelectionSettings) -> Skip | None:
    """Return why ``ds`` is skipped, or None when it is to be screened."""
    modality = _value(ds, "Modality")
    if modality not in {m.upper() for m in rules.modalities}:
        return Skip(
            "modality",
            f"Modality {modality or '(absent)'!r} is not one of {_allowed(rules.modalities)}",
        )
    body_part = _value(ds, "BodyPartExamined")
    if body_part:
        if body_part not in {b.upper() for b in rules.body_parts}:
            return Skip(
                "body_part_examined",
                f"BodyPartExamined {body_part!r} is not one of {_allowed(rules.body_parts)}",
            )
    elif not rules.allow_missing_body_part:
        return Skip("body_part_examined", "BodyPartExamined is absent and selection requires it")
    view = _value(ds, "ViewPosition")
    if view:
        if view not in {v.upper() for v in rules.view_positions}:
            return Skip(
                "view_position",
                f"ViewPosition {view!r} is not one of {_allowed(rules.view_positions)}",
            )
    elif not rules.allow_missing_view_position:
        return Skip("view_position", "ViewPosition is absent and selection requires it")
    return None
