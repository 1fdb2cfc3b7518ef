# mypy: disable-error-code="union-attr,attr-defined,index"
"""Exports: DICOM SR (TID 1500) read back with highdicom and pydicom, FHIR validated with
fhir.resources, text and PDF with the DRAFT watermark and the signature manifestation."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
import yaml
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from sqlalchemy import select

from medassist import reports
from medassist.audit import Actor
from medassist.draft import ReportDraft
from medassist.errors import ExportError
from medassist.export import export_report
from medassist.export.codes import load_codes
from medassist.export.sr import check_sr, group_source_uids, measurement_groups
from medassist.review import BLOCK, decision_line
from medassist.storage import AuditEvent
from tests.dicom_factory import axial_positions, write_series

from .conftest import REPO_ROOT, Db
from .factories import (
    DRAFT,
    PASSWORD,
    SERIES_UID,
    STUDY_UID,
    add_user,
    decided,
    draft_dict,
)


def _walk(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(_walk(item))
    return out


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("ct")
    # as large as the drafts' evidence boxes need (factories.DRAFT: rows 100-112, columns
    # 150-162)
    return write_series(out, axial_positions(64, 2.0), rows=192, cols=192, study_uid=STUDY_UID,
                        series_uid=SERIES_UID)


def _stored(db: Db, signed: bool, draft: dict[str, Any] = DRAFT) -> tuple[int, Actor]:
    with db.factory.begin() as s:
        doc = add_user(s, "carol", display_name="Dr. Carol Chen")
        rid = reports.store_draft(s, ReportDraft.from_dict(draft), study_uid=STUDY_UID,
                                  patient_pseudo_id="PSEUDO-0002").id
        if signed:  # every AI finding accepted as drafted, as signing needs
            text = reports.get_report(s, rid).text
            reports.edit_report(s, rid, doc, decided(text, draft), 1)
            reports.submit_for_review(s, rid, doc, 2)
            reports.sign_report(s, rid, doc, PASSWORD, 3)
    return rid, doc


def test_every_label_has_codes() -> None:
    vocab = yaml.safe_load((REPO_ROOT / "configs" / "findings.yaml").read_text())["findings"]
    codes = load_codes()
    assert set(vocab) <= set(codes.findings), set(vocab) - set(codes.findings)
    assert all(c.finding.scheme == "SCT" for c in codes.findings.values())


@pytest.mark.parametrize("signed", [False, True])
def test_sr_round_trip(db: Db, tmp_path: Path, ct_files: list[Path], signed: bool) -> None:
    rid, doc = _stored(db, signed)
    out = tmp_path / "report.dcm"
    with db.factory.begin() as s:
        export_report(s, rid, doc, "sr", out, sources=[str(p) for p in ct_files])
    sr = check_sr(out)
    ds = pydicom.dcmread(out)
    assert ds.VerificationFlag == ("VERIFIED" if signed else "UNVERIFIED")
    assert ds.CompletionFlag == "COMPLETE"
    if signed:
        assert ds.VerifyingObserverSequence[0].VerifyingObserverName == "Chen^Carol"
    assert ds.StudyInstanceUID == STUDY_UID
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    sr2 = hd.sr.srread(out)
    assert sr2.SOPInstanceUID == sr.SOPInstanceUID
    mgroups = measurement_groups(ds)
    assert len(mgroups) == 3
    g0 = mgroups[0]
    assert g0.finding_type is not None and g0.finding_type.value == "786838002"
    algo = [i.TextValue for i in _walk(ds) if i.ConceptNameCodeSequence[0].CodeValue == "111001"]
    assert algo and set(algo) == {"medassist-fusion"}  # Algorithm Name
    sizes = [m for m in g0.get_measurements() if m.name.value == "81827009"]
    assert sizes and sizes[0].value == 9.0
    assert sizes[0].unit.value == "mm"
    evals = {e.name.value: e.value.value for e in g0.get_qualitative_evaluations()}
    assert evals["786838002"] == "52101004"  # present
    assert evals["272741003"] == "24028007"  # right
    absent = mgroups[2].get_qualitative_evaluations()[0]
    assert absent.value.value == "2667000"
    # image references point at the evidence slices' instances
    sop_by_index = [pydicom.dcmread(p).SOPInstanceUID for p in ct_files]
    refs = group_source_uids(g0)
    assert refs == [sop_by_index[k] for k in (40, 41, 42)]
    assert group_source_uids(mgroups[1]) == [sop_by_index[60]]  # no box: TID 1501
    assert group_source_uids(mgroups[2]) == []
    ev = {i.ReferencedSOPInstanceUID for e in ds.CurrentRequestedProcedureEvidenceSequence
          for se in e.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert set(refs) <= ev
    _dciodvfy_clean(out)


def test_the_evidence_box_is_drawn_on_each_evidence_slice(db: Db, tmp_path: Path,
                                                           ct_files: list[Path]) -> None:
    """A finding with an evidence box is a TID 1411 group whose regions are the box, a closed
    rectangle around its rows and columns (pixel edges: the top left corner of the first
    pixel is 0, 0), on each evidence slice; one without a box stays TID 1501."""
    groups, _, sr_out = _sr_and_fhir(db, draft_dict(), tmp_path, ct_files)
    assert [type(g).__name__ for g in groups] == [
        "VolumetricROIMeasurementsAndQualitativeEvaluations",
        "MeasurementsAndQualitativeEvaluations", "MeasurementsAndQualitativeEvaluations"]
    regions = groups[0].roi
    assert isinstance(regions, list) and len(regions) == 3
    for r in regions:
        assert r.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        assert r.value.tolist() == [[150.0, 100.0], [163.0, 100.0], [163.0, 113.0],
                                    [150.0, 113.0], [150.0, 100.0]]
    # the draft's box: rows 100-112, columns 150-162 of slices 40-42
    assert groups[0].get_qualitative_evaluations()[0].value.value == "52101004"
    _dciodvfy_clean(sr_out)


def test_an_evidence_box_outside_the_slices_is_refused(db: Db, tmp_path: Path,
                                                       ct_files: list[Path]) -> None:
    d = draft_dict()
    d["findings"][0]["evidence"]["box_voxels"] = [40, 100, 150, 42, 112, 192]
    rid, doc = _stored(db, False, d)
    with pytest.raises(ExportError, match=r"finding 0 \(lung_nodule\).*outside slice 40"), \
            db.factory.begin() as s:
        export_report(s, rid, doc, "sr", tmp_path / "x.dcm", sources=[str(p) for p in ct_files])


def _dciodvfy_clean(path: Path) -> None:
    """dicom3tools' dciodvfy (installed by `make test`): no IOD errors."""
    import shutil
    import subprocess

    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy missing: `make services` installs the Debian package dicom3tools"
    res = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=60,
                         check=False)
    report = res.stdout + res.stderr
    errors = [ln for ln in report.splitlines() if ln.startswith("Error")]
    assert not errors, report


