"""Errors a user can act on. Each one carries what went wrong and what to do about it."""

from __future__ import annotations


class SpecbenchError(Exception):
    """A problem with the user's input or environment, reported as one line plus a fix."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}. Fix: {self.hint}" if self.hint else self.message


class PluginError(SpecbenchError):
    """A method plugin could not be found, imported or used."""


class ModelLoadError(SpecbenchError):
    """A model could not be built or loaded."""
