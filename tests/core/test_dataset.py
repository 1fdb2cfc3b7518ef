"""``medassist dataset``: a hospital's studies and signed reports as training and evaluation
cases, labelled from the reports' text (medassist.dataset)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medassist.dataset import (
    agreement,
    find_studies,
    import_cases,
    impression_codes,
    report_findings,
)
from medassist.errors import DatasetImportError
from medassist.model_data import finding_labels, folder_records, label_targets
from tests.dicom_factory import zip_folder

ROOT = Path(__file__).resolve().parents[2]
LABELS = finding_labels()

REPORT = """INDICATION: Cough and fever.

TECHNIQUE: CT of the chest without contrast.

FINDINGS:
Lungs: Possible consolidation in the RLL. There is a 14 mm spiculated nodule in the left upper
lobe. A 6 mm nodule and a 3.1 cm mass in the left lower lobe. No pneumothorax.
Pleura: Small bilateral pleural effusions.
Mediastinum: Enlarged station 4R lymph node, 13 mm in short axis. The heart is normal in size.
Bones: No acute osseous abnormality.

IMPRESSION:
1. Left lung nodule and mass, suspicious for metastatic disease.
2. Bilateral pleural effusions, likely cardiogenic.
"""


def _by_kind(text: str) -> dict[str, dict[str, object]]:
    return {str(f["kind"]): f for f in report_findings(text, LABELS)}


def test_report_findings_read_presence_side_location_size_and_hedges() -> None:
    f = _by_kind(REPORT)
    # negated ("No pneumothorax", "normal in size", "No acute osseous abnormality") and
    # unmentioned labels are absent; the indication's words are not read
    assert set(f) == {"lung_nodule", "lung_mass", "consolidation", "pleural_effusion",
                      "mediastinal_lymphadenopathy"}
    nod, mass, cons = f["lung_nodule"], f["lung_mass"], f["consolidation"]
    assert nod["attributes"] == {"side": "left"}  # two lobes named: the lobe is left open
    assert nod["unstated"] == ["location"]
    # the size of a sentence about this label alone (not "a 6 mm nodule and a 3.1 cm mass")
    assert nod["size_mm"] == 14.0
    assert mass["attributes"] == {"side": "left", "lobe": "LLL"}
    assert mass["size_mm"] is None and mass["unstated"] == ["size"]
    assert cons["attributes"] == {"side": "right", "lobe": "RLL"} and cons["uncertain"] is True
    assert nod["uncertain"] is False
    assert f["pleural_effusion"]["attributes"] == {"side": "bilateral"}
    node = f["mediastinal_lymphadenopathy"]
    assert node["attributes"] == {"station": "4R", "side": "right"}
    assert node["size_mm"] == 13.0 and node["unstated"] == []
    # the evidence spans are the report's own sentences, whole (a wrapped line included)
    assert [(ev["sentence"], REPORT[ev["start"]:ev["end"]])
            for ev in nod["evidence"]] == [  # type: ignore[attr-defined]
        ("There is a 14 mm spiculated nodule in the left upper\nlobe.",) * 2,
        ("A 6 mm nodule and a 3.1 cm mass in the left lower lobe.",) * 2,
        ("Left lung nodule and mass, suspicious for metastatic disease.",) * 2]


def test_a_signed_reports_decisions_are_read_as_the_reviewer_left_them() -> None:
    """A medassist report's block of the reviewer's decisions (medassist.review): a rejected
    line affirms nothing, a line's own sentence is read with its negation, the side and
    size a decision states are the finding's, and the decoder's target is the prose alone."""
    from medassist.model_data import report_target_text
    from medassist.review import BLOCK, decision_line

    text = ("FINDINGS:\nA right lower lobe nodule.\n\n" + "\n".join([
        BLOCK, decision_line("consolidation", "rejected", "", None, ""),
        decision_line("pneumothorax", "accepted", "", None, "No pneumothorax."),
        decision_line("lung_nodule", "edited", "left", 12.0, "Right lower lobe nodule."),
    ]) + "\n\nIMPRESSION:\n1. Lung nodule.\n")
    f = _by_kind(text)
    assert set(f) == {"lung_nodule"}  # not the rejected consolidation, not the pneumothorax
    assert f["lung_nodule"]["attributes"] == {"side": "left", "lobe": "RLL"}
    assert f["lung_nodule"]["size_mm"] == 12.0 and f["lung_nodule"]["unstated"] == []
    assert [(ev["sentence"], text[ev["start"]:ev["end"]]) for ev in
            f["lung_nodule"]["evidence"]] == [  # type: ignore[attr-defined]
        ("A right lower lobe nodule.",) * 2, ("Right lower lobe nodule.",) * 2,
        ("Lung nodule.",) * 2]
    assert report_target_text(text) == ("findings: A right lower lobe nodule. impression: 1. "
                                         "Lung nodule.")
    assert "rejected_by_reviewer" not in f["lung_nodule"]
    # a finding rejected in the block that the prose still affirms: the prose's word is
    # taken, and the disagreement is marked
    clash = _by_kind(text.replace("A right lower lobe nodule.", "A right lower lobe nodule. "
                                  "Patchy consolidation in the left lower lobe."))
    assert set(clash) == {"lung_nodule", "consolidation"}
    assert clash["consolidation"]["rejected_by_reviewer"] is True
    assert clash["consolidation"]["attributes"] == {"side": "left", "lobe": "LLL"}


def test_impression_codes_from_the_wording() -> None:
    findings = report_findings(REPORT, LABELS)
    codes = {c["code"]: c["finding_indices"] for c in impression_codes(REPORT, findings)}
    idx = {f["kind"]: f["index"] for f in findings}
    assert codes == {
        "metastatic_disease_suspected": [idx["lung_nodule"], idx["lung_mass"]],
        "effusion_cardiogenic": [idx["pleural_effusion"]],
        "consolidation_nonspecific": [idx["consolidation"]],
        "lymphadenopathy": [idx["mediastinal_lymphadenopathy"]]}
    # a mass suspicious for malignancy is the image's own conclusion; a nodule so described
    # (in a heavy smoker) the EMR-dependent one
    text = ("FINDINGS: 4.1 cm mass in the RUL. 12 mm spiculated nodule in the LLL.\n"
            "IMPRESSION: 4.1 cm mass in the right upper lobe, suspicious for primary lung "
            "malignancy. Spiculated nodule in a heavy smoker, suspicious for malignancy.")
    found = report_findings(text, LABELS)
    assert {c["code"] for c in impression_codes(text, found)} == {
        "lung_mass_malignancy_suspected", "primary_lung_malignancy_suspected"}


def test_label_targets_leave_out_what_the_report_does_not_state() -> None:
    from multimodal.config import LATERALITY

    findings = report_findings(REPORT, LABELS)
    locations = ("other", "RUL", "RML", "RLL", "LUL", "LLL", "4R")
    t = label_targets(findings, LABELS, locations)
    li = {lab: i for i, lab in enumerate(LABELS)}
    assert t["present"][li["lung_nodule"]] == 1.0
    assert t["location"][li["lung_nodule"]] == -100  # lobe not stated
    assert t["size"][li["lung_nodule"]] == 14.0
    assert t["location"][li["lung_mass"]] == locations.index("LLL")
    assert t["size"][li["lung_mass"]] != t["size"][li["lung_mass"]]  # NaN: no size stated
    assert t["laterality"][li["pleural_effusion"]] == LATERALITY.index("bilateral")
    assert t["present"][li["pneumothorax"]] == 0.0 and t["laterality"][li["pneumothorax"]] == -100


def test_section_headings_as_reports_write_them() -> None:
    """Headings with or without a colon, alone on their line, CONCLUSION for IMPRESSION, in
    any case; "findings" inside an indication is no heading."""
    for text in ("Indication: follow-up of prior findings\nFindings\nA 9 mm nodule in the "
                 "RUL.\nConclusion\nNodule.",
                 "INDICATION: prior findings:\nFINDINGS: 9 mm nodule, RUL.\nIMPRESSIONS: "
                 "Nodule."):
        (nod,) = report_findings(text, LABELS)
        assert (nod["kind"], nod["attributes"], nod["size_mm"]) == (
            "lung_nodule", {"side": "right", "lobe": "RUL"}, 9.0)
        assert all("prior" not in ev["sentence"] for ev in nod["evidence"])


@pytest.mark.parametrize("text", ["Lungs are clear. Impression: normal.", "",
                                  "FINDINGS: no nodule.",
                                  "Indication: findings\nLungs clear.\nimpression: normal"])
def test_a_report_without_both_sections_is_refused(text: str) -> None:
    with pytest.raises(DatasetImportError, match="no FINDINGS: and IMPRESSION: sections"):
        report_findings(text, LABELS)


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A hospital's folder: 3 studies (DICOM files loose in the study folder, or in a zip file
    for the third, the signed report and the note beside them; generated cases, whose
    truth.json is kept apart as the reference), one study whose report has no sections, one
    with a report but no DICOM."""
    from medassist.synth.case import make_case
    from medassist.synth.config import load_config
    from medassist.synth.findings import load_vocabulary
    from medassist.synth.writer import write_case

    base = tmp_path_factory.mktemp("dataset")
    cfg = load_config(ROOT / "configs/synth/small.yaml")
    vocab = load_vocabulary(cfg.findings.vocabulary_path())
    inp, ref = base / "hospital", base / "reference"
    for i in range(3):
        case = base / "synth" / f"case_{i}"
        write_case(make_case(cfg, vocab, 5, i, "test"), cfg, case)
        study = inp / "2026" / f"acc{i:03d}"
        if i < 2:
            shutil.copytree(case / "dicom", study)
        else:  # a study kept as a zip file beside its report
            study.mkdir(parents=True)
            zip_folder(case / "dicom", study / "study.zip")
        for name in ("report.txt", "emr.txt"):
            shutil.copy(case / name, study / name)
        (ref / f"acc{i:03d}").mkdir(parents=True)
        shutil.copy(case / "truth.json", ref / f"acc{i:03d}" / "truth.json")
    no_sections = inp / "2026" / "acc900"
    shutil.copytree(base / "synth" / "case_0" / "dicom", no_sections)
    (no_sections / "report.txt").write_text("Lungs clear. Normal CT.", encoding="utf-8")
    (inp / "2026" / "acc901").mkdir()
    (inp / "2026" / "acc901" / "report.txt").write_text(REPORT, encoding="utf-8")
    return {"input": inp, "reference": ref, "base": base}


