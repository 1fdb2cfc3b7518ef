"""Write a rendered volume as a valid, deterministic CT Image Storage series (one file per slice).

All UIDs come from the case seed (2.25 root), dates and times from the sampled study time; no
clock is read.  Pixels are int16 with RescaleSlope 1 / RescaleIntercept -1024, so the volume
read back equals the generator's HU volume to within rounding (0.5 HU).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from medassist.synth.errors import OutputError

if TYPE_CHECKING:
    import pydicom

    from medassist.synth.case import Case
    from medassist.synth.phantom import Grid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLEMENTATION_UID = "2.25.205718930398620371446116451178218364911"
INTERCEPT = -1024.0


def _ds(x: float) -> str:
    s = f"{x:.6f}".rstrip("0").rstrip(".")
    return s if s not in ("-0", "") else "0"


def to_stored(hu: npt.NDArray[np.floating]) -> npt.NDArray[np.int16]:
    """HU -> stored int16 values (round half to even, clipped to [-1024, 3071] HU)."""
    return np.asarray((np.clip(np.rint(hu), -1024, 3071) - INTERCEPT).astype(np.int16))


def _base(case: Case, series_number: int, description: str, kernel: str,
          image_type: list[str]) -> pydicom.Dataset:
    from pydicom.dataset import Dataset

    p, acq = case.profile, case.acquisition
    t = p.study_datetime
    date, time = t.strftime("%Y%m%d"), t.strftime("%H%M%S")
    series_t = (t.hour * 3600 + t.minute * 60 + t.second + 60 * series_number) % 86400
    s_time = f"{series_t // 3600:02d}{series_t // 60 % 60:02d}{series_t % 60:02d}"
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = image_type
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = time
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = s_time
    ds.AccessionNumber = p.accession
    ds.Modality = "CT"
    ds.Manufacturer = "medassist-synth"
    ds.ManufacturerModelName = acq.model_name
    ds.InstitutionName = p.institution
    ds.ReferringPhysicianName = p.referring
    ds.StudyDescription = f"CT CHEST {'W' if acq.contrast else 'WO'} CONTRAST"
    ds.SeriesDescription = description
    ds.PatientName = f"{p.family.upper()}^{p.given}"
    ds.PatientID = p.mrn
    ds.PatientBirthDate = p.birth_date.strftime("%Y%m%d")
    ds.PatientSex = p.sex
    ds.PatientAge = f"{p.age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = _ds(acq.thickness_mm)
    ds.KVP = _ds(acq.kvp)
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = _ds(acq.fov_mm)
    ds.GantryDetectorTilt = "0"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = str(round(acq.mas * 2))
    ds.Exposure = str(round(acq.mas))
    ds.ConvolutionKernel = kernel
    ds.PatientPosition = "HFS"
    if acq.contrast:
        ds.ContrastBolusAgent = "Iohexol 350 mg I/mL"
        ds.ContrastBolusRoute = "IV"
    ds.StudyInstanceUID = case.uid("study")
    ds.SeriesInstanceUID = case.uid("series", series_number)
    ds.StudyID = str(1000 + case.index)
    ds.SeriesNumber = str(series_number)
    ds.FrameOfReferenceUID = case.uid("frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = _ds(INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def _save(ds: pydicom.Dataset, path: Path, rle: bool) -> None:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, RLELossless

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_UID)
    meta.ImplementationVersionName = "MEDASSIST_SYNTH1"
    ds.file_meta = meta
    if rle:
        ds.compress(RLELossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def write_series(case: Case, hu: npt.NDArray[np.floating], grid: Grid, folder: Path, *,
                 series_number: int, kernel: str, rle: bool) -> list[Path]:
    """Write ``hu`` (z, y, x; slice 0 inferior) as one axial series; returns the file paths."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {folder}: {exc.strerror}") from exc
    acq = case.acquisition
    base = _base(case, series_number, f"Chest {acq.thickness_mm:g}mm {kernel}", kernel,
                 ["ORIGINAL", "PRIMARY", "AXIAL"])
    nz, ny, nx = hu.shape
    zs, ys, xs = grid.axes()
    base.Rows, base.Columns = ny, nx
    base.PixelSpacing = [_ds(grid.spacing[1]), _ds(grid.spacing[2])]
    base.SpacingBetweenSlices = _ds(grid.spacing[0])
    base.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    base.WindowCenter, base.WindowWidth = "40", "400"
    stored = to_stored(hu)
    paths = []
    for k in range(nz):
        ds = base.copy()
        inst = nz - k  # instance 1 is the most superior slice (head-first acquisition)
        ds.SOPInstanceUID = case.uid("sop", series_number, k)
        ds.InstanceNumber = str(inst)
        ds.ImagePositionPatient = [_ds(xs[0]), _ds(ys[0]), _ds(zs[k])]
        ds.SliceLocation = _ds(zs[k])
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = folder / f"IM{inst:05d}.dcm"
        _save(ds, path, rle)
        paths.append(path)
    return paths


def write_localizer(case: Case, hu: npt.NDArray[np.floating], grid: Grid, folder: Path,
                    *, rle: bool) -> Path:
    """A single coronal projection image (ImageType ORIGINAL\\PRIMARY\\LOCALIZER)."""
    folder.mkdir(parents=True, exist_ok=True)
    mu = np.clip(hu.astype(np.float64) + 1000.0, 0, None) / 1000.0  # relative attenuation
    proj = mu.sum(axis=1) * grid.spacing[1] / 10.0  # (z, x), ~cm water equivalent
    img = proj[::-1] / max(float(proj.max()), 1e-6) * 2000.0 - 1000.0  # top row = superior
    ds = _base(case, 1, "Topogram 0.6 AP", "T20s", ["ORIGINAL", "PRIMARY", "LOCALIZER"])
    zs, _ys, xs = grid.axes()
    ds.Rows, ds.Columns = img.shape
    ds.PixelSpacing = [_ds(grid.spacing[0]), _ds(grid.spacing[2])]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    ds.ImagePositionPatient = [_ds(xs[0]), _ds(float(grid.center()[1])), _ds(zs[-1])]
    ds.SOPInstanceUID = case.uid("sop", 1, 0)
    ds.InstanceNumber = "1"
    ds.PixelData = to_stored(img).tobytes()
    path = folder / "IM00001.dcm"
    _save(ds, path, rle)
    return path
