"""DICOM: determinism, header content, and exact read-back through dicom_io (strict mode)."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_io import load_volume
from medassist.synth.case import make_case
from medassist.synth.config import DicomConfig, SynthConfig
from medassist.synth.findings import Vocabulary
from medassist.synth.writer import read_labels, render_case, write_case


def _write(cfg: SynthConfig, vocab: Vocabulary, seed: int, index: int, out: Path) -> Path:
    case = make_case(cfg, vocab, seed, index, "train")
    write_case(case, cfg, out)
    return out


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def full_cfg(small_cfg: SynthConfig) -> SynthConfig:
    return dataclasses.replace(small_cfg, dicom=DicomConfig(
        transfer_syntax="rle", localizer=True, second_kernel=True))


def test_same_seed_same_bytes_different_seed_different(
        tmp_path: Path, full_cfg: SynthConfig, vocab: Vocabulary) -> None:
    a = _tree(_write(full_cfg, vocab, 5, 0, tmp_path / "a"))
    b = _tree(_write(full_cfg, vocab, 5, 0, tmp_path / "b"))
    c = _tree(_write(full_cfg, vocab, 6, 0, tmp_path / "c"))
    assert a.keys() == b.keys() and len(a) > 10
    assert all(a[k] == b[k] for k in a)
    for name in ("emr.txt", "truth.json", "report.txt", "emr_fhir.json"):
        assert a[name] != c[name]
    dcm = [k for k in a if k.endswith(".dcm") and k in c]
    assert dcm and all(a[k] != c[k] for k in dcm)


def test_header_is_valid_ct_with_phi_and_consistent_uids(
        tmp_path: Path, full_cfg: SynthConfig, vocab: Vocabulary) -> None:
    out = _write(full_cfg, vocab, 11, 3, tmp_path / "case")
    truth = json.loads((out / "truth.json").read_text())
    files = sorted((out / "dicom").rglob("*.dcm"))
    study_uids, frames = set(), set()
    series: dict[str, set[str]] = {}
    for p in files:
        ds = pydicom.dcmread(p)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"  # RLE Lossless
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID):
            assert uid.startswith("2.25.") and len(uid) <= 64
        assert ds.Manufacturer == "medassist-synth"
        assert ds.PatientID == truth["patient"]["mrn"] and ds.AccessionNumber
        assert str(ds.PatientName).startswith(truth["patient"]["family"].upper())
        assert ds.PatientBirthDate and ds.InstitutionName and ds.ReferringPhysicianName
        assert ("ContrastBolusAgent" in ds) == truth["acquisition"]["contrast"]
        assert float(ds.RescaleIntercept) == -1024.0 and float(ds.RescaleSlope) == 1.0
        study_uids.add(ds.StudyInstanceUID)
        frames.add(ds.FrameOfReferenceUID)
        series.setdefault(ds.SeriesInstanceUID, set()).add("\\".join(ds.ImageType))
        if "LOCALIZER" not in ds.ImageType:
            assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
            assert [float(x) for x in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
            assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == 5.0
            assert float(ds.KVP) == truth["acquisition"]["kvp"]
            assert ds.ConvolutionKernel in (truth["acquisition"]["kernel"],
                                            truth["acquisition"]["sharp_kernel"])
    assert len(study_uids) == 1 and len(frames) == 1
    assert len(series) == 3  # localizer, soft kernel, sharp kernel
    assert any("LOCALIZER" in t for ts in series.values() for t in ts)
    # the report's Technique states the header values
    rep = (out / "report.txt").read_text()
    ds = pydicom.dcmread(next(p for p in files if "series_002" in str(p)))
    assert f"{float(ds.KVP):g} kVp" in rep and ds.ConvolutionKernel in rep
    assert f"{float(ds.SliceThickness):g} mm" in rep


@pytest.mark.parametrize("rle", [False, True])
def test_dicom_io_reads_the_generator_volume_back(
        tmp_path: Path, small_cfg: SynthConfig, vocab: Vocabulary, rle: bool) -> None:
    cfg = dataclasses.replace(small_cfg, dicom=DicomConfig(
        transfer_syntax="rle" if rle else "explicit", localizer=True, second_kernel=rle))
    case = make_case(cfg, vocab, 21, 1, "val")
    write_case(case, cfg, tmp_path / "c")
    vol = load_volume(tmp_path / "c" / "dicom")  # strict mode by default; picks soft kernel
    ref = render_case(case)
    grid = case.acquisition.grid
    assert vol.shape == grid.shape
    origin = vol.index_to_lps([0, 0, 0])
    first = np.asarray([grid.origin[2], grid.origin[1], grid.origin[0]])
    arr = np.asarray(vol.array, dtype=np.float64)
    if not np.allclose(origin, first, atol=1e-3):  # reader ordered the slices top-down
        arr = arr[::-1]
        origin = vol.index_to_lps([vol.shape[0] - 1, 0, 0])
    assert np.allclose(origin, first, atol=1e-3)
    assert np.allclose(vol.spacing, grid.spacing, atol=1e-4)
    assert np.max(np.abs(arr - ref.hu)) <= 0.5 + 1e-4
    labels = read_labels(tmp_path / "c" / "labels.npy.gz")
    assert np.array_equal(labels, ref.labels)


def test_fhir_bundle_shape(tmp_path: Path, small_cfg: SynthConfig, vocab: Vocabulary) -> None:
    out = _write(small_cfg, vocab, 3, 2, tmp_path / "c")
    bundle = json.loads((out / "emr_fhir.json").read_text())
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    urls = {e["fullUrl"] for e in bundle["entry"]}
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert types.count("Patient") == 1 and "DocumentReference" in types
    assert "Observation" in types and "MedicationStatement" in types
    patient = next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    for e in bundle["entry"]:
        r = e["resource"]
        assert e["fullUrl"] == f"urn:uuid:{r['id']}"
        if "subject" in r:
            assert r["subject"]["reference"] == patient["fullUrl"]
            assert r["subject"]["reference"] in urls
        if r["resourceType"] == "Observation" and "valueQuantity" in r:
            q = r["valueQuantity"]
            assert isinstance(q["value"], int | float) and q["unit"] and q["system"]
            assert r["effectiveDateTime"][10] == "T"
    doc = next(e["resource"] for e in bundle["entry"]
               if e["resource"]["resourceType"] == "DocumentReference")
    text = base64.b64decode(doc["content"][0]["attachment"]["data"]).decode("utf-8")
    assert text == (out / "emr.txt").read_text()
    mrn = patient["resource"]["identifier"][0]["value"]
    assert mrn in text
