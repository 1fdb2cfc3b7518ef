"""Deterministic benchmark series built from the real Lung_Dx-A0001 slices.

Nothing here is written into the repository: callers pass a (temporary) output folder.

* :func:`make_tall_series` writes an uncompressed ``n``-slice series (default 300 slices of
  512x512) at uniform spacing.  Slice ``k`` carries the pixels and header of the real slice
  nearest in relative z position, so the stack still looks like a chest; every slice gets new
  Study/Series/SOP Instance/Frame of Reference UIDs, a new ImagePositionPatient and
  InstanceNumber.  UIDs derive from fixed strings, so two runs write identical files.
* :func:`make_j2k_series` writes the real slices re-encoded as JPEG 2000 lossless
  (``Dataset.compress`` with the pylibjpeg-openjpeg encoder; pydicom's GDCM plugin cannot
  encode JPEG 2000, so without pylibjpeg-openjpeg it raises and the caller reports it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_ROOT_UID, UID, JPEG2000Lossless, generate_uid

_UID_SEED = "medassist-bench-ingest-v1"


def _uid(*parts: object) -> str:
    """A UID under pydicom's root derived only from ``parts`` (deterministic).

    (``generate_uid(prefix=None)`` would ignore the entropy sources and use a random UUID.)
    """
    return generate_uid(prefix=PYDICOM_ROOT_UID,
                        entropy_srcs=[_UID_SEED, *(str(p) for p in parts)])


def real_files_in_z_order(folder: Path) -> list[Path]:
    """The DICOM files of ``folder`` sorted by ImagePositionPatient z (ascending)."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    zs = {p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
          for p in files}
    return sorted(files, key=lambda p: (zs[p], p.name))


def _restamp(ds: Dataset, tag: str, index: int, study: str, series: str, frame: str,
             description: str) -> None:
    sop = _uid(tag, "sop", index)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = frame
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.InstanceNumber = index + 1
    ds.SeriesDescription = description
    # Derived-from-real, not a real acquisition: say so in a non-selection-relevant place.
    ds.ImageComments = "medassist benchmark series generated from TCIA Lung_Dx-A0001"


def make_tall_series(src_folder: Path, out_folder: Path, n_slices: int = 300,
                     spacing_mm: float = 1.0) -> list[Path]:
    """Write ``n_slices`` uncompressed slices to ``out_folder``; return their paths."""
    if n_slices < 2:
        raise ValueError("n_slices must be >= 2")
    src = real_files_in_z_order(src_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    tag = f"tall-{n_slices}-{spacing_mm}"
    study, series, frame = _uid(tag, "study"), _uid(tag, "series"), _uid(tag, "for")
    cache: dict[int, Dataset] = {}
    z0: float | None = None
    written: list[Path] = []
    for k in range(n_slices):
        j = min(len(src) - 1, round(k * (len(src) - 1) / (n_slices - 1)))
        if j not in cache:
            cache.clear()  # source indices only grow: keep one data set in memory
            cache[j] = pydicom.dcmread(src[j])
        ds = cache[j]
        if z0 is None:
            z0 = float(ds.ImagePositionPatient[2])
        x, y = (float(v) for v in ds.ImagePositionPatient[:2])
        ds.ImagePositionPatient = [f"{x:g}", f"{y:g}", f"{z0 + k * spacing_mm:.4f}"]
        ds.SliceThickness = f"{spacing_mm:g}"
        ds.SpacingBetweenSlices = f"{spacing_mm:g}"
        if "SliceLocation" in ds:
            ds.SliceLocation = f"{z0 + k * spacing_mm:.4f}"
        _restamp(ds, tag, k, study, series, frame,
                 f"bench synthetic {n_slices}x{spacing_mm:g}mm")
        path = out_folder / f"IM{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def make_j2k_series(src_folder: Path, out_folder: Path,
                    encoders: Sequence[str] = ("pylibjpeg", "gdcm")) -> tuple[list[Path], str]:
    """Write every real slice JPEG 2000 lossless encoded; return (paths, encoder used).

    Raises:
        RuntimeError: no JPEG 2000 encoder is available to pydicom.
    """
    from pydicom.pixels.encoders.base import get_encoder

    available = set(get_encoder(JPEG2000Lossless).available_plugins)
    plugin = next((e for e in encoders if e in available), None)
    if plugin is None:
        raise RuntimeError(
            "no JPEG 2000 lossless encoder available to pydicom "
            f"(tried {list(encoders)}; available: {sorted(available)})")
    src = real_files_in_z_order(src_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    tag = "j2k"
    study, series, frame = _uid(tag, "study"), _uid(tag, "series"), _uid(tag, "for")
    written: list[Path] = []
    for k, p in enumerate(src):
        ds = pydicom.dcmread(p)
        ds.compress(JPEG2000Lossless, encoding_plugin=plugin)
        _restamp(ds, tag, k, study, series, frame, "bench JPEG 2000 lossless")
        path = out_folder / f"J2K{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written, plugin