def test_import_makes_cases_and_records_the_studies_it_cannot(
        hospital: dict[str, Path], tmp_path: Path) -> None:
    from medassist.cli import main

    assert [p.name for p in find_studies(hospital["input"])] == [
        "acc000", "acc001", "acc002", "acc900", "acc901"]
    out = tmp_path / "cases"
    assert main(["dataset", "import", str(hospital["input"]), str(out)]) == 1
    summary = json.loads((out / "import.json").read_text(encoding="utf-8"))
    assert (summary["imported"], summary["failed"]) == (3, 2)
    reasons = {Path(c["source"]).name: c["reason"] for c in summary["cases"]}
    assert reasons["acc000"] is None
    assert reasons["acc900"] == ("DatasetImportError: the report has no FINDINGS: and "
                                 "IMPRESSION: sections (nor CONCLUSION:)")
    assert reasons["acc901"] is not None and reasons["acc901"].startswith(
        "NoDiagnosticSeriesError")
    # the cases read back as training / evaluation records, their findings the reports'
    records = {Path(r.case_id).name: r for r in folder_records(out, _tiny_cfg())}
    assert sorted(records) == ["2026_acc000", "2026_acc001", "2026_acc002"]
    for name, rec in records.items():
        acc = name.split("_")[1]
        ref = json.loads((hospital["reference"] / acc / "truth.json").read_text(
            encoding="utf-8"))["findings"]
        assert {f["kind"] for f in rec.findings} == {f["kind"] for f in ref}
        assert rec.emr is not None and rec.hu is not None
        assert (out / name / ("dicom.zip" if acc == "acc002" else "dicom")).is_symlink()
    # the texts alone (training's tokenizer pass reads no volume), in the same order
    texts = list(folder_records(out, _tiny_cfg(), images=False))
    assert [Path(r.case_id).name for r in texts] == sorted(records)
    assert all(r.hu is None and r.label_map is None and r.report_text for r in texts)
    # a second import into the same folder is refused, nothing overwritten
    with pytest.raises(Exception, match="exists and is not empty"):
        import_cases(hospital["input"], out)


