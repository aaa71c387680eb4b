"""The one exception hierarchy of screener.

Every error raised on purpose by screener derives from :class:`ScreenerError`. Messages
name the offending value and the rule it broke, so that a PACS administrator can act on
them without reading code. A broad ``except`` appears only at a stage boundary, where the
failure is logged and recorded.
"""

from __future__ import annotations


class ScreenerError(Exception):
    """Root of all errors raised by screener."""


class ConfigError(ScreenerError):
    """A setting has an invalid value; the message names the key, the value and what is allowed."""


class IngestError(ScreenerError):
    """An incoming object cannot be accepted (unparseable, missing attributes, no space)."""


class ImageError(ScreenerError):
    """Pixel data cannot be turned into a model input.

    ``reason`` is a short machine-readable code (for example ``no_pixel_data``), the
    message a sentence for a human.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ModelError(ScreenerError):
    """A model bundle is missing, malformed or fails at inference."""


class DatabaseError(ScreenerError):
    """The database is missing, unreachable or at another schema revision than this screener's."""