def _sr_and_fhir(db: Db, draft: dict[str, Any], tmp_path: Path, ct_files: list[Path]
                 ) -> tuple[list[Any], dict[str, Any], Path]:
    """The SR's measurement groups, the FHIR report's contained resources by id (validated)
    and the SR's path, for ``draft`` stored unsigned."""
    rid, doc = _stored(db, False, draft)
    sr_out, fhir_out = tmp_path / "r.dcm", tmp_path / "r.json"
    with db.factory.begin() as s:
        export_report(s, rid, doc, "sr", sr_out, sources=[str(p) for p in ct_files])
        export_report(s, rid, doc, "fhir", fhir_out)
    groups = measurement_groups(pydicom.dcmread(sr_out))
    data = json.loads(fhir_out.read_text())
    DiagnosticReport.model_validate(data)
    return list(groups), {c["id"]: c for c in data["contained"]}, sr_out


def test_a_finding_not_assessed_is_exported_as_not_evaluated(db: Db, tmp_path: Path,
                                                               ct_files: list[Path]) -> None:
    """A finding the model does not assess (flag not_assessed) is "Not Evaluated" (SCT
    373121007) in the SR and in FHIR, not "Absent"."""
    d = draft_dict()
    d["findings"][2] = {**d["findings"][2], "sentence": "Pneumothorax: not assessed by this "
                        "model.", "flags": ["not_assessed"]}
    groups, contained, sr_out = _sr_and_fhir(db, d, tmp_path, ct_files)
    values = [g.get_qualitative_evaluations()[0].value.value for g in groups]
    assert values == ["52101004", "52101004", "373121007"]  # present, present, not evaluated
    assert contained["finding-3"]["valueCodeableConcept"]["coding"][0]["code"] == "373121007"
    assert contained["finding-1"]["valueCodeableConcept"]["coding"][0]["code"] == "52101004"
    _dciodvfy_clean(sr_out)


