"""What one decode may cost: a pixel budget checked from the header, and a hard memory cap.

The budget (``worker.decode_max_pixels``: Rows x Columns x frames x samples) refuses a film
before any decoding; the cap (``worker.decode_memory_mb``) is an address-space limit on the
decode process itself (``setrlimit(RLIMIT_AS)``), so that whatever a codec allocates on a
hostile stream, a single file can use no more, fails with ``MemoryError`` and the process
lives on. The cap is set only in decode processes: TensorFlow reserves far more address
space than it uses and must not run under it.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

#: Default budget: 50 million pixels (a 4,300 px square detector is 18.5 million).
DEFAULT_MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    address_space_mb: int = 0  # 0: no cap


_limits = DecodeLimits()


def current() -> DecodeLimits:
    """The limits this process decodes under."""
    return _limits


def apply(limits: DecodeLimits) -> None:
    """Use ``limits`` in this process from now on; the memory cap cannot be raised again."""
    global _limits
    _limits = limits
    if limits.address_space_mb > 0:
        cap = limits.address_space_mb << 20
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
