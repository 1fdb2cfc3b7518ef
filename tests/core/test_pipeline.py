"""The report pipeline and ``medassist batch`` on generated studies (SQLite).

Three generated cases plus one corrupt study (a truncated instance file) go through the batch:
three DRAFT reports, one failure with its stage and reason; a rerun adds nothing; an EMR whose
MRN differs from the DICOM PatientID is refused and audited; a batch SIGKILLed after its first
study finishes on a rerun with the same final set of reports.  Studies given as zip files are
drafted as from their folders, beside a corrupt archive recorded with its reason.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from medassist.batch_cli import run_batch
from medassist.errors import IdentityMismatchError, PipelineError
from medassist.pacs import queue
from medassist.pacs.models import IngestItem
from medassist.pipeline import (
    PipelineProcessor,
    emr_identity,
    hash_inputs,
    identity_mismatches,
    select_series,
    series_files,
)
from medassist.storage import (
    AuditEvent,
    Job,
    Report,
    ReportVersion,
    make_engine,
    session_factory,
    unit_of_work,
    upgrade,
)
from tests.core.conftest import Db
from tests.dicom_factory import zip_folder
from tests.tiny_model import train_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[2]
N_CASES = 3


def _write_cases(root: Path, indices: list[int]) -> list[Path]:
    from medassist.synth.case import make_case
    from medassist.synth.config import load_config
    from medassist.synth.findings import load_vocabulary
    from medassist.synth.writer import write_case

    cfg = load_config(ROOT / "configs/synth/small.yaml")
    vocab = load_vocabulary(cfg.findings.vocabulary_path())
    out = []
    for i in indices:
        folder = root / f"case_{i:05d}"
        write_case(make_case(cfg, vocab, 11, i, "test"), cfg, folder)
        out.append(folder)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """good/: 3 cases; bad/: 1 case with a truncated instance; mismatch/: 1 case whose EMR
    names another MRN."""
    base = tmp_path_factory.mktemp("pipeline")
    _write_cases(base / "good", list(range(N_CASES)))
    (bad,) = _write_cases(base / "bad", [N_CASES])
    files = sorted((bad / "dicom").rglob("*.dcm")) or sorted(
        p for p in (bad / "dicom").rglob("*") if p.is_file())
    victim = files[len(files) // 2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    (mm,) = _write_cases(base / "mismatch", [N_CASES + 1])
    emr = (mm / "emr.txt").read_text(encoding="utf-8")
    mrn = emr_identity(emr).mrn
    assert mrn is not None
    other = "9" + mrn[1:] if mrn[0] != "9" else "1" + mrn[1:]
    (mm / "emr.txt").write_text(emr.replace(f"MRN: {mrn}", f"MRN: {other}", 1),
                                encoding="utf-8")
    return {"base": base, "good": base / "good", "bad": base / "bad",
            "mismatch": base / "mismatch"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained in seconds (the approach of tests/model/test_training.py)."""
    return train_tiny_checkpoint(tmp_path_factory.mktemp("ck"))


def emr_name(case: Path) -> list[str]:
    """The patient's family and given names from the EMR header (``Pt: FAMILY, Given``)."""
    import re

    m = re.search(r"Pt: ([^,]+), (\S+)", (case / "emr.txt").read_text(encoding="utf-8"))
    assert m is not None
    return [m.group(1), m.group(2)]


def _db(tmp_path: Path) -> tuple[str, sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'batch.db'}"
    engine = make_engine(url)
    upgrade(engine)
    return url, session_factory(engine)


def _input(tmp_path: Path, corpus: dict[str, Path], *parts: str) -> Path:
    """A batch input folder made of links to the corpus case folders."""
    inp = tmp_path / "input"
    inp.mkdir()
    for part in parts:
        for case in sorted(corpus[part].iterdir()):
            (inp / f"{part}_{case.name}").symlink_to(case, target_is_directory=True)
    return inp


def _reports(factory: sessionmaker[Session]) -> list[tuple[int, str, str]]:
    with unit_of_work(factory) as s:
        return [(r.id, r.study.study_uid, r.status) for r in
                s.scalars(select(Report).order_by(Report.id))]


