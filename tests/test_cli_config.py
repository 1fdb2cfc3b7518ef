"""CLI commands, configuration precedence, UID validation, and PHI-free logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dicom_io.config import (
    AssemblyConfig,
    DicomIOConfig,
    SelectionConfig,
    TiltPolicy,
    load_config,
)
from dicom_io.errors import ConfigError, InvalidUIDError
from dicom_io.uids import is_valid_uid, uid_path, validate_uid
from dicom_io.volume import load_volume
from medassist.cli import main
from tests.conftest import REPO
from tests.dicom_factory import axial_positions, write_series


def test_ingest_json(a0001: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", str(a0001), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (study,) = data["index"]["studies"]
    (series,) = study["series"]
    assert series["role"] == "diagnostic" and series["images"] == 64
    (sel,) = data["selection"]
    assert sel["selected_series_uid"] == series["series_uid"]
    assert {r["rule"] for r in sel["decisions"][0]["rules"]} >= {
        "modality", "original_primary", "not_localizer", "enough_slices"}


def test_ingest_text_lists_rejections(shared_data: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", str(shared_data / "ct" / "dcm_qa_ct")]) == 0
    out = capsys.readouterr().out
    assert "DICOMDIR files" in out and "Rejected files: 2" in out
    assert out.count("Selection: selected series") == 2


def test_volume_writes_ras_nifti(a0001: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "v.nii.gz"
    assert main(["volume", str(a0001), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shape"] == [64, 512, 512]
    assert summary["spacing_mm"][0] == pytest.approx(5.0)
    assert summary["z_range_mm"] == [-439.0, -124.0]
    assert summary["hu_min"] < -900 and summary["flags"] == []
    img = nib.load(str(out))
    assert isinstance(img, nib.Nifti1Image)
    assert img.shape == (512, 512, 64)
    assert np.allclose(img.affine, summary["nifti_affine_ras"], atol=1e-5)
    # nibabel: aff2axcodes is unannotated
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")  # type: ignore[no-untyped-call]


def test_volume_cli_errors_are_typed(shared_data: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    ge = shared_data / "ct" / "dcm_qa_ct" / "GE"
    rc = main(["volume", str(ge), "--tilt", "refuse", "--out", str(tmp_path / "x.nii")])
    err = capsys.readouterr().err
    assert rc == 3
    assert "GantryTiltError" in err and "18.5 degrees" in err and "01.dcm" in err
    rc = main(["volume", str(tmp_path / "nope"), "--out", str(tmp_path / "x.nii")])
    assert rc == 3 and "no such file" in capsys.readouterr().err


def test_config_precedence(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("dicom_io:\n  assembly:\n    strict: false\n    tilt: refuse\n"
                 "  selection:\n    min_slices: 5\n")
    env = {"MEDASSIST_DICOM__ASSEMBLY__TILT": "resample",
           "MEDASSIST_DICOM__SELECTION__MIN_SLICES": "7"}
    c = load_config(f, environ={})
    assert (c.assembly.strict, c.assembly.tilt, c.selection.min_slices) == (
        False, TiltPolicy.REFUSE, 5)
    c = load_config(f, environ=env)
    assert (c.assembly.tilt, c.selection.min_slices) == (TiltPolicy.RESAMPLE, 7)
    c = load_config(f, environ=env, overrides={"selection": {"min_slices": 9}})
    assert c.selection.min_slices == 9 and c.assembly.strict is False
    assert load_config(environ={}) == DicomIOConfig()
    assert load_config(REPO / "configs" / "dicom_io.yaml", environ={}) == DicomIOConfig()


@pytest.mark.parametrize("bad", [
    {"assembly": {"tilt": "sideways"}},
    {"assembly": {"spacing_rel_tol": 0.9}},
    {"selection": {"min_slices": 0}},
    {"selection": {"nonsense": 1}},
    {"assembly": {"strict": "maybe"}},
    {"selection": {"soft_tissue_kernels": ["("]}},
])
def test_config_rejects_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load_config(overrides=bad, environ={})


def test_config_is_frozen() -> None:
    c = AssemblyConfig()
    with pytest.raises(AttributeError):
        c.strict = False  # type: ignore[misc]
    assert SelectionConfig().min_slices == 16


@pytest.mark.parametrize("uid", ["../../x", "", "1..2", "1.2.", "a.b", "1" * 65, "1.2/3",
                                 None, 5])
def test_invalid_uids_never_reach_paths(uid: object, tmp_path: Path) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(InvalidUIDError):
        validate_uid(uid)
    with pytest.raises(InvalidUIDError):
        uid_path(tmp_path, "1.2.3", uid)  # type: ignore[arg-type]


def test_valid_uid_path(tmp_path: Path) -> None:
    assert uid_path(tmp_path, "1.2.3", "4.5") == tmp_path / "1.2.3" / "4.5"


def test_file_with_traversal_uid_is_rejected_by_index(tmp_path: Path) -> None:
    write_series(tmp_path, axial_positions(3, 2.0),
                 extra=lambda ds, n: setattr(ds, "SeriesInstanceUID", "../../x") if n == 1
                 else None)
    from dicom_io.index import scan

    idx = scan(tmp_path)
    assert [r.error for r in idx.rejected] == ["InvalidUIDError"]
    assert idx.all_series()[0].n_images == 2


def test_logs_hold_no_phi(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def plant(ds, n):  # type: ignore[no-untyped-def]
        ds.PatientName = "Zzyzx^Planted"
        ds.PatientID = "MRN-PLANTED-991"
        ds.AccessionNumber = "ACC-PLANTED-7"
        ds.PatientBirthDate = "19220202"

    write_series(tmp_path / "s", axial_positions(20, 2.0), extra=plant)
    (tmp_path / "s" / "junk.dcm").write_bytes(b"MRN-PLANTED-991 not dicom")
    with caplog.at_level(logging.DEBUG):
        main(["-v", "-v", "ingest", str(tmp_path / "s")])
        load_volume(tmp_path / "s")
        main(["volume", str(tmp_path / "s"), "--out", str(tmp_path / "o.nii")])
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records, "expected some log output"
    for phi in ("Zzyzx", "Planted", "MRN-PLANTED-991", "ACC-PLANTED-7", "19220202"):
        assert phi.lower() not in text.lower()


def test_deid_cli_keeps_the_volume_and_removes_identity(a0001: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    import pydicom

    key = tmp_path / "deid.key"
    out = tmp_path / "out"
    assert main(["deid", str(a0001), str(out), "--key-file", str(key)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["written"] == 64 and report["counts"]["skipped"] == 0
    assert key.stat().st_mode & 0o077 == 0
    original = load_volume(a0001)
    deid = load_volume(out)
    assert np.array_equal(original.array, deid.array)
    assert np.allclose(original.affine, deid.affine)
    src = pydicom.dcmread(next(a0001.glob("*.dcm")), stop_before_pixels=True)
    files = list(out.rglob("*.dcm"))
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert first.PatientIdentityRemoved == "YES"
    assert first.PatientID != src.PatientID and first.StudyInstanceUID != src.StudyInstanceUID
    # Same key, same pseudonyms.
    assert main(["deid", str(a0001), str(tmp_path / "again"), "--key-file", str(key)]) == 0
    capsys.readouterr()
    again = pydicom.dcmread(next((tmp_path / "again").rglob("*.dcm")), stop_before_pixels=True)
    assert again.StudyInstanceUID == first.StudyInstanceUID
    assert again.PatientID == first.PatientID
    # No key: a clear usage error.
    assert main(["deid", str(a0001), str(tmp_path / "x")]) == 2
    assert "--key-file" in capsys.readouterr().err
