"""Tests for :mod:`dicom_io.deid` (PS3.15 Annex E de-identification).

Shared data is read in place; anything written goes to pytest's ``tmp_path``.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import shutil
import stat
import warnings
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.config import IGNORE
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_io import _annex_e as annex_e
from dicom_io.deid import (
    DATE_SHIFT_MAX_DAYS,
    DATE_SHIFT_MIN_DAYS,
    DeidKey,
    DeidOptions,
    deidentify_dataset,
    deidentify_file,
    deidentify_path,
    is_safe_descriptor,
    load_deid_options,
)
from dicom_io.errors import (
    BurnedInAnnotationError,
    DeidentificationError,
    UnreadableFileError,
)
from dicom_io.uids import is_valid_uid

EDGE = Path("/work/shared/data/dicom-edge/pydicom")
CT_SMALL = EDGE / "CT_small.dcm"
J2KR = EDGE / "693_J2KR.dcm"
LUNG = Path("/work/shared/data/ct/lung-pet-ct-dx/Lung_Dx-A0001")
REPO = Path(__file__).resolve().parents[1]

needs_ct_small = pytest.mark.skipif(not CT_SMALL.exists(), reason="shared CT_small.dcm missing")
needs_j2kr = pytest.mark.skipif(not J2KR.exists(), reason="shared 693_J2KR.dcm missing")
needs_lung = pytest.mark.skipif(not LUNG.is_dir(), reason="shared lung series missing")

KEY = DeidKey(hashlib.sha256(b"medassist test key one").digest())
KEY2 = DeidKey(hashlib.sha256(b"medassist test key two").digest())

PHI_MARK = b"ZZPHI"
UID_ROOT = "1.2.826.0.1.3680043.9.7777."
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"

# Attributes that the Retain Patient Characteristics Option keeps: planted with realistic
# values (not PHI markers) and checked to survive.
RETAINED = {
    "PatientSex": "F",
    "PatientAge": "045Y",
    "PatientSize": "1.70",
    "PatientWeight": "70",
    "EthnicGroup": "W",
    "PatientSexNeutered": "ALTERED",
    "SmokingStatus": "NO",
    "PregnancyStatus": 4,
    "SelectorASValue": "045Y",
}
TOP_LEVEL_SPECIAL = {0x00100010, 0x00100020, 0x00020003}


def _phi(i: int, suffix: str = "Q") -> str:
    return f"ZZPHI{i:04d}{suffix}"


def _uid(i: int, *sub: int) -> str:
    return UID_ROOT + ".".join(str(x) for x in (i, *sub))


def _date(i: int) -> str:
    # 1500 days apart: farther than any shift, so no shifted date can equal a planted one.
    return (date(2100, 1, 1) + timedelta(days=1500 * i)).strftime("%Y%m%d")


def _all_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _read_ct() -> Dataset:
    return pydicom.dcmread(CT_SMALL)


def _nested_item(i: int) -> Dataset:
    item = Dataset()
    item.InstitutionName = _phi(i, "R")
    item.PersonName = _phi(i, "S")
    item.ReferencedSOPInstanceUID = _uid(i, 1)
    item.AccessionNumber = _phi(i, "A")
    block = item.private_block(0x0029, "ZZPHI NESTED CREATOR", create=True)
    block.add_new(0x01, "LO", _phi(i, "P"))
    return item


def _planted_ct() -> tuple[Dataset, dict[str, list[str]]]:
    """CT_small with a distinctive PHI value in every Table E.1-1 attribute it can hold."""
    ds = _read_ct()
    planted: dict[str, list[str]] = {"dates": [], "uids": [], "strings": [], "times": []}
    commands = Dataset()  # command elements may only appear nested (PS3.15 E.1.1 note 1)
    for i, rule in enumerate(annex_e.ANNEX_E_RULES):
        if rule.tag in TOP_LEVEL_SPECIAL:
            continue
        if rule.tag >> 16 == 0x0000:
            commands.add_new(rule.tag, "UI", _uid(i))
            planted["uids"].append(_uid(i))
            continue
        if rule.keyword in RETAINED:
            setattr(ds, rule.keyword, RETAINED[rule.keyword])
            continue
        vr = dictionary_VR(rule.tag).split(" or ")[0]
        value: object
        if vr in ("PN", "LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE"):
            value = _phi(i)
            planted["strings"].append(str(value))
        elif vr == "UR":
            value = "urn:" + _phi(i)
        elif vr == "UI":
            value = _uid(i)
            planted["uids"].append(str(value))
        elif vr == "DA":
            value = _date(i)
            planted["dates"].append(str(value))
        elif vr == "DT":
            value = _date(i) + "101112"
            planted["dates"].append(_date(i))
        elif vr == "TM":
            value = "101112"
            planted["times"].append(rule.keyword)
        elif vr in ("OB", "OW", "UN"):
            value = _phi(i).encode()
        elif vr == "SQ":
            value = Sequence([_nested_item(i)])
        else:
            continue
        ds.add_new(rule.tag, vr, value)

    # Richer nesting in the sequences the issue names.
    req = Dataset()
    req.RequestedProcedureID = _phi(9001)
    req.ScheduledProcedureStepID = _phi(9002)
    req.ScheduledProcedureStepDescription = _phi(9003)
    req.AccessionNumber = _phi(9004)
    inner = Dataset()
    inner.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    inner.ReferencedSOPInstanceUID = _uid(9005)
    req.ReferencedStudySequence = Sequence([inner])
    ds.RequestAttributesSequence = Sequence([req])
    other_ids = []
    for j in range(2):
        item = Dataset()
        item.PatientID = _phi(9010 + j)
        item.IssuerOfPatientID = _phi(9020 + j)
        item.TypeOfPatientID = "TEXT"
        other_ids.append(item)
    ds.OtherPatientIDsSequence = Sequence(other_ids)
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study_ref.ReferencedSOPInstanceUID = _uid(9030)
    ds.ReferencedStudySequence = Sequence([study_ref, commands])
    planted["uids"] += [_uid(9005), _uid(9030)]

    # Attributes Table E.1-1 does not list, caught by the rules per VR.
    ds.EvaluatorName = _phi(9040)
    ds.ExpiryDate = _date(700)
    ds.StudyUpdateDateTime = _date(701) + "080000"
    ds.MultiFrameSourceSOPInstanceUID = _uid(9041)
    planted["dates"] += [_date(700), _date(701)]
    planted["uids"].append(_uid(9041))

    # Private attributes at the top level and inside a private sequence.
    block = ds.private_block(0x0033, "ZZPHI TOP CREATOR", create=True)
    block.add_new(0x10, "LO", _phi(9050))
    block.add_new(0x11, "SQ", Sequence([_nested_item(9051)]))
    # An overlay plane whose data and comments carry identification.
    ds.add_new(0x60000010, "US", 16)
    ds.add_new(0x60000011, "US", 16)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60003000, "OW", _phi(9060).encode() * 2 + b"\x00" * 12)
    ds.add_new(0x60004000, "LT", _phi(9061))
    ds.PatientName = "ZZPHINAME^JOHN"
    ds.PatientID = "ZZPHIPID7731"
    ds.PatientBirthDate = _date(702)
    planted["dates"].append(_date(702))
    return ds, planted


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


def test_annex_e_table_is_well_formed() -> None:
    rules = annex_e.ANNEX_E_RULES
    assert len(rules) >= 600
    tags = [r.tag for r in rules]
    assert tags == sorted(tags)
    assert len(set(tags)) == len(tags)
    for rule in rules:
        assert rule.basic in annex_e.ACTION_CODES
        assert keyword_for_tag(rule.tag) == rule.keyword
        assert rule.dates in (None, "C")
        assert rule.chars in (None, "C", "K")
        assert rule.desc in (None, "C")
    # Spot checks against the standard.
    by_kw = {r.keyword: r for r in rules}
    assert by_kw["PatientName"].basic == "Z"
    assert by_kw["SOPInstanceUID"].basic == "U"
    assert by_kw["StudyDate"].basic == "Z" and by_kw["StudyDate"].dates == "C"
    assert by_kw["PatientSex"].chars == "K"
    assert by_kw["SeriesDescription"].basic == "X" and by_kw["SeriesDescription"].desc == "C"
    assert by_kw["ReferencedImageSequence"].basic == "X/Z/U*"
    assert by_kw["InstitutionName"].basic == "X/Z/D"
    assert isinstance(annex_e.rule_for(0x60023000), annex_e.AnnexEGroupRule)
    assert isinstance(annex_e.rule_for(0x50001234), annex_e.AnnexEGroupRule)
    assert annex_e.rule_for(0x00280010) is None


# --------------------------------------------------------------------------------------------
# PHI removal
# --------------------------------------------------------------------------------------------


@needs_ct_small
def test_planted_phi_removed_everywhere() -> None:
    ds, planted = _planted_ct()
    original = _read_ct()
    result = deidentify_dataset(ds, KEY)
    out = result.dataset
    raw = _all_bytes(out)

    assert PHI_MARK not in raw
    assert UID_ROOT.encode() not in raw
    for uid in (original.StudyInstanceUID, original.SeriesInstanceUID,
                original.SOPInstanceUID, original.FrameOfReferenceUID,
                original.file_meta.MediaStorageSOPInstanceUID):
        assert str(uid).encode() not in raw
    for value in planted["dates"]:
        assert value.encode() not in raw
    for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
               "InstanceCreationDate"):
        assert str(original.get(kw)).encode() not in raw
    for leaked in (b"CompressedSamples", b"1CT1", b"ABCD1234", b"JFK IMAGING", b"CLUNIE1",
                   b"GEMS_", b"CT01_OC0"):
        assert leaked not in raw

    # Everything round-trips as a valid file.
    back = pydicom.dcmread(io.BytesIO(raw))
    assert back.PatientID == result.pseudo_patient_id
    assert back.PatientName == result.pseudo_patient_id
    assert not any(elem.tag.is_private for elem in back.iterall())
    for kw, kept in RETAINED.items():
        assert back.get(kw) == kept, kw
    # Changes name tags and locations, never values.
    for change in result.changes:
        assert "ZZPHI" not in change.path and "ZZPHI" not in change.keyword
    paths = {c.path for c in result.changes}
    assert "RequestAttributesSequence" in paths or any(
        p.startswith("RequestAttributesSequence[0].") for p in paths
    )
    assert "(0033,0010)" in paths
    assert not any(elem.tag.group == 0x6000 for elem in back)
    assert "overlays_or_curves_removed" in result.flags
    # Reference sequences are kept, with the remapped instance UID.
    assert back.ReferencedStudySequence[0].ReferencedSOPInstanceUID == result.dataset[
        "ReferencedStudySequence"][0].ReferencedSOPInstanceUID
    assert "ReferencedStudySequence[0].ReferencedSOPInstanceUID" in paths


@needs_ct_small
def test_nested_references_follow_the_remapped_instance() -> None:
    ds = _read_ct()
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ds.ReferencedImageSequence = Sequence([ref])
    src = Dataset()
    src.ReferencedSOPClassUID = ds.SOPClassUID
    src.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ds.SourceImageSequence = Sequence([src])
    result = deidentify_dataset(ds, KEY)
    out = result.dataset
    new_sop = out.SOPInstanceUID
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == new_sop
    assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == new_sop
    assert out.ReferencedImageSequence[0].ReferencedSOPClassUID == ds.SOPClassUID
    assert out.file_meta.MediaStorageSOPInstanceUID == new_sop
    paths = {c.path for c in result.changes}
    assert "ReferencedImageSequence[0].ReferencedSOPInstanceUID" in paths


@needs_ct_small
def test_patient_identity_and_method_codes() -> None:
    out = deidentify_dataset(_read_ct(), KEY).dataset
    assert out.PatientIdentityRemoved == "YES"
    codes = {(i.CodeValue, i.CodingSchemeDesignator, i.CodeMeaning)
             for i in out.DeidentificationMethodCodeSequence}
    assert codes == {
        ("113100", "DCM", "Basic Application Confidentiality Profile"),
        ("113107", "DCM", "Retain Longitudinal Temporal Information Modified Dates Option"),
        ("113108", "DCM", "Retain Patient Characteristics Option"),
        ("113105", "DCM", "Clean Descriptors Option"),
    }
    assert "Basic Application Confidentiality Profile" in out.DeidentificationMethod
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert out.file_meta.ImplementationVersionName == "MEDASSIST_DEID"
    assert "SourceApplicationEntityTitle" not in out.file_meta

    basic_only = DeidOptions(retain_longitudinal_modified_dates=False,
                             retain_patient_characteristics=False, clean_descriptors=False)
    out2 = deidentify_dataset(_read_ct(), KEY, basic_only).dataset
    assert [i.CodeValue for i in out2.DeidentificationMethodCodeSequence] == ["113100"]
    assert out2.LongitudinalTemporalInformationModified == "REMOVED"


# --------------------------------------------------------------------------------------------
# UIDs
# --------------------------------------------------------------------------------------------


@needs_lung
def test_uids_consistent_across_a_series() -> None:
    files = sorted(LUNG.glob("*.dcm"))[:5]
    assert len(files) == 5
    sources = [pydicom.dcmread(f) for f in files]
    outs = [deidentify_dataset(ds, KEY).dataset for ds in sources]
    for attr in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID"):
        assert len({str(o.get(attr)) for o in outs}) == 1, attr
    sops = [str(o.SOPInstanceUID) for o in outs]
    assert len(set(sops)) == 5
    for o, s in zip(outs, sources, strict=True):
        assert o.SOPInstanceUID != s.SOPInstanceUID
        assert o.StudyInstanceUID != s.StudyInstanceUID
        assert o.file_meta.MediaStorageSOPInstanceUID == o.SOPInstanceUID
        for uid in (o.StudyInstanceUID, o.SeriesInstanceUID, o.SOPInstanceUID):
            assert is_valid_uid(str(uid)) and str(uid).startswith("2.25.")
    again = [deidentify_dataset(ds, KEY).dataset for ds in sources]
    assert [str(o.SOPInstanceUID) for o in again] == sops
    other = [deidentify_dataset(ds, KEY2).dataset for ds in sources]
    assert not {str(o.SOPInstanceUID) for o in other} & set(sops)
    assert other[0].StudyInstanceUID != outs[0].StudyInstanceUID
    assert other[0].PatientID != outs[0].PatientID


# --------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------


@needs_ct_small
@needs_j2kr
@pytest.mark.parametrize("src", [CT_SMALL, J2KR], ids=["uncompressed", "j2k-lossless"])
def test_pixel_data_byte_identical(src: Path, tmp_path: Path) -> None:
    before = pydicom.dcmread(src)
    dst = tmp_path / "out.dcm"
    deidentify_file(src, dst, KEY)
    after = pydicom.dcmread(dst)
    assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
    assert after.PixelData == before.PixelData
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
    assert dst.read_bytes()[:132] == b"\x00" * 128 + b"DICM"  # preamble cleared
    assert [p.name for p in tmp_path.iterdir()] == ["out.dcm"]  # no temp file left behind


@needs_ct_small
def test_burned_in_annotation_refused(tmp_path: Path) -> None:
    ds = _read_ct()
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotationError, match="clean_pixels"):
        deidentify_dataset(ds, KEY)

    sc = _read_ct()
    sc.SOPClassUID = SC_CLASS
    with pytest.raises(BurnedInAnnotationError, match="Secondary Capture"):
        deidentify_dataset(sc, KEY)
    sc.BurnedInAnnotation = "NO"
    assert deidentify_dataset(sc, KEY).dataset.BurnedInAnnotation == "NO"

    src = tmp_path / "burned.dcm"
    ds.save_as(src, enforce_file_format=True)
    with pytest.raises(BurnedInAnnotationError) as info:
        deidentify_file(src, tmp_path / "out.dcm", KEY)
    assert str(src) in str(info.value)
    assert not (tmp_path / "out.dcm").exists()


@needs_ct_small
@needs_j2kr
def test_burned_in_annotation_cleaned_when_asked() -> None:
    ds = _read_ct()
    ds.BurnedInAnnotation = "YES"
    opts = DeidOptions(clean_pixels=True, pixel_clean_regions=((0, 0, 20, 10),))
    result = deidentify_dataset(ds, KEY, opts)
    out = result.dataset
    arr = out.pixel_array
    assert np.all(arr[:10, :20] == arr.min())
    assert np.array_equal(arr[10:, 20:], ds.pixel_array[10:, 20:])
    assert out.BurnedInAnnotation == "NO"
    assert "burned_in_annotation_cleaned" in result.flags
    assert "113101" in {i.CodeValue for i in out.DeidentificationMethodCodeSequence}

    comp = pydicom.dcmread(J2KR)
    comp.BurnedInAnnotation = "YES"
    out2 = deidentify_dataset(comp, KEY, DeidOptions(clean_pixels=True)).dataset
    assert not out2.file_meta.TransferSyntaxUID.is_compressed
    assert np.ptp(out2.pixel_array) == 0
    assert comp.file_meta.TransferSyntaxUID.is_compressed  # input untouched


# --------------------------------------------------------------------------------------------
# Options: dates, characteristics, descriptors, private tags
# --------------------------------------------------------------------------------------------


@needs_ct_small
def test_dates_shift_consistently_and_characteristics_are_kept() -> None:
    ds = _read_ct()
    ds.StudyDate = "20200110"
    ds.AcquisitionDate = "20200127"  # 17 days later
    ds.AcquisitionDateTime = "20200127083015.123456+0100"
    ds.PatientSex = "F"
    ds.PatientAge = "063Y"
    result = deidentify_dataset(ds, KEY)
    out = result.dataset
    shift = result.date_shift_days
    assert -DATE_SHIFT_MAX_DAYS <= shift <= -DATE_SHIFT_MIN_DAYS

    def as_date(text: str) -> date:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))

    study, acq = as_date(out.StudyDate), as_date(out.AcquisitionDate)
    assert (acq - study).days == 17
    assert (study - date(2020, 1, 10)).days == shift
    assert out.AcquisitionDateTime == out.AcquisitionDate + "083015.123456+0100"
    assert out.StudyTime == ds.StudyTime  # times of day are kept
    assert out.PatientSex == "F" and out.PatientAge == "063Y"
    assert out.PatientBirthDate == ""

    # Same patient, another file: same shift and pseudonym.
    again = deidentify_dataset(_read_ct(), KEY)
    assert again.date_shift_days == shift
    assert again.pseudo_patient_id == result.pseudo_patient_id

    off = DeidOptions(retain_longitudinal_modified_dates=False,
                      retain_patient_characteristics=False)
    out2 = deidentify_dataset(ds, KEY, off).dataset
    assert out2.StudyDate == "" and out2.get("AcquisitionDate", "") == ""
    assert "SeriesDate" not in out2
    assert out2.PatientSex == "" and "PatientAge" not in out2


@needs_ct_small
def test_unparseable_date_is_removed_and_flagged() -> None:
    ds = _read_ct()
    with pytest.warns(UserWarning, match="Invalid value for VR DA"):
        ds.add_new(0x00080021, "DA", "2019-13-45")
    result = deidentify_dataset(ds, KEY)
    assert "SeriesDate" not in result.dataset
    assert "unparseable_date_removed" in result.flags


@pytest.mark.parametrize(
    ("text", "safe"),
    [
        ("CT CHEST W/O CONTRAST", True),
        ("Chest 1.25mm B30f", True),
        ("AXIAL 5.0 SOFT TISSUE", True),
        ("e+1", True),
        ("", True),
        ("JOHN SMITH", False),
        ("CT chest follow up 2021-03-04", False),
        ("MRN 12345678", False),
        ("Dr. Who abdomen", False),
        ("DOE^JANE", False),
        ("CT HEAD 2019", False),
        ("ZZPHI0001Q", False),
    ],
)
def test_is_safe_descriptor(text: str, safe: bool) -> None:
    assert is_safe_descriptor(text) is safe


@needs_ct_small
def test_clean_descriptors_option() -> None:
    ds = _read_ct()
    ds.SeriesDescription = "AXIAL 5.0 SOFT TISSUE"
    ds.StudyDescription = "CT chest for John Smith"
    ds.ProtocolName = "ROUTINE CHEST"
    out = deidentify_dataset(ds, KEY).dataset
    assert out.SeriesDescription == "AXIAL 5.0 SOFT TISSUE"
    assert out.ProtocolName == "ROUTINE CHEST"
    assert "StudyDescription" not in out
    off = deidentify_dataset(ds, KEY, DeidOptions(clean_descriptors=False)).dataset
    assert "SeriesDescription" not in off and "ProtocolName" not in off


@needs_ct_small
def test_private_tags_can_be_retained_with_a_flag() -> None:
    result = deidentify_dataset(_read_ct(), KEY, DeidOptions(remove_private_tags=False))
    assert any(e.tag.is_private for e in result.dataset)
    assert "private_tags_retained" in result.flags


@needs_ct_small
def test_input_dataset_not_mutated() -> None:
    ds, _ = _planted_ct()
    snapshot = copy.deepcopy(ds)
    before = _all_bytes(ds)
    deidentify_dataset(ds, KEY)
    assert ds == snapshot
    assert _all_bytes(ds) == before


@needs_ct_small
def test_logs_carry_no_phi(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    ds, planted = _planted_ct()
    original = _read_ct()
    src = tmp_path / "in"
    src.mkdir()
    burned = copy.deepcopy(ds)
    burned.BurnedInAnnotation = "YES"
    burned.SOPInstanceUID = _uid(9999)
    burned.save_as(src / "burned.dcm", enforce_file_format=True)
    # An invalid value makes pydicom warn, quoting it, unless de-identification quiets it.
    ds[0x00081167] = DataElement(0x00081167, "UI", "ZZPHI.bad.uid", validation_mode=IGNORE)
    ds.save_as(src / "planted.dcm", enforce_file_format=True)
    (src / "notes.txt").write_text("not dicom")
    caplog.clear()  # only what de-identification logs counts
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deidentify_dataset(ds, KEY)
        report = deidentify_path(src, tmp_path / "out", KEY)
        DeidKey.generate().save(tmp_path / "k.key")
        DeidKey.from_file(tmp_path / "k.key")
    assert report.written and report.skipped
    text = caplog.text
    assert caplog.records  # something was logged
    assert "ZZPHI" not in text
    assert UID_ROOT not in text
    for value in planted["dates"]:
        assert value not in text
    for value in (str(original.StudyInstanceUID), str(original.SOPInstanceUID), "1CT1"):
        assert value not in text
    assert str(src) not in text  # source paths may be identifying too
    assert not [w for w in caught if "ZZPHI" in str(w.message)]
    blob = json.dumps(report.to_json())
    assert "ZZPHI" not in blob and UID_ROOT not in blob


# --------------------------------------------------------------------------------------------
# Files and folders
# --------------------------------------------------------------------------------------------


@needs_lung
def test_deidentify_path_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    files = sorted(LUNG.glob("*.dcm"))[:3]
    shutil.copy(files[0], src / "a.dcm")
    shutil.copy(files[1], src / "sub" / "b.dcm")
    shutil.copy(files[2], src / "sub" / "c")  # no extension: still DICOM
    (src / "README.txt").write_text("a note, not DICOM")
    (src / "empty.dcm").write_bytes(b"")
    (src / "truncated.dcm").write_bytes(files[0].read_bytes()[:300])
    out = tmp_path / "out"

    report = deidentify_path(src, out, KEY)
    data = report.to_json()
    json.dumps(data)  # serialisable
    assert data["counts"]["written"] == 3
    assert data["counts"]["files_seen"] == 6
    skipped = {s["source"]: s["reason"] for s in data["skipped"]}
    assert set(skipped) == {"README.txt", "empty.dcm", "truncated.dcm"}
    assert all(reason for reason in skipped.values())

    written = sorted(out.rglob("*.dcm"))
    assert len(written) == 3
    for path in written:
        ds = pydicom.dcmread(path)
        rel = path.relative_to(out).parts
        assert rel == (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID + ".dcm")
        assert ds.PatientIdentityRemoved == "YES"
        assert b"Lung_Dx-A0001" not in path.read_bytes()
    assert len({p.parent for p in written}) == 1
    assert not list(out.rglob("*.tmp"))
    for entry in data["files"]:
        for change in entry["changes"]:
            assert set(change) == {"tag", "keyword", "action", "path"}
    assert "date_shift_days" not in json.dumps(data)

    hidden = report.to_json(include_source_paths=False)
    assert all(s["source"].startswith("#") for s in hidden["skipped"])

    # A single file works too, and re-running gives the same output names.
    again = deidentify_path(src / "a.dcm", tmp_path / "out2", KEY)
    assert again.written[0].output == report.written[0].output


def test_deidentify_path_missing_input_or_same_output(tmp_path: Path) -> None:
    with pytest.raises(DeidentificationError, match="not found"):
        deidentify_path(tmp_path / "nope", tmp_path / "out", KEY)
    with pytest.raises(DeidentificationError, match="output folder is the input folder"):
        deidentify_path(tmp_path, tmp_path, KEY)


def test_deidentify_file_rejects_non_dicom(tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("hello")
    with pytest.raises(UnreadableFileError) as info:
        deidentify_file(src, tmp_path / "out.dcm", KEY)
    assert str(src) in str(info.value)
    assert not (tmp_path / "out.dcm").exists()


# --------------------------------------------------------------------------------------------
# The key
# --------------------------------------------------------------------------------------------


def test_deid_key_roundtrip_and_secrecy(tmp_path: Path) -> None:
    key = DeidKey.generate()
    path = tmp_path / "deid.key"
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert DeidKey.from_file(path) == key
    secret_hex = path.read_text().strip()
    assert secret_hex not in repr(key) and secret_hex not in str(key)
    assert "hidden" in repr(key)
    with pytest.raises(DeidentificationError, match="already exists"):
        key.save(path)
    key.save(path, overwrite=True)

    raw = tmp_path / "raw.key"
    raw.write_bytes(bytes(range(40)))
    assert DeidKey.from_file(raw) == DeidKey(bytes(range(40)))

    short = tmp_path / "short.key"
    short.write_text("abcd" * 4)
    with pytest.raises(DeidentificationError, match="at least 32"):
        DeidKey.from_file(short)
    with pytest.raises(DeidentificationError, match="not found"):
        DeidKey.from_file(tmp_path / "missing.key")
    with pytest.raises(DeidentificationError):
        DeidKey(b"short")


def test_options_validation_and_yaml(tmp_path: Path) -> None:
    with pytest.raises(DeidentificationError):
        DeidOptions(pixel_clean_regions=((0, 0, 0, 5),))
    cfg = tmp_path / "deid.yaml"
    cfg.write_text(
        "deid:\n  clean_descriptors: false\n  pixel_clean_regions: [[0, 0, 100, 40]]\n"
    )
    opts = load_deid_options(cfg)
    assert opts.clean_descriptors is False
    assert opts.pixel_clean_regions == ((0, 0, 100, 40),)
    shipped = REPO / "configs" / "deid.yaml"
    if shipped.exists():
        assert load_deid_options(shipped) == DeidOptions()


@needs_ct_small
def test_output_folder_inside_input_is_not_reread(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(CT_SMALL, src / "ct.dcm")
    out = src / "deid"
    first = deidentify_path(src, out, KEY)
    second = deidentify_path(src, out, KEY)
    assert len(first.written) == len(second.written) == 1
    assert not second.skipped
    assert len(list(out.rglob("*.dcm"))) == 1