def test_a_measured_ratio_is_coded_and_small_ones_not_assessed_are_not_evaluated(
        db: Db, tmp_path: Path, ct_files: list[Path]) -> None:
    """A cardiomegaly's measured cardiothoracic ratio (draft ``ratio``) is a measurement of
    the SR group (no units) and a component of the FHIR Observation; a nodule not called by a
    detector that assesses only larger ones (flag small_not_assessed) is "Not Evaluated",
    while a called one stays "Present"."""
    d = draft_dict()
    d["findings"][1] = {**d["findings"][1], "label": "cardiomegaly", "laterality": None,
                        "location": None, "size_mm": None, "ratio": 0.62,
                        "sentence": "Cardiomegaly (heart), cardiothoracic ratio 0.62 measured "
                                    "on the CT.", "flags": ["ratio_measured"]}
    d["findings"][2] = {**d["findings"][2], "label": "lung_nodule", "present": False,
                        "flags": ["small_not_assessed"]}
    d["findings"][0] = {**d["findings"][0], "flags": ["small_not_assessed"]}
    groups, contained, sr_out = _sr_and_fhir(db, d, tmp_path, ct_files)
    values = [g.get_qualitative_evaluations()[0].value.value for g in groups]
    assert values == ["52101004", "52101004", "373121007"]
    ratios = [(m.value, m.unit.value) for m in groups[1].get_measurements()
              if m.name.value == "MA-CTR"]
    assert ratios == [(0.62, "1")]
    assert [m.method.value for m in groups[1].get_measurements()
            if m.name.value == "MA-CTR"] == ["258104002"]  # measured
    assert all(m.name.value != "MA-CTR" for g in (groups[0], groups[2])
               for m in g.get_measurements())
    comps = {c["code"]["coding"][0]["code"]: c["valueQuantity"]
             for c in contained["finding-2"]["component"] if "coding" in c["code"]}
    assert comps["MA-CTR"]["value"] == 0.62 and comps["MA-CTR"]["code"] == "1"
    assert contained["finding-3"]["valueCodeableConcept"]["coding"][0]["code"] == "373121007"
    _dciodvfy_clean(sr_out)


def test_the_side_evidence_is_exported_with_the_side(db: Db, tmp_path: Path,
                                                     ct_files: list[Path]) -> None:
    """A finding's per-side evidence (draft ``side_evidence``; flag side_uncertain where it
    is near equal) is two measurements of its SR group and two components of its FHIR
    Observation (private codes, no units); a finding without it has none."""
    d = draft_dict()
    d["findings"][0] = {**d["findings"][0], "flags": ["side_uncertain"],
                        "side_evidence": {"left": 0.143, "right": 0.163}}
    groups, contained, sr_out = _sr_and_fhir(db, d, tmp_path, ct_files)
    sides = [[(m.name.value, m.value, m.unit.value) for m in g.get_measurements()
              if m.name.value.startswith("MA-PROB-")] for g in groups]
    assert sides == [[("MA-PROB-L", 0.143, "1"), ("MA-PROB-R", 0.163, "1")], [], []]
    comps = [[(c["code"]["coding"][0]["code"], c["valueQuantity"]["value"])
              for c in contained[f"finding-{i}"]["component"]
              if c["code"].get("coding", [{}])[0].get("code", "").startswith("MA-PROB-")]
             for i in (1, 2, 3)]
    assert comps == [[("MA-PROB-L", 0.143), ("MA-PROB-R", 0.163)], [], []]
    _dciodvfy_clean(sr_out)


