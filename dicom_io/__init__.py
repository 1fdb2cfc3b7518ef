"""dicom_io: DICOM CT ingestion — index, series selection, HU volumes, de-identification.

Nothing is loaded at import time beyond this module: the names below are imported from their
modules on first use (PEP 562), so ``import dicom_io.errors`` (as every command's error
handling does) does not load pydicom, gdcm and numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dicom_io.config import AssemblyConfig, DicomIOConfig, SelectionConfig, load_config
    from dicom_io.errors import DicomIOError
    from dicom_io.geometry import Flag
    from dicom_io.header import Header, read_header
    from dicom_io.index import DicomIndex, SeriesIndex, SeriesRole, StudyIndex, scan
    from dicom_io.select import Selection, select_series, select_single, select_study
    from dicom_io.volume import Provenance, Volume, assemble, load_volume

#: public name -> the module that defines it
_WHERE: dict[str, str] = {
    **dict.fromkeys(("AssemblyConfig", "DicomIOConfig", "SelectionConfig", "load_config"),
                    "dicom_io.config"),
    "DicomIOError": "dicom_io.errors",
    "Flag": "dicom_io.geometry",
    **dict.fromkeys(("Header", "read_header"), "dicom_io.header"),
    **dict.fromkeys(("DicomIndex", "SeriesIndex", "SeriesRole", "StudyIndex", "scan"),
                    "dicom_io.index"),
    **dict.fromkeys(("Selection", "select_series", "select_single", "select_study"),
                    "dicom_io.select"),
    **dict.fromkeys(("Provenance", "Volume", "assemble", "load_volume"), "dicom_io.volume"),
}


def __getattr__(name: str) -> object:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'dicom_io' has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


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