def _tiny_cfg() -> object:
    from multimodal.config import load_model_config

    return load_model_config(ROOT / "configs/model/tiny.yaml", labels=LABELS)


def test_train_and_eval_on_imported_cases(hospital: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The loop a hospital's AI team runs: import, train (data_dir, val_dir for the
    calibration), evaluate on the imported cases."""
    from medassist.cli import main
    from medassist.model_cli import TrainConfig, train
    from tests.tiny_model import OPTIM

    cases = tmp_path / "cases"
    import_cases(hospital["input"], cases)
    ck = tmp_path / "ck"
    train(TrainConfig(model_config=str(ROOT / "configs/model/tiny.yaml"),
                      data_dir=str(cases), val_dir=str(cases), train_cases=3,
                      max_emr_tokens=256, out=str(ck), optim=OPTIM))
    meta = json.loads((ck / "meta.json").read_text(encoding="utf-8"))
    assert meta["data"]["source"] == str(cases) and meta["data"]["val_source"] == str(cases)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(ck), "--data", str(cases), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["full"]["n_cases"] == 3


def test_agreement_with_reference_findings(hospital: dict[str, Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """On generated cases the reports' labels agree with the generator's findings; a changed
    report shows as a disagreement."""
    from medassist.cli import main

    synth = hospital["base"] / "synth"
    assert main(["dataset", "agreement", str(synth)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_cases"] == 3 and res["presence"]["fp"] == res["presence"]["fn"] == 0
    assert res["impression_codes"] == {"context_codes_equal": 3, "emr_dependent_equal": 3}
    truth = json.loads((synth / "case_0" / "truth.json").read_text(encoding="utf-8"))
    text = (synth / "case_0" / "report.txt").read_text(encoding="utf-8")
    silver = report_findings(text.replace("IMPRESSION:", "Pneumothorax on the left.\n"
                                                         "IMPRESSION:"), LABELS)
    got = agreement([(silver, truth["findings"])], LABELS)
    assert got["per_label"]["pneumothorax"]["fp"] == (
        0 if any(f["kind"] == "pneumothorax" for f in truth["findings"]) else 1)


def test_signed_reports_become_cases(hospital: dict[str, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch-drafted studies, one report corrected by a clinician (a pneumothorax added) and
    signed, another left a draft: `dataset signed` writes the signed one (its text, links to
    the study's DICOM and note), audited as an export; `dataset import` makes it a case whose
    labels carry the clinician's correction.  A non-clinician may not export."""
    import io

    from sqlalchemy import select

    from medassist import reports
    from medassist.batch_cli import run_batch
    from medassist.cli import main
    from medassist.review import decision_line
    from medassist.storage import (
        AuditEvent,
        Report,
        make_engine,
        session_factory,
        unit_of_work,
    )
    from medassist.storage.models import Role
    from tests.core.factories import PASSWORD, add_user, decided
    from tests.tiny_model import train_tiny_checkpoint

    synth = hospital["base"] / "synth"
    url = f"sqlite:///{tmp_path / 'signed.db'}"
    ck = train_tiny_checkpoint(tmp_path / "ck")
    assert run_batch(synth, db=url, checkpoint=str(ck), err=io.StringIO(),
                     out=io.StringIO())["done"] == 3
    factory = session_factory(make_engine(url))
    with unit_of_work(factory) as s:
        doc = add_user(s, "alice")
        add_user(s, "root", role=Role.ADMIN)
        first = s.scalars(select(Report).order_by(Report.id).limit(1)).one()
        rid, study_uid = first.id, first.study.study_uid
        view = reports.read_report(s, rid, doc)
    # the clinician adds the pneumothorax (prose and finding) and accepts the other findings
    signed_text = decided(view.text.replace(
        "IMPRESSION:", "Small left apical pneumothorax.\n\nIMPRESSION:"), view.draft,
        decision_line("pneumothorax", "edited", "left", None, "Small left apical pneumothorax."))
    with unit_of_work(factory) as s:
        reports.edit_report(s, rid, doc, signed_text, expected_version=1)
    with unit_of_work(factory) as s:
        reports.submit_for_review(s, rid, doc, expected_version=2)
    with unit_of_work(factory) as s:
        reports.sign_report(s, rid, doc, PASSWORD, expected_version=3)

    out = tmp_path / "signed"
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["dataset", "signed", str(tmp_path / "refused"), "--user", "root",
                 "--password-stdin", "--db", url]) != 0  # an admin reads no report text
    assert not (tmp_path / "refused").exists()  # and nothing is written
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["dataset", "signed", str(out), "--user", "alice", "--password-stdin",
                 "--db", url]) == 0
    assert [p.name for p in out.iterdir()] == [study_uid]
    folder = out / study_uid
    assert (folder / "report.txt").read_text(encoding="utf-8") == signed_text
    assert (folder / "dicom").is_symlink() and (folder / "emr.txt").is_file()
    with unit_of_work(factory) as s:
        events = [(e.event_type, e.object_id, e.detail) for e in s.scalars(select(AuditEvent))
                  if e.event_type in ("EXPORT", "REFUSAL")]
    assert events == [("REFUSAL", str(rid), "role 'admin' may not read reports"),
                      ("EXPORT", str(rid), "format=dataset")]

    cases = tmp_path / "cases"
    assert main(["dataset", "import", str(out), str(cases)]) == 0
    truth = json.loads((cases / study_uid / "truth.json").read_text(encoding="utf-8"))
    ptx = [f for f in truth["findings"] if f["kind"] == "pneumothorax"]
    assert len(ptx) == 1 and ptx[0]["attributes"]["side"] == "left"


