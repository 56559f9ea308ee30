"""Typed errors that carry where the problem is, so the CLI can print one clear line."""

from __future__ import annotations


class DomainEmbedError(Exception):
    """Base of every error this package raises on purpose (no traceback needed for the user)."""


class ConfigError(DomainEmbedError):
    """The composed configuration is invalid (unknown stage, impossible combination, ...)."""


class DataError(DomainEmbedError):
    """Input data is malformed. Names the file, the line (1-based, when it has lines) and the field."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.file, self.line, self.field, self.reason = file, line, field, message
        where = ":".join(str(p) for p in (file, line) if p is not None)
        parts = [where] if where else []
        if field is not None:
            parts.append(f"field '{field}'")
        super().__init__(f"{', '.join(parts)}: {message}" if parts else message)


class TruncationError(DomainEmbedError):
    """Inputs exceed the model's window while `data.truncation=error`."""


class ModelLoadError(DomainEmbedError):
    """A model could not be loaded (missing path, unreachable hub id, no network)."""
