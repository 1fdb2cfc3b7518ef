"""The real chest CT (Lung-PET-CT-Dx A0001): shape, spacing, z range, HU, and laterality."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from dicom_io.config import DicomIOConfig
from dicom_io.errors import UnreadableFileError
from dicom_io.index import scan
from dicom_io.volume import Volume, assemble, load_volume, read_source


@pytest.fixture(scope="module")
def vol(a0001: Path) -> Volume:
    return load_volume(a0001, config=DicomIOConfig())


def test_shape_spacing_and_z_range_match_headers(vol: Volume, a0001: Path) -> None:
    assert vol.shape == (64, 512, 512)
    assert vol.spacing[0] == pytest.approx(5.0, abs=1e-6)
    zs = sorted(float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
                for p in a0001.glob("*.dcm"))
    lps = vol.index_to_lps([[0, 0, 0], [63, 0, 0]])
    assert lps[0, 2] == pytest.approx(zs[0])
    assert lps[1, 2] == pytest.approx(zs[-1])
    assert (zs[0], zs[-1]) == (-439.0, -124.0)
    assert vol.flags == ()
    assert not vol.provenance.resampled
    assert len(vol.provenance.instance_uids) == 64


def test_hu_plausible(vol: Volume) -> None:
    arr = np.asarray(vol.array, dtype=np.float32)
    # Air outside the body: the top rows of every slice are in front of the chest wall.
    assert float(np.median(arr[:, 5:20, 200:300])) < -900
    # Soft tissue: the median of a central mediastinal block (heart/great vessels).
    k = 40
    block = arr[k, 230:260, 240:270]
    assert 0 <= float(np.median(block)) <= 100, float(np.median(block))
    assert arr.min() >= -1024 - 1 and arr.max() < 4000


def test_equals_naive_pydicom(vol: Volume, a0001: Path) -> None:
    dss = [pydicom.dcmread(p) for p in sorted(a0001.glob("*.dcm"))]
    dss.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    naive = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)
                      for d in dss])
    assert np.array_equal(np.asarray(vol.array, dtype=np.float64), naive)


def test_left_lung_mass_is_on_patient_left_in_nifti(vol: Volume, a0001: Path,
                                                     tmp_path: Path) -> None:
    ann = json.loads((a0001.parent / "annotations-A0001.json").read_text())
    out = tmp_path / "a0001.nii.gz"
    nib.save(vol.to_nifti(), str(out))
    img = nib.load(str(out))
    if not isinstance(img, nib.Nifti1Image):
        raise TypeError(f"{out} read back as {type(img).__name__}, not NIfTI-1")
    data = np.asarray(img.dataobj)
    assert data.shape == (512, 512, 64)
    z_by_file = {p.name: float(pydicom.dcmread(p, stop_before_pixels=True)
                               .ImagePositionPatient[2]) for p in a0001.glob("*.dcm")}
    body_centre_x = []
    for box in ann["boxes"]:
        xmin, ymin, xmax, ymax = box["bbox_pixels"]
        col, row = (xmin + xmax) // 2, (ymin + ymax) // 2
        # Find the NIfTI voxel of this pixel by the slice's world z, not by the file index.
        z = z_by_file[box["file"]]
        assert z == pytest.approx(box["z_mm"])
        inv = np.linalg.inv(img.affine)
        # The RAS world point of the pixel centre, from DICOM geometry.
        ds = pydicom.dcmread(a0001 / box["file"], stop_before_pixels=True)
        ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
        ps = [float(v) for v in ds.PixelSpacing]
        lps = ipp + col * ps[1] * np.array([1.0, 0, 0]) + row * ps[0] * np.array([0, 1.0, 0])
        ras = lps * np.array([-1, -1, 1])
        ijk = inv @ np.append(ras, 1)
        i, j, k = (round(v) for v in ijk[:3])
        assert (i, j) == (col, row)
        assert data[i, j, k] == vol.array[k, j, i]
        # Patient's left is -x in RAS.
        world = img.affine @ np.array([i, j, k, 1.0])
        assert world[0] < 0, f"mass at RAS x={world[0]:.1f} is not on the patient's left"
        # Compare with the body's midline on that slice (thresholded at soft tissue).
        body_cols = np.nonzero((vol.array[k] > -300).any(axis=0))[0]
        mid_col = (body_cols.min() + body_cols.max()) / 2
        mid_ras_x = (img.affine @ np.array([mid_col, j, k, 1.0]))[0]
        body_centre_x.append(mid_ras_x)
        assert world[0] < mid_ras_x
    assert len(body_centre_x) == 20


def test_sorted_by_position_not_instance_number(a0001: Path, tmp_path: Path,
                                                vol: Volume) -> None:
    files = sorted(a0001.glob("*.dcm"))
    rng = np.random.default_rng(7)
    numbers = rng.permutation(len(files)) + 1
    for f, n in zip(files, numbers, strict=True):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = int(n)
        ds.save_as(tmp_path / f"x{n:03d}.dcm")
    shuffled = assemble(scan(tmp_path).all_series()[0])
    assert np.array_equal(shuffled.array, vol.array)
    assert np.allclose(shuffled.affine, vol.affine)


def test_zip_input_gives_same_volume(a0001: Path, tmp_path: Path, vol: Volume) -> None:
    archive = shutil.make_archive(str(tmp_path / "study"), "zip", root_dir=a0001)
    zipped = load_volume(archive)
    assert np.array_equal(zipped.array, vol.array)
    assert zipped.provenance.source_files[0].startswith(archive + "!")
    # each source's bytes, as the draft hashes them: the member's, equal to the file's
    for zsrc, fsrc in zip(zipped.provenance.source_files, vol.provenance.source_files,
                          strict=True):
        assert read_source(zsrc) == read_source(fsrc) == Path(fsrc).read_bytes()
    with pytest.raises(UnreadableFileError):
        read_source(archive + "!no/such/member.dcm")
    with pytest.raises(UnreadableFileError):
        read_source(str(tmp_path / "missing.dcm"))


def test_nifti_affine_is_ras(vol: Volume) -> None:
    a = vol.nifti_affine()
    # Columns go to patient left (+x LPS) = -x RAS; rows go posterior (+y LPS) = -y RAS.
    assert a[0, 0] < 0 and a[1, 1] < 0 and a[2, 2] > 0