def test_finding_labels_whatever_the_working_directory(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The labels come from the source tree's configs/findings.yaml (a relative path failed
    `medassist batch` and `dataset import` run from another folder)."""
    monkeypatch.chdir(tmp_path)
    assert finding_labels() == LABELS and "lung_nodule" in LABELS


def test_redact_known_identifiers_dates_and_forms() -> None:
    from medassist.dataset import redact

    note = ("Pt: FISCHER, Lukas   MRN: 59682894   DOB: 10/28/1941   Date: 05/29/2022 13:24\n"
            "CC/HPI: 93 yo M w/ fever to 39.6 C; daughter Anna at 555-201-3344, "
            "a.fischer@example.org. WBC 14.6. Seen Oct 3, 2021. Lukas's CT 2021-10-04.")
    out, n = redact(note, ["FISCHER", "Lukas", "59682894"])
    for gone in ("FISCHER", "Lukas", "59682894", "10/28/1941", "05/29/2022", "555-201-3344",
                 "a.fischer@example.org", "Oct 3, 2021", "2021-10-04", "93 yo"):
        assert gone not in out, gone
    # the clinical content stays; a relative's name the header does not state is not found
    for kept in ("fever to 39.6 C", "WBC 14.6", "90+ yo M", "13:24", "Anna"):
        assert kept in out, kept
    assert n == 11  # "Lukas" twice


def test_redact_names_a_title_credentials_or_a_signature_line_give_away() -> None:
    """Clinicians' and others' names the header does not state, found by their form: the
    title, keyword and credentials stay; clinical words in capitals are not taken for one."""
    from medassist.dataset import REDACTED, redact

    report = ("FINDINGS: Small right pneumothorax. Dr. Jane Smith was notified at 14:10; "
              "discussed with Mr. O'Neil and Dr Brown.\n"
              "IMPRESSION: Small right pneumothorax.\n"
              "Dictated by: John A. Doe, MD\n"
              "Electronically signed by Mary Major\n"
              "Radiologist: R. ROE, FRCR\n"
              "HISTORY OF MS WITH NEW DYSPNEA. Seen by Jane Roe, MD. Read by the resident.")
    out, n = redact(report, [])
    for gone in ("Jane", "Smith", "O'Neil", "Brown", "John", "Doe", "Mary", "Major", "ROE",
                 "Roe"):
        assert gone not in out, gone
    for kept in ("Dr. " + REDACTED, "Mr. " + REDACTED, "Dictated by: " + REDACTED,
                 "Electronically signed by " + REDACTED, "Radiologist: " + REDACTED,
                 REDACTED + ", MD", "HISTORY OF MS WITH NEW DYSPNEA", "Read by the resident",
                 "Small right pneumothorax. Dr.", "notified at 14:10"):
        assert kept in out, kept
    assert n == 7  # three titles, three signature lines, one name with credentials
    # what the report states is unchanged by it (the evidence's offsets move)
    def stated(text: str) -> list[dict[str, object]]:
        return [{k: v for k, v in f.items() if k != "evidence"}
                for f in report_findings(text, LABELS)]

    assert stated(out) == stated(report) and stated(report)


def test_a_deidentified_import(hospital: dict[str, Path], tmp_path: Path) -> None:
    """--deid-key-file: DICOM written through dicom_io.deid (no original UID, name or ID), the
    report and note without the header's identifiers or dates, pseudonymous case ids, no
    source path in the output; the findings and the note's history are those of the plain
    import."""
    import pydicom

    from dicom_io.deid import DeidKey
    from medassist.cli import main
    from medassist.history import read_history

    key_file = tmp_path / "deid.key"
    DeidKey.generate().save(key_file)
    plain, deid = tmp_path / "plain", tmp_path / "deid"
    import_cases(hospital["input"], plain)
    assert main(["dataset", "import", str(hospital["input"]), str(deid),
                 "--deid-key-file", str(key_file)]) == 1  # the two bad studies
    summary = (deid / "import.json").read_text(encoding="utf-8")
    assert "acc0" not in summary and "hospital" not in summary  # no source path or name
    cases = sorted(p for p in deid.iterdir() if p.is_dir())
    assert [p.name[:5] for p in cases] == ["case-"] * 2  # acc002 is a zip study: refused
    assert "a study kept in a zip file is not de-identified here; unzip it" in summary
    src = next((hospital["input"] / "2026" / "acc000").rglob("*.dcm"))
    orig = pydicom.dcmread(src, stop_before_pixels=True)
    name_parts = [p for p in str(orig.PatientName).replace("^", " ").split() if len(p) > 1]
    by_uid = {}
    for case in cases:
        truth = json.loads((case / "truth.json").read_text(encoding="utf-8"))
        assert truth["source"] is None and truth["deidentified"]["text_redactions"] > 0
        files = sorted((case / "dicom").rglob("*.dcm"))
        assert files and not (case / "dicom").is_symlink()
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        assert ds.PatientIdentityRemoved == "YES" and ds.StudyInstanceUID == truth[
            "study"]["study_uid"]
        by_uid[ds.StudyInstanceUID] = case
        text = (case / "report.txt").read_text(encoding="utf-8") + (
            case / "emr.txt").read_text(encoding="utf-8")
        assert ds.StudyInstanceUID != orig.StudyInstanceUID
        for ident in (str(orig.PatientID), *name_parts):
            assert ident not in text
    # the same findings and the same history as the plain import, case by case
    for name in ("2026_acc000", "2026_acc001"):
        p_truth = json.loads((plain / name / "truth.json").read_text(encoding="utf-8"))
        from dicom_io.deid import remap_uid

        case = by_uid[remap_uid(DeidKey.from_file(key_file), p_truth["study"]["study_uid"])]
        d_truth = json.loads((case / "truth.json").read_text(encoding="utf-8"))
        strip = [({k: v for k, v in f.items() if k != "evidence"}) for f in p_truth["findings"]]
        assert [{k: v for k, v in f.items() if k != "evidence"}
                for f in d_truth["findings"]] == strip
        assert read_history((case / "emr.txt").read_text(encoding="utf-8")) == read_history(
            (plain / name / "emr.txt").read_text(encoding="utf-8"))
    # and the de-identified cases read back for training
    assert len(list(folder_records(deid, _tiny_cfg()))) == 2


def test_import_a_real_ct_with_its_report(a0001: Path, tmp_path: Path) -> None:
    """The shared Lung-PET-CT-Dx A0001 series (real DICOM, linked in place) with a report
    written as a radiologist would for its annotated tumour: a case whose findings are the
    report's and whose CT reads back on the model grid."""
    study = tmp_path / "hospital" / "A0001"
    study.mkdir(parents=True)
    (study / "dicom").symlink_to(a0001, target_is_directory=True)
    (study / "report.txt").write_text(
        "CLINICAL HISTORY: Lung mass.\n\nFINDINGS\nThere is a 5.2 cm mass in the left upper "
        "lobe abutting the mediastinum.\nNo pleural effusion. No pneumothorax.\n\n"
        "CONCLUSION\nLeft upper lobe mass, suspicious for primary lung malignancy.\n",
        encoding="utf-8")
    out = tmp_path / "cases"
    (res,) = import_cases(tmp_path / "hospital", out)
    assert res.reason is None and res.case_dir is not None
    truth = json.loads((res.case_dir / "truth.json").read_text(encoding="utf-8"))
    (mass,) = truth["findings"]
    assert (mass["kind"], mass["attributes"], mass["size_mm"]) == (
        "lung_mass", {"side": "left", "lobe": "LUL"}, 52.0)
    assert [c["code"] for c in truth["report"]["impression"]] == [
        "lung_mass_malignancy_suspected"]
    (rec,) = folder_records(out, _tiny_cfg())
    assert rec.hu is not None and rec.emr is None and rec.label_map is None


