"""dicom_io: DICOM CT ingestion — index, series selection, HU volumes, de-identification.

Nothing is loaded at import time beyond the modules themselves.
"""

from dicom_io.config import AssemblyConfig, DicomIOConfig, SelectionConfig, load_config
from dicom_io.errors import DicomIOError
from dicom_io.geometry import Flag
from dicom_io.header import Header, read_header
from dicom_io.index import DicomIndex, SeriesIndex, SeriesRole, StudyIndex, scan
from dicom_io.select import Selection, select_series, select_single, select_study
from dicom_io.volume import Provenance, Volume, assemble, load_volume

__all__ = [
    "AssemblyConfig",
    "DicomIOConfig",
    "DicomIOError",
    "DicomIndex",
    "Flag",
    "Header",
    "Provenance",
    "Selection",
    "SelectionConfig",
    "SeriesIndex",
    "SeriesRole",
    "StudyIndex",
    "Volume",
    "assemble",
    "load_config",
    "load_volume",
    "read_header",
    "scan",
    "select_series",
    "select_single",
    "select_study",
]
