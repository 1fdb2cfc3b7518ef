"""Typed errors for :mod:`dicom_io`.

Every error names the file (or series) it concerns and says how to fix it.
``dicom_io`` imports nothing from ``medassist``; :class:`DicomIOError` is the root of
this package's errors and :mod:`medassist.errors` translates it at the boundary.
"""

from __future__ import annotations

from pathlib import Path


class DicomIOError(Exception):
    """Root of all :mod:`dicom_io` errors.

    Args:
        message: what went wrong and, where possible, how to fix it.
        path: the file the error concerns, if any.
    """

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.path: str | None = None if path is None else str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class ConfigError(DicomIOError, ValueError):
    """A configuration value is invalid."""


class InvalidUIDError(DicomIOError, ValueError):
    """A UID is not a valid DICOM UID (``[0-9.]{1,64}``) and must not reach a path."""


class UnreadableFileError(DicomIOError):
    """The file is not DICOM, is truncated, or its structure is malformed."""


class UnsupportedTransferSyntaxError(DicomIOError):
    """The transfer syntax is missing or cannot be decoded here."""


class PixelDataError(DicomIOError):
    """Pixel data is absent, of the wrong length, or fails to decode."""


class NotCTImageError(DicomIOError):
    """The object is not a CT image (a wrong SOP class for the wrapper)."""


class SeriesError(DicomIOError):
    """A series cannot be assembled into a volume.

    Args:
        message: the reason.
        series_uid: the series concerned.
        path: the first offending file, if one can be named.
    """

    def __init__(
        self, message: str, *, series_uid: str | None = None, path: str | Path | None = None
    ) -> None:
        self.series_uid = series_uid
        text = f"{message} in series {series_uid}" if series_uid else message
        super().__init__(text, path=path)


class SeriesGapError(SeriesError):
    """Slices are missing: the positions along the normal leave a gap."""


class DuplicateSliceError(SeriesError):
    """Two or more slices share one position."""


class UnevenSpacingError(SeriesError):
    """Slice spacing is not uniform and the policy is to refuse."""


class InconsistentOrientationError(SeriesError):
    """ImageOrientationPatient differs between slices of one series."""


class InconsistentGeometryError(SeriesError):
    """Rows, columns, pixel spacing or pixel format differ between slices."""


class MissingGeometryError(SeriesError):
    """A slice lacks ImagePositionPatient or ImageOrientationPatient; it cannot be placed."""


class GantryTiltError(SeriesError):
    """The series was acquired with gantry tilt and the policy is to refuse."""


class NoDiagnosticSeriesError(DicomIOError):
    """No series in the input passes the diagnostic-series rules."""


class AmbiguousInputError(DicomIOError):
    """The input holds several studies and no series was named."""


class SeriesNotFoundError(DicomIOError):
    """The requested series UID is not in the input."""


class DeidentificationError(DicomIOError):
    """De-identification could not be applied safely."""


class BurnedInAnnotationError(DeidentificationError):
    """The image has burned-in annotation and pixel cleaning was not requested."""