def test_batch_done_failed_and_idempotent(tmp_path: Path, corpus: dict[str, Path],
                                          checkpoint: Path, caplog: pytest.LogCaptureFixture,
                                          db: Db) -> None:
    """On both backends (SQLite and the real PostgreSQL, as the application role)."""
    url, factory = db.url, db.factory
    inp = _input(tmp_path, corpus, "good", "bad")
    err, out = io.StringIO(), io.StringIO()
    caplog.set_level("DEBUG")
    summary = run_batch(inp, db=url, checkpoint=str(checkpoint), err=err, out=out)
    # no PHI (PatientID = MRN, patient name) in the logs, the progress or the summary
    for case in sorted(corpus["good"].iterdir()):
        h = select_series(case / "dicom").first
        for phi in (h.patient_id, *emr_name(case)):
            for text in (caplog.text, err.getvalue(), out.getvalue()):
                assert phi not in text
    assert (summary["done"], summary["failed"], summary["skipped"]) == (N_CASES, 1, 0)
    assert "studies/s" in err.getvalue() and "ETA" in err.getvalue()
    assert "failed" in out.getvalue()
    failed = [s for s in summary["studies"] if s["state"] == "failed"]
    assert "bad_case" in failed[0]["folder"]
    assert failed[0]["reason"].startswith("PipelineError: build_volume: "), failed[0]["reason"]
    reps = _reports(factory)
    assert len(reps) == N_CASES and {r[2] for r in reps} == {"DRAFT"}
    assert len({r[1] for r in reps}) == N_CASES
    with unit_of_work(factory) as s:
        # version 1 = the AI draft; inputs, model version and the job's input key stored
        assert s.scalar(select(func.count()).select_from(ReportVersion)) == N_CASES
        for rep in s.scalars(select(Report)):
            assert rep.model_version and rep.checkpoint_sha256 and rep.emr_sha256
            job = s.get(Job, rep.job_id)
            assert job is not None and job.status == "done" and len(job.input_key) == 64
        n_audit = s.scalar(select(func.count()).select_from(AuditEvent))

    # rerun: nothing new (the queue rows are done)
    summary2 = run_batch(inp, db=url, checkpoint=str(checkpoint), err=io.StringIO(),
                         out=io.StringIO())
    assert (summary2["done"], summary2["failed"]) == (N_CASES, 1)
    assert _reports(factory) == reps

    # requeued on purpose: the same inputs + model return the same report (input key)
    uid = reps[0][1]
    with unit_of_work(factory) as s:
        queue.requeue(s, uid)
    run_batch(inp, db=url, checkpoint=str(checkpoint), err=io.StringIO(), out=io.StringIO())
    assert _reports(factory) == reps
    with unit_of_work(factory) as s:
        row = s.scalars(select(IngestItem).where(IngestItem.study_uid == uid)).one()
        assert row.state == "done" and '"created": false' in (row.result_json or "")
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == n_audit


def test_hash_inputs_is_order_free_and_sensitive(corpus: dict[str, Path]) -> None:
    series = select_series(corpus["good"] / "case_00000" / "dicom")
    files = series_files(series)
    k = hash_inputs(files, "note", "a" * 64)
    assert k == hash_inputs(list(reversed(files)), "note", "a" * 64)
    assert k != hash_inputs(files, "note.", "a" * 64)
    assert k != hash_inputs(files, "note", "b" * 64)
    assert k != hash_inputs(files[:-1], "note", "a" * 64)


