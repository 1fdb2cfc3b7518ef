"""Geometry checks: ordering, gaps, duplicates, orientation, tilt, uneven spacing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_io.config import AssemblyConfig, DicomIOConfig, SpacingPolicy, TiltPolicy
from dicom_io.errors import (
    DuplicateSliceError,
    GantryTiltError,
    InconsistentGeometryError,
    InconsistentOrientationError,
    MissingGeometryError,
    SeriesGapError,
    UnevenSpacingError,
)
from dicom_io.index import scan
from dicom_io.volume import Volume, assemble, load_volume
from tests.dicom_factory import axial_positions, sphere, write_series


def cfg(**assembly: object) -> DicomIOConfig:
    return DicomIOConfig(assembly=AssemblyConfig(**assembly))  # type: ignore[arg-type]


def load_only(path: Path, config: DicomIOConfig | None = None) -> Volume:
    """Assemble the only series under ``path`` (bypassing the min-slices selection rule)."""
    (series,) = scan(path).all_series()
    return assemble(series, config)


def codes(v: Volume) -> set[str]:
    return {f.code for f in v.flags}


def centroid_lps(v: Volume, threshold: float = 0.0) -> np.ndarray:
    idx = np.argwhere(np.asarray(v.array) > threshold)
    centre: np.ndarray = v.index_to_lps(idx).mean(axis=0)
    return centre


def test_regular_series_geometry(tmp_path: Path) -> None:
    write_series(tmp_path, axial_positions(20, 2.0), fn=sphere((0, 0, 19), 10))
    v = load_volume(tmp_path)
    assert v.shape == (20, 32, 32)
    assert v.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert np.allclose(centroid_lps(v), (0, 0, 19), atol=0.6)
    assert v.flags == ()


def test_gap_raises_in_strict_mode_with_positions(tmp_path: Path) -> None:
    pos = axial_positions(20, 5.0, z0=-200.0)
    del pos[8:10]  # two missing slices
    write_series(tmp_path, pos)
    with pytest.raises(SeriesGapError) as ei:
        load_volume(tmp_path)
    msg = str(ei.value)
    assert "2 slice(s) missing" in msg
    assert "z=-165.0 and z=-150.0" in msg
    assert "expected spacing 5.00 mm" in msg
    assert ei.value.series_uid is not None and ei.value.series_uid in msg


def test_gap_is_interpolated_and_flagged_in_lenient_mode(tmp_path: Path) -> None:
    pos = axial_positions(20, 5.0)
    del pos[8:10]
    write_series(tmp_path, pos, fn=lambda p: p[..., 2] * 4.0)  # HU = 4*z: linear
    v = load_volume(tmp_path, config=cfg(strict=False))
    assert "gap_interpolated" in codes(v)
    assert v.shape[0] == 20
    z = v.index_to_lps([[k, 0, 0] for k in range(20)])[:, 2]
    assert np.allclose(np.asarray(v.array)[:, 0, 0], 4.0 * z, atol=0.51)


def test_duplicate_slices(tmp_path: Path) -> None:
    pos = axial_positions(10, 2.0)
    pos.insert(5, list(pos[4]))
    write_series(tmp_path, pos)
    with pytest.raises(DuplicateSliceError):
        load_only(tmp_path)
    v = load_only(tmp_path, config=cfg(strict=False))
    assert "duplicate_slices_merged" in codes(v)
    assert v.shape[0] == 10


def test_duplicate_with_different_pixels_always_refused(tmp_path: Path) -> None:
    pos = axial_positions(10, 2.0)
    pos.insert(5, list(pos[4]))
    write_series(tmp_path, pos, fn=None,
                 extra=lambda ds, n: setattr(ds, "RescaleIntercept", -1000.0 if n == 5 else
                                             -1024.0))
    with pytest.raises(DuplicateSliceError):
        load_only(tmp_path, config=cfg(strict=False))


def test_missing_position_is_refused_not_dropped(tmp_path: Path) -> None:
    write_series(tmp_path, axial_positions(10, 2.0),
                 extra=lambda ds, n: delattr(ds, "ImagePositionPatient") if n == 3 else None)
    with pytest.raises(MissingGeometryError) as ei:
        load_only(tmp_path, config=cfg(strict=False))
    assert "slice_0003.dcm" in str(ei.value)


def test_mixed_orientation_refused(tmp_path: Path) -> None:
    write_series(tmp_path, axial_positions(10, 2.0),
                 extra=lambda ds, n: setattr(ds, "ImageOrientationPatient",
                                             [1, 0, 0, 0, 0.9, -0.43589]) if n == 7 else None)
    with pytest.raises(InconsistentOrientationError):
        load_only(tmp_path)


def test_mixed_matrix_refused(tmp_path: Path) -> None:
    write_series(tmp_path, axial_positions(10, 2.0),
                 extra=lambda ds, n: setattr(ds, "PixelSpacing", [1.0, 1.0]) if n == 2 else None)
    with pytest.raises(InconsistentGeometryError):
        load_only(tmp_path)


def test_uneven_spacing_resampled_or_refused(tmp_path: Path) -> None:
    zs = [0, 2, 4, 6, 9, 12, 13, 15, 18, 20, 22, 25, 27, 30]
    write_series(tmp_path, [[-32, -32, z] for z in zs], fn=lambda p: p[..., 2] * 10.0)
    v = load_only(tmp_path)
    assert "uneven_spacing_resampled" in codes(v)
    z = v.index_to_lps([[k, 0, 0] for k in range(v.shape[0])])[:, 2]
    assert np.allclose(np.diff(z), np.diff(z)[0])
    assert np.allclose(np.asarray(v.array)[:, 5, 5], 10.0 * z, atol=0.51)
    with pytest.raises(UnevenSpacingError):
        load_only(tmp_path, config=cfg(uneven_spacing=SpacingPolicy.REFUSE))


@pytest.mark.parametrize("tilt_deg", [15.0, -20.0])
def test_gantry_tilt_resampled_puts_anatomy_in_the_right_place(tmp_path: Path,
                                                               tilt_deg: float) -> None:
    t = math.radians(tilt_deg)
    iop = (1.0, 0.0, 0.0, 0.0, math.cos(t), -math.sin(t))
    centre = (0.0, 6.0, 30.0)
    # Stacked along z like a tilted gantry: positions move along z only.
    pos = [[-32.0, -32.0, k * 2.0] for k in range(32)]
    write_series(tmp_path, pos, orientation=iop, fn=sphere(centre, 9.0), rows=40, cols=32)
    v = load_volume(tmp_path)
    assert "gantry_tilt_corrected" in codes(v)
    assert v.provenance.tilt_deg == pytest.approx(abs(tilt_deg), abs=0.01)
    # The output grid is orthogonal.
    a = v.affine[:3, :3]
    gram = a.T @ a
    assert np.allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-9)
    assert np.allclose(centroid_lps(v), centre, atol=0.7)
    # Every output voxel inside the sphere in world space is bright (no shear left).
    kk, ii, jj = np.meshgrid(*(np.arange(n) for n in v.shape), indexing="ij")
    world = v.index_to_lps(np.stack([kk, ii, jj], axis=-1).reshape(-1, 3))
    d = np.linalg.norm(world - np.asarray(centre), axis=1).reshape(v.shape)
    arr = np.asarray(v.array)
    assert float(arr[d < 6.0].min()) > 0
    assert float(arr[(d > 13.0) & (arr > -1024)].max()) < -900
    with pytest.raises(GantryTiltError):
        load_volume(tmp_path, config=cfg(tilt=TiltPolicy.REFUSE))


def test_ge_tilt_and_uneven_spacing(shared_data: Path) -> None:
    ge = shared_data / "ct" / "dcm_qa_ct" / "GE"
    v = load_volume(ge)
    assert {"gantry_tilt_corrected", "uneven_spacing_resampled"} <= codes(v)
    assert v.provenance.tilt_deg == pytest.approx(18.5, abs=0.05)
    assert len(v.provenance.instance_uids) == 28
    with pytest.raises(GantryTiltError):
        load_volume(ge, config=cfg(tilt=TiltPolicy.REFUSE))
    with pytest.raises(UnevenSpacingError):
        load_volume(ge, config=cfg(uneven_spacing=SpacingPolicy.REFUSE))


def test_philips_tilt_detected_and_localizer_never_selected(shared_data: Path) -> None:
    ph = shared_data / "ct" / "dcm_qa_ct" / "Philips-S21610"
    idx = scan(ph)
    roles = {s.first.series_number: s.role.value for s in idx.all_series()}
    assert roles[401] in ("localizer", "derived", "secondary")
    assert len(idx.dicomdirs) == 2
    v = load_volume(ph)
    assert v.provenance.series_uid == next(
        s.series_uid for s in idx.all_series() if s.first.series_number == 201)
    assert "gantry_tilt_corrected" in codes(v)
    assert v.shape[0] >= 54


def test_series_sorted_by_projection_on_normal(tmp_path: Path) -> None:
    # Sagittal-ish stacking direction -x: positions decrease in x; instance numbers reversed.
    iop = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # sagittal: normal = -x
    pos = [[10.0 - 2.0 * k, -32.0, 32.0] for k in range(12)]
    write_series(tmp_path, pos, orientation=iop, instance_numbers=list(range(12, 0, -1)))
    s = scan(tmp_path).all_series()[0]
    v = assemble(s)
    xs = v.index_to_lps([[k, 0, 0] for k in range(12)])[:, 0]
    # Increasing index goes along the normal (-x): x decreases.
    assert np.all(np.diff(xs) < 0)
    first = pydicom.dcmread(tmp_path / "slice_0000.dcm")
    assert v.provenance.instance_uids[0] == first.SOPInstanceUID
