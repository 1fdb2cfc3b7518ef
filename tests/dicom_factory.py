"""Write small synthetic CT series with exact, controllable geometry (for geometry tests).

Each voxel's value is an analytic function of its LPS world position, so a test can check
that assembly put every sample where it belongs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

WorldFn = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]

ROOT = "1.2.826.0.1.3680043.8.498."


def sphere(center: Sequence[float], radius: float, inside: float = 400.0,
           outside: float = -1000.0) -> WorldFn:
    c = np.asarray(center, dtype=np.float64)

    def f(p: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        d = np.linalg.norm(p - c, axis=-1)
        return np.where(d <= radius, inside, outside)

    return f


def write_series(
    out: Path,
    positions: Sequence[Sequence[float]],
    *,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    rows: int = 32,
    cols: int = 32,
    pixel_spacing: tuple[float, float] = (2.0, 2.0),
    fn: WorldFn | None = None,
    intercept: float = -1024.0,
    slope: float = 1.0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    instance_numbers: Sequence[int] | None = None,
    sop_uids: Sequence[str] | None = None,
    extra: Callable[[Dataset, int], None] | None = None,
) -> list[Path]:
    """Write one CT slice per position; returns the file paths."""
    out.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid(prefix=ROOT)
    study_uid = study_uid or generate_uid(prefix=ROOT)
    for_uid = generate_uid(prefix=ROOT)
    r = np.asarray(orientation[:3], dtype=np.float64)
    c = np.asarray(orientation[3:], dtype=np.float64)
    ii, jj = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    paths = []
    for n, pos in enumerate(positions):
        p0 = np.asarray(pos, dtype=np.float64)
        world = (p0 + jj[..., None] * pixel_spacing[1] * r
                 + ii[..., None] * pixel_spacing[0] * c)
        hu = fn(world) if fn is not None else np.full((rows, cols), 40.0)
        stored = np.rint((hu - intercept) / slope).astype(np.int16)
        sop = UID(sop_uids[n]) if sop_uids is not None else generate_uid(prefix=ROOT)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = for_uid
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientID = "TEST0001"
        ds.PatientName = "Test^Phantom"
        ds.SeriesNumber = 1
        ds.InstanceNumber = instance_numbers[n] if instance_numbers is not None else n + 1
        ds.ImagePositionPatient = [float(v) for v in p0]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = 2.0
        ds.ConvolutionKernel = "STANDARD"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = slope
        ds.PixelData = stored.tobytes()
        if extra is not None:
            extra(ds, n)
        path = out / f"slice_{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def axial_positions(n: int, spacing: float, z0: float = 0.0,
                    xy: tuple[float, float] = (-32.0, -32.0)) -> list[list[float]]:
    return [[xy[0], xy[1], z0 + k * spacing] for k in range(n)]


def zip_folder(folder: Path, archive: Path) -> Path:
    """``folder``'s files in a zip file ``archive`` (Python's zipfile, deflated), a non-DICOM
    member first, as a PACS export may hold one: a study kept as a zip file."""
    import zipfile

    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("00_README.txt", "exported by a PACS\n")
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(f, f.relative_to(folder).as_posix())
    return archive