def test_a_size_says_whether_it_was_measured_on_the_ct_or_estimated(
        db: Db, tmp_path: Path, ct_files: list[Path]) -> None:
    """A size measured on the CT (flag size_measured) is coded with the measurement method
    "Measured" (SCT 258104002) in the SR, the size head's estimate "Estimated" (414135002);
    the FHIR component's text says which."""
    d = draft_dict()
    d["findings"][0] = {**d["findings"][0], "flags": ["size_measured"],
                        "size_axes_mm": [52.0, 41.5, 48.0]}
    groups, contained, sr_out = _sr_and_fhir(db, d, tmp_path, ct_files)
    # the nodule's diameter (SCT 81827009), the pleural effusion's depth (131197000)
    sizes = ("81827009", "131197000")
    methods = [[m.method.value for m in g.get_measurements() if m.name.value in sizes]
               for g in groups]
    assert methods == [["258104002"], ["414135002"], []]  # measured, estimated, no size
    texts = [[c["code"]["text"] for c in contained[f"finding-{i}"]["component"]
              if c["code"].get("coding", [{}])[0].get("code") in sizes]
             for i in (1, 2, 3)]
    assert texts == [["Diameter (measured)"], ["Depth (estimated)"], []]
    # the measured lesion's axial long and short axis (SCT 103339001, 103340004), measured
    axes = [[(m.name.value, m.value, m.unit.value, m.method.value) for m in g.get_measurements()
             if m.name.value in ("103339001", "103340004")] for g in groups]
    assert axes == [[("103339001", 52.0, "mm", "258104002"),
                     ("103340004", 41.5, "mm", "258104002")], [], []]
    comps = [(c["code"]["coding"][0]["code"], c["code"]["text"], c["valueQuantity"]["value"])
             for c in contained["finding-1"]["component"]
             if c["code"].get("coding", [{}])[0].get("code") in ("103339001", "103340004")]
    assert comps == [("103339001", "Long axis (axial, measured)", 52.0),
                     ("103340004", "Short axis (axial, measured)", 41.5)]
    assert not any(c["code"].get("coding", [{}])[0].get("code") == "103339001"
                   for c in contained["finding-2"]["component"])
    _dciodvfy_clean(sr_out)


