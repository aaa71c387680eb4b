"""A decode function for tests that kills its own process on a marked file, as a codec
crash or the OOM killer would. Imported by name in the decode processes (spawn)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from screener.work.scoring import DecodeFailure, Frames, decode_spooled

#: A file holding these bytes kills the process that decodes it.
MARK = b"KILL-THE-DECODER"


def decode_or_die(path: str) -> Frames | DecodeFailure:
    if MARK in Path(path).read_bytes():
        os.kill(os.getpid(), signal.SIGKILL)
    return decode_spooled(path)