def test_agreement_against_a_radiologists_labels(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`dataset agreement DIR --labels CSV`: report-derived labels measured against hand
    labels of a sample (here the labeler misses "bulky subcarinal nodes", which the
    radiologist reads as mediastinal lymphadenopathy); a bad CSV line is named."""
    from medassist.cli import main
    from medassist.dataset import read_hand_labels

    reports = {
        "r1": REPORT,
        "r2": "FINDINGS:\nSmall left effusion. 2.5 cm hepatic mass. Lucent line through the "
              "left seventh rib. Bulky subcarinal nodes.\nIMPRESSION:\nEffusion.",
        "r3": "FINDINGS:\nLungs are clear. No pleural effusion.\nIMPRESSION:\nNormal CT.",
    }
    for case, text in reports.items():
        (tmp_path / "reports" / case).mkdir(parents=True)
        (tmp_path / "reports" / case / "report.txt").write_text(text, encoding="utf-8")
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text(
        "case,label,side,lobe,size_mm\n"
        "r1,lung_nodule,left,,14\nr1,lung_mass,left,LLL,31\nr1,consolidation,right,RLL,\n"
        "r1,pleural_effusion,bilateral,,\nr1,mediastinal_lymphadenopathy,right,,13\n"
        "r2,pleural_effusion,left,,\nr2,liver_lesion,,,25\nr2,rib_fracture,left,,\n"
        "r2,mediastinal_lymphadenopathy,,,\n"
        "r3,none,,,\n", encoding="utf-8")
    assert main(["dataset", "agreement", str(tmp_path / "reports"), "--labels",
                 str(csv_file)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_cases"] == 3
    per = res["per_label"]
    assert per["pleural_effusion"] == {"tp": 2, "fp": 0, "fn": 0, "tn": 1}
    assert per["lung_mass"] == {"tp": 1, "fp": 0, "fn": 0, "tn": 2}
    assert per["liver_lesion"] == {"tp": 1, "fp": 0, "fn": 0, "tn": 2}
    assert per["rib_fracture"] == {"tp": 1, "fp": 0, "fn": 0, "tn": 2}
    assert per["mediastinal_lymphadenopathy"] == {"tp": 1, "fp": 0, "fn": 1, "tn": 1}
    assert res["side"] == {"agree": 7, "stated": 7}
    assert res["size_within_10pct_or_1mm"] == {"agree": 3, "stated": 3}
    bad = tmp_path / "bad.csv"
    bad.write_text("case,label,side,lobe,size_mm\nr1,nodule,left,,\n", encoding="utf-8")
    with pytest.raises(DatasetImportError, match="line 2: unknown label 'nodule'"):
        read_hand_labels(bad, LABELS)


def test_import_with_the_reports_kept_apart(hospital: dict[str, Path], tmp_path: Path) -> None:
    """--reports DIR: the studies medassist batch finds (synth output's dicom/ folders, a zip
    file), each report found by StudyInstanceUID, AccessionNumber or folder name, the note
    as batch finds it (--emr-dir first); a study without a report is listed, named by what
    was looked for."""
    import pydicom

    from medassist.cli import main

    synth = hospital["base"] / "synth"
    inp, reports, notes = tmp_path / "pacs_export", tmp_path / "reports", tmp_path / "notes"
    for d in (inp, reports, notes):
        d.mkdir()
    heads = {}
    for i in range(3):
        case = synth / f"case_{i}"
        heads[i] = pydicom.dcmread(next((case / "dicom").rglob("*.dcm")),
                                   stop_before_pixels=True)
    shutil.copytree(synth / "case_0" / "dicom", inp / "study_a")
    zip_folder(synth / "case_1" / "dicom", inp / "study_b.zip")
    shutil.copytree(synth / "case_2" / "dicom", inp / "study_c")
    shutil.copy(synth / "case_0" / "report.txt", reports / f"{heads[0].StudyInstanceUID}.txt")
    shutil.copy(synth / "case_1" / "report.txt", reports / f"{heads[1].AccessionNumber}.txt")
    shutil.copy(synth / "case_0" / "emr.txt", notes / "study_a.txt")
    out = tmp_path / "cases"
    assert main(["dataset", "import", str(inp), str(out), "--reports", str(reports),
                 "--emr-dir", str(notes)]) == 1
    summary = json.loads((out / "import.json").read_text(encoding="utf-8"))
    by = {Path(c["source"]).name: c for c in summary["cases"]}
    assert by["study_a"]["reason"] is None and by["study_b.zip"]["reason"] is None
    assert by["study_c"]["reason"] == (
        f"DatasetImportError: no report for the study in {reports} (looked for "
        "<StudyInstanceUID>.txt, <AccessionNumber>.txt and <study folder or zip name>.txt)")
    assert (out / "study_a" / "emr.txt").is_file() and not (out / "study_b.zip" / "emr.txt"
                                                             ).exists()
    assert (out / "study_b.zip" / "dicom.zip").is_symlink()
    ref = json.loads((hospital["reference"] / "acc001" / "truth.json").read_text(
        encoding="utf-8"))
    got = json.loads((out / "study_b.zip" / "truth.json").read_text(encoding="utf-8"))
    assert {f["kind"] for f in got["findings"]} == {f["kind"] for f in ref["findings"]}


def test_a_deidentified_import_never_changes_what_the_report_states(
        hospital: dict[str, Path], tmp_path: Path) -> None:
    """A patient whose name part is a word of the report ("No": "No pneumothorax" would read
    "[REDACTED] pneumothorax", a pneumothorax affirmed) is refused with the reason, not
    imported with a label its report does not give; the plain import takes it."""
    import pydicom

    from dicom_io.deid import DeidKey

    src = hospital["input"] / "2026" / "acc000"
    assert "No pneumothorax" in (src / "report.txt").read_text(encoding="utf-8")
    study = tmp_path / "in" / "s1"
    shutil.copytree(src, study)
    for f in study.rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.PatientName = "No^Anna"
        ds.save_as(f)
    key_file = tmp_path / "deid.key"
    DeidKey.generate().save(key_file)
    (res,) = import_cases(tmp_path / "in", tmp_path / "deid", key=DeidKey.from_file(key_file))
    assert res.case_dir is None and res.reason is not None
    assert res.reason.startswith("DatasetImportError: de-identification would change what the "
                                 "report or note states")
    (plain,) = import_cases(tmp_path / "in", tmp_path / "plain")
    assert plain.case_dir is not None
    truth = json.loads((plain.case_dir / "truth.json").read_text(encoding="utf-8"))
    assert "pneumothorax" not in {f["kind"] for f in truth["findings"]}