def test_identity_mismatch_refused_and_audited(tmp_path: Path, corpus: dict[str, Path],
                                               checkpoint: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    url, factory = _db(tmp_path)
    case = next(iter(sorted(corpus["mismatch"].iterdir())))
    emr = (case / "emr.txt").read_text(encoding="utf-8")
    series = select_series(case / "dicom")
    proc = PipelineProcessor(checkpoint)
    with pytest.raises(IdentityMismatchError) as ei, unit_of_work(factory) as s:
        proc(case / "dicom", series.study_uid, s)
    assert ei.value.stage == "cross_check_identity"
    stated = emr_identity(emr).mrn
    dicom_pid = series.first.patient_id
    assert stated and dicom_pid and stated != dicom_pid
    with unit_of_work(factory) as s:
        ev = s.scalars(select(AuditEvent).where(AuditEvent.event_type == "REFUSAL")).all()
        assert len(ev) == 1
        assert ev[0].object_id == series.study_uid
        row_text = " ".join(str(getattr(ev[0], c.key)) for c in AuditEvent.__table__.columns)
        assert stated not in row_text and dicom_pid not in row_text
        assert s.scalar(select(func.count()).select_from(Report)) == 0
    for text in (str(ei.value), caplog.text):
        assert stated not in text and dicom_pid not in text

    # through the batch: failed with the stage, not retried, refusal kept
    inp = _input(tmp_path, corpus, "mismatch")
    summary = run_batch(inp, db=url, checkpoint=str(checkpoint), err=io.StringIO(),
                        out=io.StringIO())
    assert summary["failed"] == 1
    assert "cross_check_identity" in summary["studies"][0]["reason"]
    assert stated not in summary["studies"][0]["reason"]
    with unit_of_work(factory) as s:
        assert len(s.scalars(select(AuditEvent).where(
            AuditEvent.event_type == "REFUSAL")).all()) == 2


def test_identity_mismatches_reads_date_of_birth_and_sex(corpus: dict[str, Path]) -> None:
    """A note that states no MRN is still checked against the DICOM's PatientBirthDate and
    PatientSex: a wrong patient's note is named, the patient's own in another date order is
    not, and what the DICOM does not carry is not compared."""
    import dataclasses
    import re

    case = next(iter(sorted(corpus["good"].iterdir())))
    h = select_series(case / "dicom").first
    assert len(h.patient_birth_date) == 8 and h.patient_sex in ("F", "M")
    note = re.sub(r"MRN:\s*\S+", "", (case / "emr.txt").read_text(encoding="utf-8"))
    assert emr_identity(note).mrn is None
    assert identity_mismatches([h], note) == []
    y, mo, d = h.patient_birth_date[:4], h.patient_birth_date[4:6], h.patient_birth_date[6:]
    stated = re.search(r"DOB:\s*(\S+)", note)
    assert stated is not None
    for form in (f"{y}-{mo}-{d}", f"{d}.{mo}.{y}", f"{mo}/{d}/{y}"):
        assert identity_mismatches([h], note.replace(stated.group(1), form)) == [], form
    other_year = f"{mo}/{d}/{int(y) - 1}"
    assert identity_mismatches([h], note.replace(stated.group(1), other_year)) \
        == ["date of birth"]
    other_sex = "M" if h.patient_sex == "F" else "F"
    flipped = re.sub(r"(\d+ yo) [FM]\b", rf"\1 {other_sex}", note)
    assert flipped != note
    assert identity_mismatches([h], flipped) == ["sex"]
    # a relative named after the patient is not read as the patient
    assert identity_mismatches([h], note + f"\nFHx: sibling 50 yo {other_sex}.") == []
    assert identity_mismatches([h], f"Sex: {'female' if other_sex == 'F' else 'male'}") \
        == ["sex"]
    # not carried by the DICOM (de-identified; "O"): not compared
    bare = dataclasses.replace(h, patient_birth_date="", patient_sex="O")
    assert identity_mismatches([bare], flipped.replace(stated.group(1), other_year)) == []
    # not a date: not compared
    assert identity_mismatches([h], note.replace(stated.group(1), "31/02/1968")) == []


def test_wrong_patients_note_without_mrn_refused(tmp_path: Path, corpus: dict[str, Path],
                                                  checkpoint: Path,
                                                  caplog: pytest.LogCaptureFixture,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Another patient's note with its MRN line gone is refused on the date of birth (and
    sex), audited, and no value reaches the message, the log or the audit row; `medassist
    report --emr` refuses it too (exit 3), and drafts with the study's own note."""
    import re

    from medassist.cli import main

    _url, factory = _db(tmp_path)
    a, b = sorted(corpus["good"].iterdir())[:2]
    ha, hb = select_series(a / "dicom").first, select_series(b / "dicom").first
    assert ha.patient_birth_date != hb.patient_birth_date
    case = tmp_path / "swapped"
    shutil.copytree(a, case)
    note = re.sub(r"MRN:\s*\S+", "", (b / "emr.txt").read_text(encoding="utf-8"))
    (case / "emr.txt").write_text(note, encoding="utf-8")
    series = select_series(case / "dicom")
    caplog.set_level("DEBUG")
    with pytest.raises(IdentityMismatchError) as ei, unit_of_work(factory) as s:
        PipelineProcessor(checkpoint)(case / "dicom", series.study_uid, s)
    assert "date of birth does not match" in str(ei.value)
    stated = re.search(r"DOB:\s*(\S+)", note)
    assert stated is not None
    with unit_of_work(factory) as s:
        (ev,) = s.scalars(select(AuditEvent).where(AuditEvent.event_type == "REFUSAL")).all()
        row_text = " ".join(str(getattr(ev, c.key)) for c in AuditEvent.__table__.columns)
        assert s.scalar(select(func.count()).select_from(Report)) == 0
    argv = ["report", str(case / "dicom"), "--checkpoint", str(checkpoint), "--json"]
    assert main([*argv, "--emr", str(case / "emr.txt")]) == 3
    err = capsys.readouterr().err
    assert "date of birth does not match" in err and "refusing to draft" in err
    for text in (str(ei.value), caplog.text, row_text, err):
        for phi in (stated.group(1), ha.patient_birth_date, hb.patient_birth_date):
            assert phi not in text
    assert main([*argv, "--emr", str(a / "emr.txt")]) == 0
    assert '"status": "DRAFT"' in capsys.readouterr().out


def test_sigkill_mid_batch_then_resume(tmp_path: Path, corpus: dict[str, Path],
                                       checkpoint: Path) -> None:
    url, factory = _db(tmp_path)
    inp = _input(tmp_path, corpus, "good")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "medassist.batch_cli", "batch", str(inp),
                             "--db", url, "--checkpoint", str(checkpoint)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with unit_of_work(factory) as s:
                done = s.scalar(select(func.count()).select_from(IngestItem)
                                .where(IngestItem.state == "done")) or 0
            if done >= 1 or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the batch ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_reports = _reports(factory)
    assert 1 <= len(killed_reports) < N_CASES
    summary = run_batch(inp, db=url, checkpoint=str(checkpoint), err=io.StringIO(),
                        out=io.StringIO())
    assert summary["done"] == N_CASES and summary["failed"] == 0
    reps = _reports(factory)
    assert len(reps) == N_CASES and len({r[1] for r in reps}) == N_CASES
    assert killed_reports == reps[: len(killed_reports)]


def test_two_workers_and_store_study(tmp_path: Path, corpus: dict[str, Path],
                                     checkpoint: Path, db: Db) -> None:
    from medassist.pipeline import store_study

    url, factory = db.url, db.factory
    inp = _input(tmp_path, corpus, "good")
    summary = run_batch(inp, db=url, checkpoint=str(checkpoint), workers=2,
                        err=io.StringIO(), out=io.StringIO())
    assert summary["done"] == N_CASES
    reps = _reports(factory)
    assert len(reps) == N_CASES and len({r[1] for r in reps}) == N_CASES
    # `medassist report --db`: one study, stored once whatever the number of calls
    case = corpus["good"] / "case_00001"
    with unit_of_work(factory) as s:
        st = store_study(s, case / "dicom", checkpoint=checkpoint, emr_path=case / "emr.txt")
    assert not st.created and st.report_id in {r[0] for r in reps}
    assert _reports(factory) == reps


def test_missing_checkpoint_is_a_usage_error(tmp_path: Path) -> None:
    from medassist.errors import UsageError

    with pytest.raises(UsageError, match="checkpoint"):
        PipelineProcessor(tmp_path / "nope")
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_report_command_stores_the_draft_once(tmp_path: Path, corpus: dict[str, Path],
                                              checkpoint: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from medassist.cli import main

    url, factory = _db(tmp_path)
    case = corpus["good"] / "case_00000"
    argv = ["report", str(case / "dicom"), "--emr", str(case / "emr.txt"), "--checkpoint",
            str(checkpoint), "--db", url, "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert (first["created"], second["created"]) == (True, False)
    assert first["report_id"] == second["report_id"] and first["status"] == "DRAFT"
    assert [r[0] for r in _reports(factory)] == [first["report_id"]]
    assert main([*argv, "--int8"]) == 2  # a usage error, not a stored int8 draft


def test_report_reads_the_note_from_a_fhir_bundle(tmp_path: Path, corpus: dict[str, Path],
                                                 checkpoint: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`medassist report --emr emr_fhir.json` (the Bundle `medassist synth` writes) drafts
    from the same note as `--emr emr.txt`: the same draft, the same EMR hash (this case's
    Bundle states no history beyond its note's text, which could unmark a sentence).  A Bundle
    without the note is an input error naming the file (exit 3); in the pipeline the study
    fails at find_emr with the reason and no path."""
    import json

    from medassist.cli import main
    from medassist.emr import read_emr
    from medassist.history import read_history
    from medassist.pipeline import store_study

    case = corpus["good"] / "case_00002"
    emr = read_emr(case / "emr_fhir.json")
    assert emr.facts <= read_history(emr.text).stated
    argv = ["report", str(case / "dicom"), "--checkpoint", str(checkpoint), "--json"]
    assert main([*argv, "--emr", str(case / "emr.txt")]) == 0
    from_text = json.loads(capsys.readouterr().out)
    assert main([*argv, "--emr", str(case / "emr_fhir.json")]) == 0
    from_fhir = json.loads(capsys.readouterr().out)
    for d in (from_text, from_fhir):
        d.pop("created_at", None)
    assert from_fhir == from_text
    bad = tmp_path / "labs_only.json"
    bad.write_text(json.dumps({"resourceType": "Bundle", "entry": [
        {"resource": {"resourceType": "Observation"}}]}), encoding="utf-8")
    assert main([*argv, "--emr", str(bad)]) == 3
    assert "without a DocumentReference" in capsys.readouterr().err
    _url, factory = _db(tmp_path)
    with unit_of_work(factory) as s, pytest.raises(PipelineError) as info:
        store_study(s, case / "dicom", checkpoint=checkpoint, emr_path=bad)
    assert info.value.stage == "find_emr" and info.value.kind == "EMRInput"
    assert str(bad) not in str(info.value) and "without a DocumentReference" in str(info.value)


def test_report_drafts_a_zipped_study(tmp_path: Path, corpus: dict[str, Path],
                                      checkpoint: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`medassist report study.zip`: the same draft as from the folder, the same DICOM hash
    (the archive's members' bytes; the draft read them as files and crashed before)."""
    import json

    from medassist.cli import main

    case = corpus["good"] / "case_00001"
    archive = shutil.make_archive(str(tmp_path / "study"), "zip", root_dir=case / "dicom")
    drafts = []
    for study in (str(case / "dicom"), archive):
        assert main(["report", study, "--emr", str(case / "emr.txt"), "--checkpoint",
                     str(checkpoint), "--json"]) == 0
        drafts.append(json.loads(capsys.readouterr().out))
    assert drafts[1] == drafts[0]


def test_a_scan_without_lungs_fails_the_batch_study_not_the_batch(
        tmp_path: Path, corpus: dict[str, Path], checkpoint: Path, shared_data: Path) -> None:
    """The shared head CT among generated chest studies: refused at the draft stage as no
    chest CT (its reason kept), the chest studies drafted."""
    url, factory = _db(tmp_path)
    inp = _input(tmp_path, corpus, "good")
    head = inp / "head_ct"
    head.mkdir()
    shutil.copytree(shared_data / "ct" / "dcm_qa_ct" / "GE", head / "dicom")
    (head / "emr.txt").write_text("Indication: headache after a fall.\n", encoding="utf-8")
    summary = run_batch(inp, db=url, checkpoint=str(checkpoint), err=io.StringIO(),
                        out=io.StringIO())
    assert (summary["done"], summary["failed"]) == (N_CASES, 1), summary["studies"]
    (failed,) = [s for s in summary["studies"] if s["state"] == "failed"]
    assert "head_ct" in failed["folder"]
    assert "draft: NotAChestCTError" in failed["reason"], failed["reason"]
    assert "mL of aerated lung" in failed["reason"]
    assert len(_reports(factory)) == N_CASES


def test_study_folders_follow_links_once(tmp_path: Path) -> None:
    """An archive of links beside real folders: every study found (Path.rglob skips linked
    folders before Python 3.13, and the linked studies were silently left out), each once,
    and a link loop ends."""
    from medassist.batch_cli import study_folders

    store = tmp_path / "store"
    (store / "s1" / "dicom").mkdir(parents=True)
    (store / "s2" / "dicom" / "series").mkdir(parents=True)
    root = tmp_path / "input"
    (root / "real" / "dicom").mkdir(parents=True)
    (root / "linked1").symlink_to(store / "s1", target_is_directory=True)
    (root / "nested").mkdir()
    (root / "nested" / "linked2").symlink_to(store / "s2", target_is_directory=True)
    (root / "again").symlink_to(store / "s1", target_is_directory=True)  # the same study
    (root / "nested" / "loop").symlink_to(root, target_is_directory=True)
    found = study_folders(root)
    assert [p.relative_to(root).as_posix() for p in found] == [
        "again/dicom", "nested/linked2/dicom", "real/dicom"]  # linked1 is "again", in order


def test_study_folders_take_zip_files_as_studies(tmp_path: Path) -> None:
    """Beside dicom/ folders, every zip file the same walk finds (not those inside a dicom/
    folder, each real file once); without dicom/ folders, the sub-folders and zip files of
    INPUT (a deeper zip is part of its sub-folder, as before); a zip that is not an archive
    or holds no DICOM is a study with a reason."""
    from medassist.batch_cli import read_study_uid, study_folders

    root = tmp_path / "synth"
    (root / "real" / "dicom").mkdir(parents=True)
    (root / "real" / "dicom" / "inner.zip").write_bytes(b"part of the folder study")
    (root / "nested").mkdir()
    zip_folder(root / "nested", root / "nested" / "b.zip")
    (root / "a.ZIP").write_bytes(b"")
    (root / "c.zip").symlink_to(root / "nested" / "b.zip")  # b.zip again, first in name order
    (root / "notes.txt").write_text("x", encoding="utf-8")
    assert [p.relative_to(root).as_posix() for p in study_folders(root)] == [
        "a.ZIP", "c.zip", "real/dicom"]
    flat = tmp_path / "flat"
    (flat / "s1" / "deep").mkdir(parents=True)
    (flat / "s1" / "deep" / "x.zip").write_bytes(b"")
    (flat / "s2.zip").write_bytes(b"")
    assert [p.name for p in study_folders(flat)] == ["s1", "s2.zip"]
    (only := tmp_path / "only").mkdir()
    (only / "1.dcm").write_bytes(b"")
    assert study_folders(only) == [only]
    for bad, why in ((root / "a.ZIP", "not a readable zip archive (BadZipFile"),
                     (root / "c.zip", "no readable DICOM file with a StudyInstanceUID in "
                                      "the zip archive")):
        found = read_study_uid(bad)
        assert found.study_uid is None and found.reason is not None and why in found.reason


def test_unread_dicom_names_the_folders_no_study_reads(tmp_path: Path,
                                                      corpus: dict[str, Path]) -> None:
    """DICOM files outside every study found are named by folder, with how many: loose ones
    directly in a flat INPUT beside its sub-folders and zip files, a folder without a dicom/
    folder beside synth output's case folders; notes, zip files and the studies' own files are
    not; when INPUT itself is the study, nothing is unread."""
    from medassist.batch_cli import input_studies, unread_dicom

    dcm = sorted((corpus["good"] / "case_00000" / "dicom").rglob("*.dcm"))[:3]
    flat = tmp_path / "flat"
    (flat / "s1").mkdir(parents=True)
    shutil.copy(dcm[0], flat / "s1" / "a.dcm")
    zip_folder(flat / "s1", flat / "s2.zip")
    for f in dcm[1:]:
        shutil.copy(f, flat / f.name)
    (flat / "s2.txt").write_text("the zip's note", encoding="utf-8")
    (flat / "readme").write_bytes(b"\0" * 128 + b"DICX")
    unread = unread_dicom(input_studies(flat)[1])
    assert [u.path for u in unread] == [flat]
    assert unread[0].study_uid is None and unread[0].reason is not None
    assert unread[0].reason.startswith(f"enumerate: 2 DICOM file(s) in this folder (first "
                                       f"{dcm[1].name!r}) lie outside every study")
    assert "move them into a folder of their own" in unread[0].reason

    synth = tmp_path / "synth"
    (synth / "case_1" / "dicom" / "series").mkdir(parents=True)
    shutil.copy(dcm[0], synth / "case_1" / "dicom" / "series" / "1.dcm")
    (synth / "case_1" / "emr.txt").write_text("note", encoding="utf-8")
    (synth / "stray" / "deeper").mkdir(parents=True)
    shutil.copy(dcm[1], synth / "stray" / "deeper" / "x.dcm")
    assert [(u.path, u.reason is not None and u.reason.split(" in this")[0])
            for u in unread_dicom(input_studies(synth)[1])] == [
        (synth / "stray" / "deeper", "enumerate: 1 DICOM file(s)")]
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(dcm[0], only / "1.dcm")
    assert input_studies(only) == ([only], {})


def test_batch_records_loose_files_and_a_study_found_twice(
        tmp_path: Path, corpus: dict[str, Path], checkpoint: Path) -> None:
    """A study as a folder and as its zip file is drafted once and the second location is a
    skipped duplicate naming the first; DICOM files loose in INPUT beside them are a failed
    entry with the reason (exit status 1), not silently left out."""
    from medassist.cli import main

    case = corpus["good"] / "case_00000"
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / "a_folder").symlink_to(case, target_is_directory=True)
    zip_folder(case / "dicom", inp / "b_zipped.zip")
    for f in sorted((corpus["good"] / "case_00001" / "dicom").rglob("*.dcm"))[:2]:
        shutil.copy(f, inp / f.name)
    url = f"sqlite:///{tmp_path / 'dup.db'}"
    assert main(["batch", str(inp), "--db", url, "--checkpoint", str(checkpoint)]) == 1
    summary = run_batch(inp, db=url, checkpoint=str(checkpoint), err=io.StringIO(),
                        out=io.StringIO())
    assert (summary["done"], summary["skipped"], summary["failed"], summary["pending"]) == (
        1, 1, 1, 0)
    by_name = {Path(s["folder"]).relative_to(tmp_path).as_posix(): s
               for s in summary["studies"]}
    assert {n: s["state"] for n, s in by_name.items()} == {
        "input/a_folder/dicom": "done", "input/b_zipped.zip": "duplicate", "input": "failed"}
    dup = by_name["input/b_zipped.zip"]
    assert dup["study_uid"] == by_name["input/a_folder/dicom"]["study_uid"]
    assert dup["reason"] == (f"enumerate: the same StudyInstanceUID as {inp}/a_folder/dicom, "
                             "drafted once, from there")
    assert by_name["input"]["reason"].startswith("enumerate: 2 DICOM file(s) in this folder")
    with unit_of_work(session_factory(make_engine(url))) as s:
        assert s.scalar(select(func.count()).select_from(Report)) == 1


def test_hash_inputs_of_a_study_however_it_is_packed(tmp_path: Path,
                                                    corpus: dict[str, Path]) -> None:
    """The idempotency key hashes the series' instances: a folder, its zip file and the same
    files zipped again (stored, not deflated, another non-DICOM member) give one key; a changed
    member a new one."""
    import zipfile

    from medassist.pipeline import series_sources

    folder = corpus["good"] / "case_00000" / "dicom"

    def key(study: Path) -> str:
        return hash_inputs(series_sources(select_series(study)), "note", "a" * 64)

    zipped = zip_folder(folder, tmp_path / "a.zip")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    again = tmp_path / "b.zip"
    with zipfile.ZipFile(again, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("manifest.txt", "another export\n")
        for f in reversed(files):
            zf.write(f, "flat/" + f.name)
    assert key(folder) == key(zipped) == key(again)
    changed = tmp_path / "c.zip"
    with zipfile.ZipFile(changed, "w") as zf:
        for i, f in enumerate(files):
            data = f.read_bytes()
            zf.writestr(f.name, data + b"\0" if i == 0 else data)  # one byte more
    assert key(changed) != key(folder)


def test_find_emr_for_a_zipped_study(tmp_path: Path) -> None:
    """study.zip: --emr-dir's <study UID> or <zip stem> (.txt, then .json), else study.txt or
    study.json beside it, never an emr.txt beside it (the folder may hold many studies);
    case/dicom.zip: the notes above it as for case/dicom/."""
    from medassist.pipeline import find_emr

    study = tmp_path / "study.zip"
    study.write_bytes(b"")
    (tmp_path / "emr.txt").write_text("another study's", encoding="utf-8")
    assert find_emr(study, "1.2.3") is None
    for name in ("study.json", "study.txt"):
        (tmp_path / name).write_text("note", encoding="utf-8")
        assert find_emr(study, "1.2.3") == tmp_path / name
    notes = tmp_path / "notes"
    notes.mkdir()
    for name in ("study.json", "1.2.3.json", "study.txt", "1.2.3.txt"):
        (notes / name).write_text("note", encoding="utf-8")
        assert find_emr(study, "1.2.3", notes) == notes / name
    case = tmp_path / "case_00007"
    case.mkdir()
    (case / "dicom.zip").write_bytes(b"")
    (case / "emr_fhir.json").write_text("{}", encoding="utf-8")
    assert find_emr(case / "dicom.zip", "1.2.3") == case / "emr_fhir.json"
    (notes / "case_00007.txt").write_text("note", encoding="utf-8")
    assert find_emr(case / "dicom.zip", "4.5.6", notes) == notes / "case_00007.txt"


def test_batch_drafts_zipped_studies_beside_a_bad_archive(
        tmp_path: Path, corpus: dict[str, Path], checkpoint: Path) -> None:
    """INPUT holding two studies as zip files (each case's dicom/ folder zipped; one note beside
    its zip as <stem>.txt, the other in --emr-dir as <study UID>.txt) and a .zip of random
    bytes: exit status 1; the two drafted with the same report (text, DICOM and EMR hashes) as
    the same studies batched from their folders (and the same idempotency key); the bad
    archive recorded with its reason."""
    import random

    from medassist.cli import main

    cases = [corpus["good"] / "case_00000", corpus["good"] / "case_00001"]
    inp, notes = tmp_path / "zips", tmp_path / "notes"
    inp.mkdir()
    notes.mkdir()
    for case in cases:
        zip_folder(case / "dicom", inp / f"{case.name}.zip")
    shutil.copy(cases[0] / "emr.txt", inp / f"{cases[0].name}.txt")
    uid1 = select_series(cases[1] / "dicom").study_uid
    shutil.copy(cases[1] / "emr.txt", notes / f"{uid1}.txt")
    (inp / "broken.zip").write_bytes(random.Random(7).randbytes(4096))
    url = f"sqlite:///{tmp_path / 'zips.db'}"
    argv = ["batch", str(inp), "--db", url, "--checkpoint", str(checkpoint),
            "--emr-dir", str(notes)]
    assert main(argv) == 1
    # a rerun drafts nothing again and gives the summary (run_batch's table goes to the
    # sys.stdout bound when it was defined, out of capsys's reach)
    summary = run_batch(inp, db=url, checkpoint=str(checkpoint), emr_dir=str(notes),
                        err=io.StringIO(), out=io.StringIO())
    assert (summary["done"], summary["failed"], summary["pending"]) == (2, 1, 0)
    by_name = {Path(s["folder"]).name: s for s in summary["studies"]}
    assert {n: s["state"] for n, s in by_name.items()} == {
        "case_00000.zip": "done", "case_00001.zip": "done", "broken.zip": "failed"}
    assert by_name["broken.zip"]["study_uid"] is None
    assert by_name["broken.zip"]["reason"].startswith(
        "enumerate: not a readable zip archive (BadZipFile: ")

    ref = tmp_path / "folders"
    ref.mkdir()
    for case in cases:
        (ref / case.name).symlink_to(case, target_is_directory=True)
    ref_url = f"sqlite:///{tmp_path / 'folders.db'}"
    assert run_batch(ref, db=ref_url, checkpoint=str(checkpoint), err=io.StringIO(),
                     out=io.StringIO())["done"] == 2

    def stored(db_url: str) -> dict[str, tuple[str, str, str, str, str | None]]:
        with unit_of_work(session_factory(make_engine(db_url))) as s:
            return {r.study.study_uid: (r.text, r.ai_text, r.dicom_sha256, r.emr_sha256,
                                        s.scalar(select(Job.input_key).where(
                                            Job.id == r.job_id)))
                    for r in s.scalars(select(Report))}

    zipped = stored(url)
    assert len(zipped) == 2 and uid1 in zipped
    assert zipped == stored(ref_url)


def test_the_ray_stages_name_a_scan_without_lungs_the_same(tmp_path: Path,
                                                           shared_data: Path) -> None:
    """`medassist.scale.stages.prepare_study` (the CPU stage of the Ray engine) refuses the head
    CT as the in-process pipeline does: stage draft, kind NotAChestCTError."""
    from medassist.scale.stages import prepare_study
    from multimodal.checkpoint import load_checkpoint

    head = tmp_path / "head_ct"
    shutil.copytree(shared_data / "ct" / "dcm_qa_ct" / "GE", head / "dicom")
    (head / "emr.txt").write_text("Indication: headache after a fall.\n", encoding="utf-8")
    _m, cfg, *_ = load_checkpoint(Path(__file__).resolve().parents[2] / "models/demo")
    with pytest.raises(PipelineError) as info:
        prepare_study(head / "dicom", None, cfg, "0" * 64)
    assert info.value.stage == "draft" and info.value.kind == "NotAChestCTError"
    assert "mL of aerated lung" in str(info.value)
