"""Typed errors of :mod:`medassist.synth`, rooted at :class:`SynthError`."""

from __future__ import annotations

from medassist.errors import MedAssistError


class SynthError(MedAssistError):
    """Root of all case-generator errors."""

    exit_code = 2


class SynthConfigError(SynthError, ValueError):
    """A generator configuration value (or the findings vocabulary) is invalid."""


class GenerationError(SynthError):
    """A case could not be generated (e.g. a finding could not be placed in the anatomy)."""


class OutputError(SynthError):
    """The output folder cannot be written (exists and is not empty, or is not writable)."""
