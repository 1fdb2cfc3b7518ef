"""Every file in dicom-edge/ is read correctly or rejected with a typed error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_io.errors import DicomIOError, NotCTImageError
from dicom_io.index import scan
from dicom_io.volume import Volume, _decode_file, assemble


def _single(path: Path, tmp_path: Path) -> Path:
    d = tmp_path / path.stem
    d.mkdir()
    shutil.copy(path, d / path.name)
    return d


def _expected_hu(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array.astype(np.float64)
    return arr * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def test_every_edge_file_is_read_or_rejected_with_typed_error(shared_data: Path,
                                                              tmp_path: Path) -> None:
    edge = shared_data / "dicom-edge"
    files = sorted(p for p in edge.rglob("*") if p.is_file())
    outcomes: dict[str, str] = {}
    for f in files:
        idx = scan(_single(f, tmp_path))
        rejected = {Path(r.path).name: r for r in idx.rejected}
        if f.name in rejected:
            r = rejected[f.name]
            assert r.error.endswith("Error") and r.reason, f
            outcomes[f.name] = f"rejected:{r.error}"
            continue
        (series,) = idx.all_series()
        try:
            vol = assemble(series)
        except DicomIOError as exc:
            outcomes[f.name] = f"refused:{type(exc).__name__}"
            continue
        assert isinstance(vol, Volume)
        if series.first.number_of_frames == 1:
            expected = _expected_hu(f)
            assert np.array_equal(np.asarray(vol.array, dtype=np.float64)[0], expected), f
        outcomes[f.name] = "read"
    # Non-DICOM files, broken files and invalid UIDs are rejected by the index.
    for name in ("no_meta.dcm", "MR_truncated.dcm", "rtplan_truncated.dcm", "badVR.dcm",
                 "meta_missing_tsyntax.dcm", "README.txt", "bad_sequence.dcm",
                 "nested_priv_SQ.dcm"):
        assert outcomes[name].startswith("rejected:"), (name, outcomes[name])
    # Non-CT objects are indexed but refused as volumes.
    for name in ("MR_small.dcm", "test-SR.dcm", "rtdose.dcm", "liver.dcm",
                 "ExplVR_BigEndNoMeta.dcm", "emri_small_jpeg_2k_lossless_too_short.dcm"):
        assert outcomes[name] == f"refused:{NotCTImageError.__name__}", (name, outcomes[name])
    for name in ("693_UNCI.dcm", "693_UNCR.dcm", "693_J2KR.dcm", "693_J2KI.dcm", "CT_small.dcm",
                 "eCT_Supplemental.dcm", "explicit_VR-UN.dcm"):
        assert outcomes[name] == "read", (name, outcomes[name])
    assert len(outcomes) == len(files)


def test_jpeg2000_and_uncompressed_slice_693_identical_hu(shared_data: Path,
                                                          tmp_path: Path) -> None:
    """693_J2KR is the JPEG 2000 lossless copy of 693_UNCR (same SOP instance)."""
    edge = shared_data / "dicom-edge" / "pydicom"
    vols = {}
    for name in ("693_UNCR.dcm", "693_J2KR.dcm", "693_UNCI.dcm", "693_J2KI.dcm"):
        (series,) = scan(_single(edge / name, tmp_path)).all_series()
        vols[name] = assemble(series)
    unc, j2k = vols["693_UNCR.dcm"], vols["693_J2KR.dcm"]
    assert unc.provenance.instance_uids == j2k.provenance.instance_uids
    assert unc.shape == (1, 512, 512)
    assert np.array_equal(unc.array, j2k.array)
    assert np.allclose(unc.affine, j2k.affine)
    assert j2k.provenance.transfer_syntaxes == ("1.2.840.10008.1.2.4.90",)
    # 693_UNCI holds the decoded pixels of the irreversible copy 693_J2KI: equal as well.
    assert np.array_equal(vols["693_UNCI.dcm"].array, vols["693_J2KI.dcm"].array)
    assert not np.array_equal(vols["693_UNCI.dcm"].array, unc.array)


def test_enhanced_ct_read_through_per_frame_groups(shared_data: Path, tmp_path: Path) -> None:
    f = shared_data / "dicom-edge" / "pydicom" / "eCT_Supplemental.dcm"
    (series,) = scan(_single(f, tmp_path)).all_series()
    v = assemble(series)
    ds = pydicom.dcmread(f)
    frames = ds.PerFrameFunctionalGroupsSequence
    iop = np.asarray(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
                     .ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    # Ordered by the projection on the slice normal (here -z), not by z or frame number.
    positions = sorted(
        (np.asarray(fr.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
         for fr in frames), key=lambda p: float(p @ normal))
    assert v.shape == (2, 512, 512)
    assert np.allclose(v.index_to_lps([[0, 0, 0], [1, 0, 0]]), positions)
    assert all(u.endswith(("#1", "#2")) for u in v.provenance.instance_uids)
    shared = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    raw = ds.pixel_array.astype(np.float64)
    expected = raw * float(shared.RescaleSlope) + float(shared.RescaleIntercept)
    order = np.argsort([float(np.asarray(fr.PlanePositionSequence[0].ImagePositionPatient,
                                         dtype=float) @ normal) for fr in frames])
    assert np.array_equal(np.asarray(v.array, dtype=np.float64), expected[order])


def test_all_transfer_syntaxes_decode_identically(shared_data: Path) -> None:
    """dcm_qa_ts: one MR slice in 9 lossless transfer syntaxes (decoder coverage)."""
    ts_dir = shared_data / "dicom-edge" / "dcm_qa_ts"
    arrays = {p.name: _decode_file(str(p), None) for p in sorted(ts_dir.glob("*.dcm"))}
    assert len(arrays) == 9
    ref = arrays["1.dcm"]
    syntaxes = {p.name: str(pydicom.dcmread(p, stop_before_pixels=True)
                            .file_meta.TransferSyntaxUID) for p in ts_dir.glob("*.dcm")}
    assert len(set(syntaxes.values())) >= 7
    for name, arr in arrays.items():
        assert np.array_equal(arr, ref), (name, syntaxes[name])


@pytest.mark.parametrize("name", ["emri_small_jpeg_2k_lossless_too_short.dcm"])
def test_decode_failure_is_typed(shared_data: Path, name: str) -> None:
    from dicom_io.errors import PixelDataError

    f = shared_data / "dicom-edge" / "pydicom" / name
    try:
        arr = _decode_file(str(f), None)
    except PixelDataError as exc:
        assert name in str(exc)
    else:
        assert arr.size > 0
