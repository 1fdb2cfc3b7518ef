"""Errors of the medassist application core, rooted at :class:`MedAssistError`.

``dicom_io`` and ``multimodal`` import nothing from ``medassist``, so their errors have roots
of their own (:class:`dicom_io.errors.DicomIOError`).  The application translates them at its
boundary with :func:`from_dicom_io`, keeping the original as ``__cause__``.
"""

from __future__ import annotations

from dicom_io.errors import DicomIOError


class MedAssistError(Exception):
    """Root of every error medassist reports to a user."""

    #: Process exit status for the CLI.
    exit_code: int = 1


class InputError(MedAssistError):
    """The input (DICOM, EMR, configuration) is unusable; the message says why and where."""

    exit_code = 3

    def __init__(self, message: str, *, path: str | None = None, kind: str = "") -> None:
        self.path = path
        self.kind = kind
        super().__init__(message)


class UsageError(MedAssistError):
    """The command line is inconsistent."""

    exit_code = 2


def from_dicom_io(exc: DicomIOError) -> InputError:
    """Translate a dicom_io error, keeping its type name and the file it names."""
    err = InputError(f"{type(exc).__name__}: {exc}", path=exc.path, kind=type(exc).__name__)
    err.__cause__ = exc
    return err