def test_sr_sources_read_from_zip_members(db: Db, tmp_path: Path, ct_files: list[Path]
                                          ) -> None:
    """Sources named ``archive.zip!member`` (a study batched from a zip file, as dicom_io
    names its instances) are read from the archive through ``dicom_io.volume.read_source``:
    the SR is the one the files give (same evidence, same slice references), whatever the
    members' order; a missing member, a non-DICOM member and a missing archive are
    ExportErrors naming the source."""
    import zipfile

    from medassist.export.sr import read_source_dataset

    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("README.txt", "not DICOM\n")
        for p in reversed(ct_files):  # stored out of slice order
            zf.write(p, f"ct/{p.name}")
    members = [f"{archive}!ct/{p.name}" for p in ct_files]
    ds = read_source_dataset(members[40])
    assert ds.SOPInstanceUID == pydicom.dcmread(ct_files[40]).SOPInstanceUID
    assert "PixelData" not in ds
    rid, doc = _stored(db, True)
    from_zip, from_files = tmp_path / "zip.dcm", tmp_path / "files.dcm"
    with db.factory.begin() as s:
        export_report(s, rid, doc, "sr", from_zip, sources=members[::-1])
        export_report(s, rid, doc, "sr", from_files, sources=[str(p) for p in ct_files])

    def refs(path: Path) -> tuple[set[str], list[list[str]]]:
        d = pydicom.dcmread(path)
        ev = {i.ReferencedSOPInstanceUID for e in d.CurrentRequestedProcedureEvidenceSequence
              for se in e.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
        return ev, [group_source_uids(g) for g in measurement_groups(d)]

    check_sr(from_zip)
    assert pydicom.dcmread(from_zip).StudyInstanceUID == STUDY_UID
    sop_by_index = [pydicom.dcmread(p).SOPInstanceUID for p in ct_files]
    assert refs(from_zip) == refs(from_files)
    assert refs(from_zip)[1][0] == [sop_by_index[k] for k in (40, 41, 42)]
    for bad, why in ((f"{archive}!ct/missing.dcm", "cannot read the source instance"),
                     (f"{archive}!README.txt", "is not readable DICOM"),
                     (f"{tmp_path / 'gone.zip'}!ct/{ct_files[0].name}", "cannot read")):
        with pytest.raises(ExportError, match=why) as err:
            read_source_dataset(bad)
        assert bad in str(err.value)
    with pytest.raises(ExportError, match=r"README\.txt"), db.factory.begin() as s:
        export_report(s, rid, doc, "sr", tmp_path / "x.dcm",
                      sources=[*members, f"{archive}!README.txt"])


def test_sr_refuses_wrong_series(db: Db, tmp_path: Path) -> None:
    rid, doc = _stored(db, False)
    few = write_series(tmp_path / "few", axial_positions(5, 2.0), rows=4, cols=4,
                       study_uid=STUDY_UID)
    with pytest.raises(ExportError, match="cites slice 40"), db.factory.begin() as s:
        export_report(s, rid, doc, "sr", tmp_path / "x.dcm", sources=few)


@pytest.mark.parametrize("signed", [False, True])
def test_fhir(db: Db, tmp_path: Path, signed: bool) -> None:
    rid, doc = _stored(db, signed)
    out = tmp_path / "r.json"
    with db.factory.begin() as s:
        export_report(s, rid, doc, "fhir", out)
    data = json.loads(out.read_text())
    dr = DiagnosticReport.model_validate(data)
    assert dr.status == ("final" if signed else "preliminary")
    assert "Right upper lobe nodule" in (dr.conclusion or "")
    contained = {c.id: c for c in dr.contained or []}
    assert contained["study"].get_resource_type() == "ImagingStudy"
    assert [r.reference for r in dr.imagingStudy or []] == ["#study"]
    obs = contained["finding-1"]
    assert obs.code.coding[0].system == "http://snomed.info/sct"
    assert obs.code.coding[0].code == "786838002"
    assert len(dr.result or []) == 3
    text = base64.b64decode(data["presentedForm"][0]["data"]).decode()
    assert "IMPRESSION:" in text
    assert dr.subject is not None and dr.subject.identifier.value == "PSEUDO-0002"
    # where the model saw each finding: the series it was drafted from, and the evidence
    # box as ranges in patient LPS mm, the slices as a range of indices (R4 has no image
    # region resource); a finding with no evidence has neither
    series = contained["study"].series or []
    assert [(x.uid, x.modality.code) for x in series] == [(SERIES_UID, "CT")]
    ranges = {c.code.text: (c.valueRange.low.value, c.valueRange.high.value,
                            c.valueRange.low.unit)
              for c in obs.component or [] if c.valueRange is not None}
    assert ranges == {
        "Evidence slices (index in the series' slice order)": (40, 42, "1"),
        "Evidence box, x (DICOM patient LPS, mm)": (40.0, 49.0, "mm"),
        "Evidence box, y (DICOM patient LPS, mm)": (-30.0, -21.0, "mm"),
        "Evidence box, z (DICOM patient LPS, mm)": (-120.5, -117.0, "mm")}
    assert [r.reference for r in obs.derivedFrom or []] == ["#study"]
    effusion = contained["finding-2"]  # one evidence slice, no box
    assert [(c.code.text, c.valueRange.low.value) for c in effusion.component or []
            if c.valueRange is not None] == [
        ("Evidence slices (index in the series' slice order)", 60)]
    absent = contained["finding-3"]
    assert absent.derivedFrom is None
    assert not [c for c in absent.component or [] if c.valueRange is not None]
    if signed:
        assert dr.resultsInterpreter[0].display == "Dr. Carol Chen"


@pytest.mark.parametrize("signed", [False, True])
def test_fhir_with_an_empty_impression(db: Db, tmp_path: Path, signed: bool) -> None:
    """A model may write no impression: the DiagnosticReport leaves `conclusion` out (FHIR
    strings must not be empty) instead of failing validation."""
    import copy

    draft = copy.deepcopy(DRAFT)
    draft["sections"]["impression"] = ""
    with db.factory.begin() as s:
        doc = add_user(s, "carol", display_name="Dr. Carol Chen")
        rid = reports.store_draft(s, ReportDraft.from_dict(draft), study_uid=STUDY_UID,
                                  patient_pseudo_id="PSEUDO-0002").id
        if signed:
            text = reports.get_report(s, rid).text
            reports.edit_report(s, rid, doc, decided(text.split("IMPRESSION:")[0] +
                                                     "IMPRESSION:\n", draft), 1)
            reports.submit_for_review(s, rid, doc, 2)
            reports.sign_report(s, rid, doc, PASSWORD, 3)
    out = tmp_path / "r.json"
    with db.factory.begin() as s:
        export_report(s, rid, doc, "fhir", out)
    dr = DiagnosticReport.model_validate(json.loads(out.read_text()))
    assert dr.conclusion is None
    assert dr.status == ("final" if signed else "preliminary")


@pytest.mark.parametrize("signed", [False, True])
def test_text_and_pdf(db: Db, tmp_path: Path, signed: bool) -> None:
    rid, doc = _stored(db, signed)
    with db.factory.begin() as s:
        txt = export_report(s, rid, doc, "txt", tmp_path / "r.txt").read_text()
        pdf = export_report(s, rid, doc, "pdf", tmp_path / "r.pdf").read_bytes()
    assert pdf.startswith(b"%PDF")
    if signed:
        assert "DRAFT" not in txt
        assert "Signer:  Dr. Carol Chen" in txt and "Meaning: reviewed and approved" in txt
        assert "(UTC)" in txt
    else:
        assert txt.startswith("*** DRAFT") and "Signer:" not in txt
    # the watermark and manifestation are in the (uncompressed) page content
    from medassist.export.text import render_pdf

    with db.factory() as s:
        view = reports.report_view(s, reports.get_report(s, rid))
    raw = render_pdf(view, tmp_path / "raw.pdf", compress=False).read_bytes()
    assert (b"(DRAFT) Tj" in raw) is not signed
    assert (b"Signer:  Dr. Carol Chen" in raw) is signed
    with db.factory() as s:
        exports = s.scalars(select(AuditEvent.detail)
                            .where(AuditEvent.event_type == "EXPORT")).all()
    assert exports == ["format=txt", "format=pdf"]


def test_unknown_format(db: Db, tmp_path: Path) -> None:
    rid, doc = _stored(db, False)
    with pytest.raises(ExportError, match="unknown export format"), db.factory.begin() as s:
        export_report(s, rid, doc, "docx", tmp_path / "r")


def test_a_size_is_coded_as_what_it_measures(db: Db, tmp_path: Path,
                                             ct_files: list[Path]) -> None:
    """A finding's size_mm is coded with the CID 7470 linear-measurement concept of what it
    measures: a nodule's diameter, a pleural effusion's depth, and the thickness of a
    pericardial effusion's fluid band, found and measured on the CT (flags found_on_ct,
    size_measured), its width, with the method Measured; FHIR's component says the same."""
    d = draft_dict()
    d["findings"][2] = {
        "label": "pericardial_effusion", "present": True, "probability": 0.05,
        "laterality": "none", "location": "pericardium", "size_mm": 12.4,
        "sentence": "Pericardial effusion, 12 mm thick, measured on the CT.",
        "evidence": {"slices": [20, 21], "z_mm": [-150.0, -145.0],
                     "box_voxels": [20, 90, 100, 21, 130, 160],
                     "box_mm": [10.0, -20.0, -150.0, 60.0, 30.0, -145.0], "emr_spans": []},
        "flags": ["found_on_ct", "size_measured"]}
    groups, contained, sr_out = _sr_and_fhir(db, d, tmp_path, ct_files)
    names = [[(m.name.value, m.name.meaning, m.value) for m in g.get_measurements()
              if m.name.value != "MA-PROB"] for g in groups]
    assert names[1] == [("131197000", "Depth", 14.0)]
    assert names[2] == [("103355008", "Width", 12.4)]
    pe = next(m for m in groups[2].get_measurements() if m.name.value == "103355008")
    assert pe.method.value == "258104002"  # measured
    comp = [c for c in contained["finding-3"]["component"]
            if c["code"].get("coding", [{}])[0].get("code") == "103355008"]
    assert [c["code"]["text"] for c in comp] == ["Width (measured)"]
    assert comp[0]["valueQuantity"]["value"] == 12.4
    _dciodvfy_clean(sr_out)


def _reviewed(draft: dict[str, Any], lines: list[str]) -> str:
    """The draft's text with a reviewer's decision block under FINDINGS (as the UI writes
    it)."""
    text = ReportDraft.from_dict(draft).render_text()
    return text.replace("\n\nIMPRESSION:", "\n\n" + "\n".join([BLOCK, *lines]) +
                        "\n\nIMPRESSION:")


@pytest.mark.parametrize("signed", [False, True])
def test_the_exports_state_the_reviewers_decisions(db: Db, tmp_path: Path,
                                                    ct_files: list[Path], signed: bool) -> None:
    """The SR and FHIR state the findings as the report's text decided them, signed or not:
    a rejected finding is left out (the others keep the draft's numbering), a side and size
    the reviewer set are theirs (the size without the model's method or algorithm), their
    text is the Observation's note; a finding no one decided (a draft) or accepted stays as
    drafted."""
    text = _reviewed(DRAFT, [
        decision_line("lung_nodule", "edited", "left", 11.0, "An 11 mm nodule, left upper."),
        decision_line("pleural_effusion", "rejected", "left", 14.0, "")])
    if signed:  # signing needs every finding decided: the pneumothorax accepted as drafted
        text = decided(text)
    text = text.replace("2. Small left pleural effusion.", "2. No pleural effusion.")
    with db.factory.begin() as s:
        doc = add_user(s, "carol", display_name="Dr. Carol Chen")
        rid = reports.store_draft(s, ReportDraft.from_dict(DRAFT), study_uid=STUDY_UID,
                                  patient_pseudo_id="PSEUDO-0002").id
        reports.edit_report(s, rid, doc, text, 1)
        if signed:  # the narrative still states the draft's side, size and effusion
            reports.submit_for_review(s, rid, doc, 2)
            reports.sign_report(s, rid, doc, PASSWORD, 3, confirm_text=True)
    sr_out, fhir_out = tmp_path / "r.dcm", tmp_path / "r.json"
    with db.factory.begin() as s:
        export_report(s, rid, doc, "sr", sr_out, sources=[str(p) for p in ct_files])
        export_report(s, rid, doc, "fhir", fhir_out)
    ds = pydicom.dcmread(sr_out)
    assert ds.VerificationFlag == ("VERIFIED" if signed else "UNVERIFIED")
    groups = measurement_groups(ds)
    assert [str(g.tracking_identifier) for g in groups] == ["finding 1: lung_nodule",
                                                            "finding 3: pneumothorax"]
    evals = {e.name.value: e.value.value for e in groups[0].get_qualitative_evaluations()}
    assert evals["272741003"] == "7771000"  # left, the reviewer's (the model: right)
    sizes = [m for m in groups[0].get_measurements() if m.name.value == "81827009"]
    assert [(m.value, m.method) for m in sizes] == [(11.0, None)]

    def algorithms(m: Any) -> list[str]:
        return [i.TextValue for i in _walk(m[0]) if i.ConceptNameCodeSequence[0].CodeValue ==
                "111001"]  # Algorithm Name

    assert algorithms(sizes[0]) == []
    probs = [m for m in groups[0].get_measurements() if m.name.value == "MA-PROB"]
    assert algorithms(probs[0]) == ["medassist-fusion"]  # the probability stays the model's
    absent = groups[1].get_qualitative_evaluations()[0]
    assert absent.value.value == "2667000"  # the pneumothorax, undecided/accepted: as drafted
    data = json.loads(fhir_out.read_text())
    DiagnosticReport.model_validate(data)
    obs = {c["id"]: c for c in data["contained"] if c["resourceType"] == "Observation"}
    assert sorted(obs) == ["finding-1", "finding-3"]
    assert [r["reference"] for r in data["result"]] == ["#finding-1", "#finding-3"]
    assert obs["finding-1"]["note"] == [{"text": "An 11 mm nodule, left upper."}]
    comps = [(c["code"]["text"], c["valueQuantity"]["value"])
             for c in obs["finding-1"]["component"]
             if c["code"].get("coding", [{}])[0].get("code") == "81827009"]
    assert comps == [("Diameter (stated by the reviewer)", 11.0)]
    sides = [c["valueCodeableConcept"]["coding"][0]["code"]
             for c in obs["finding-1"]["component"]
             if c["code"].get("coding", [{}])[0].get("code") == "272741003"]
    assert sides == ["7771000"]  # Laterality: left, the reviewer's, as in the SR
    assert obs["finding-1"]["status"] == ("final" if signed else "preliminary")
    # the conclusion is the current text's impression, a preliminary report's too
    assert data["conclusion"] == "1. Right upper lobe nodule, 9 mm.\n2. No pleural effusion."
    _dciodvfy_clean(sr_out)


def test_an_uncertain_side_is_coded_once_a_reviewer_confirms_it(
        db: Db, tmp_path: Path, ct_files: list[Path]) -> None:
    """A side the draft flags side_uncertain is not coded as fact in the SR nor in FHIR (a
    Laterality component, as the SR's evaluation) while no one has decided the finding (its
    evidence, MA-PROB-L / MA-PROB-R, is); once the reviewer accepts it with that side, it
    is."""
    d = draft_dict()
    d["findings"][0] = {**d["findings"][0], "flags": ["side_uncertain"],
                        "side_evidence": {"left": 0.143, "right": 0.163}}

    def lateralities(text: str | None) -> tuple[list[list[str]], list[list[str]]]:
        """The SR groups' Laterality evaluations and the FHIR Observations' components."""
        with db.factory.begin() as s:
            doc = add_user(s, f"u{len(text or '')}", display_name="Dr. Carol Chen")
            rid = reports.store_draft(s, ReportDraft.from_dict(d), study_uid=STUDY_UID,
                                      patient_pseudo_id="PSEUDO-0002").id
            if text is not None:
                reports.edit_report(s, rid, doc, text, 1)
        out, fhir_out = tmp_path / f"r{rid}.dcm", tmp_path / f"r{rid}.json"
        with db.factory.begin() as s:
            export_report(s, rid, doc, "sr", out, sources=[str(p) for p in ct_files])
            export_report(s, rid, doc, "fhir", fhir_out)
        _dciodvfy_clean(out)
        groups = measurement_groups(pydicom.dcmread(out))
        assert [m.name.value for m in groups[0].get_measurements()
                if m.name.value.startswith("MA-PROB-")] == ["MA-PROB-L", "MA-PROB-R"]
        data = json.loads(fhir_out.read_text())
        DiagnosticReport.model_validate(data)
        return ([[e.value.value for e in g.get_qualitative_evaluations()
                  if e.name.value == "272741003"] for g in groups],
                [[c["valueCodeableConcept"]["coding"][0]["code"] for c in o["component"]
                  if c["code"].get("coding", [{}])[0].get("code") == "272741003"]
                 for o in data["contained"] if o["resourceType"] == "Observation"])

    # the effusion's left stays; the pneumothorax has no side
    assert lateralities(None) == ([[], ["7771000"], []],) * 2
    accepted = _reviewed(d, [decision_line("lung_nodule", "accepted", "right", 9.0,
                                           "A 9 mm solid nodule in the RUL.")])
    assert lateralities(accepted) == ([["24028007"], ["7771000"], []],) * 2


def test_a_report_whose_every_finding_was_rejected_has_no_sr(
        db: Db, tmp_path: Path, ct_files: list[Path]) -> None:
    """Every AI finding rejected: FHIR has no Observation and is valid; the SR, which needs
    one measurement group at least (TID 1500), is refused with the reason, nothing written."""
    text = _reviewed(DRAFT, [decision_line(f["label"], "rejected", "", None, "")
                             for f in DRAFT["findings"]])
    with db.factory.begin() as s:
        doc = add_user(s, "carol", display_name="Dr. Carol Chen")
        rid = reports.store_draft(s, ReportDraft.from_dict(DRAFT), study_uid=STUDY_UID,
                                  patient_pseudo_id="PSEUDO-0002").id
        reports.edit_report(s, rid, doc, text, 1)
        reports.submit_for_review(s, rid, doc, 2)
        # the draft's prose still states them: signed as written
        reports.sign_report(s, rid, doc, PASSWORD, 3, confirm_text=True)
    sr_out, fhir_out = tmp_path / "r.dcm", tmp_path / "r.json"
    with db.factory.begin() as s:
        export_report(s, rid, doc, "fhir", fhir_out)
        with pytest.raises(ExportError, match="rejected every AI finding"):
            export_report(s, rid, doc, "sr", sr_out, sources=[str(p) for p in ct_files])
    assert not sr_out.exists()
    data = json.loads(fhir_out.read_text())
    DiagnosticReport.model_validate(data)
    assert [c["resourceType"] for c in data["contained"]] == ["ImagingStudy"]
    assert "result" not in data
