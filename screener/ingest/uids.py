"""UIDs as PS3.5 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html> §9.1 defines them, checked before anything is stored or copied into an SR.

A UID is at most 64 characters of digits and dots; each dot-separated component is a
number without leading zeros ("0" itself is allowed), none empty. A UID that breaks this is
not a name we may file under, use in a path or send back to PACS.
"""

from __future__ import annotations

import re

#: PS3.5 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html> §9.1: at most 64 characters.
MAX_UID_LENGTH = 64

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def uid_problem(value: str) -> str | None:
    """Why ``value`` is not a valid UID, or ``None`` when it is one."""
    if len(value) > MAX_UID_LENGTH:
        return f"is {len(value)} characters long; at most {MAX_UID_LENGTH} are allowed"
    if not value.isascii() or not _UID.fullmatch(value):
        if any(ch not in "0123456789." for ch in value):
            return "holds characters other than digits and dots"
        return "has an empty component or one with a leading zero"
    return None
