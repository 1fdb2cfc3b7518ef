"""End to end through the real Orthanc: C-STORE a generated study (pynetdicom SCU) → `watch`
picks it up and the report pipeline stores a draft → a clinician signs it through the service
layer → the SR goes back by STOW-RS → QIDO finds it in the same study, WADO-RS reads it, and
highdicom validates it (VERIFIED, with the signer) → `medassist dataset signed --orthanc`
retrieves the study for the signed report's training case."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from medassist import audit
from medassist.auth import actor_of, create_user
from medassist.draft import ReportDraft
from medassist.pacs import outbox, queue
from medassist.pacs.dicomweb import PacsClient
from medassist.pacs.models import IngestItem, OutboxItem
from medassist.pacs.sendback import (
    PacsSources,
    chain,
    local_sources,
    send_round,
    sign_and_queue,
    unsent_signed,
)
from medassist.pacs.watch import Watcher, start_from_now
from medassist.pipeline import PipelineProcessor
from medassist.reports import edit_report, get_report, submit_for_review, verify_signature
from medassist.storage.engine import unit_of_work
from medassist.storage.models import Report
from tests.core.factories import decided
from tests.pacs.conftest import OrthancServer, c_store, case_dirs, read_series
from tests.pacs.helpers import restamp
from tests.tiny_model import train_tiny_checkpoint

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained in seconds: the pipeline needs real weights, not a mock."""
    return train_tiny_checkpoint(tmp_path_factory.mktemp("ck"))


def _upload(orthanc: OrthancServer, case: Path, emr_dir: Path) -> str:
    """C-STORE a copy of the case as a new study; its EMR note goes to ``emr_dir``."""
    ct = restamp(read_series(case))
    uid = str(ct[0].StudyInstanceUID)
    assert set(c_store(orthanc.dicom_port, ct)) == {0}
    emr_dir.mkdir(exist_ok=True)
    shutil.copyfile(case / "emr.txt", emr_dir / f"{uid}.txt")
    orthanc.wait_stable(uid)
    return uid


def _decided_and_submitted(s: Session, rid: int, doc: audit.Actor) -> int:
    """Every AI finding of the report accepted as drafted (signing needs a decision on each),
    then the report submitted for review; its version."""
    rep = get_report(s, rid)
    edit_report(s, rid, doc, decided(rep.text, ReportDraft.from_json(rep.draft_json)),
                rep.version_id)
    return submit_for_review(s, rid, doc, get_report(s, rid).version_id).version_id


def test_draft_sign_and_sr_back_in_orthanc(orthanc: OrthancServer, synth_case: Path,
                                           factory: sessionmaker[Session], checkpoint: Path,
                                           tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    client = PacsClient(orthanc.url, timeout_s=10)
    orthanc.wait_all_stable()
    assert start_from_now(factory, client)       # the archive already there is not drafted
    assert not start_from_now(factory, client)   # a stored cursor wins
    emr_dir = tmp_path / "emr"
    uid = _upload(orthanc, case_dirs(synth_case)[0], emr_dir)

    watcher = Watcher(factory=factory, client=client,
                      processor=PipelineProcessor(checkpoint, emr_dir=emr_dir),
                      backoff=queue.Backoff(base_s=0.05, cap_s=0.2))
    outcomes = watcher.run_once()
    assert [(o.study_uid, o.state) for o in outcomes] == [(uid, "done")]
    assert watcher.run_once() == []  # idempotent per StudyInstanceUID
    with unit_of_work(factory) as s:
        assert s.scalars(select(IngestItem)).one().location is None  # pulled, then removed
        report = s.scalars(select(Report)).one()
        assert (report.study.study_uid, report.status) == (uid, "DRAFT")
        rid = report.id
        user = create_user(s, username="dr.e2e", display_name="Dr Eve Two", role="clinician",
                           password=PASSWORD, actor=audit.SYSTEM)
        doc = actor_of(user)
    with unit_of_work(factory) as s:
        version = _decided_and_submitted(s, rid, doc)
    resolver = chain(local_sources, PacsSources(client))
    with unit_of_work(factory) as s:
        _sig, item = sign_and_queue(s, rid, doc, PASSWORD, version, resolver)
        assert item is not None and item.report_id == rid and item.kind == "sr"
        sr_uid = item.sop_instance_uid
        assert unsent_signed(s) == []

    rec, delivered = send_round(factory, resolver, client.store_bytes)
    assert (rec.queued, rec.pending, delivered.sent, delivered.failed) == (0, 0, 1, 0)
    assert sr_uid in client.search_instances(uid)  # QIDO: in the same study
    series = [s for s in client.series_of_study(uid) if s.modality == "SR"]
    assert len(series) == 1
    ds = client.retrieve_instance(uid, series[0].series_uid, sr_uid)  # WADO-RS
    sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    assert sr.VerificationFlag == "VERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Two^Dr Eve"
    assert sr.StudyInstanceUID == uid
    refs = {str(r.ReferencedSOPInstanceUID)
            for st in sr.CurrentRequestedProcedureEvidenceSequence
            for se in st.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
    assert refs and refs <= set(client.search_instances(uid))
    with unit_of_work(factory) as s:
        assert verify_signature(s, rid).ok
        assert audit.verify(s).ok
        assert s.scalars(select(OutboxItem)).one().state == "sent"

    # the signed report as a training case: the study, drafted from the PACS with no local
    # copy, is retrieved from Orthanc (WADO-RS), its note found in emr_dir
    from medassist.cli import main
    from medassist.dataset import export_signed, import_cases

    signed = tmp_path / "signed"
    with unit_of_work(factory) as s:
        (got,) = export_signed(s, doc, signed, emr_dir)
        assert got.folder is None and got.reason is not None and "--orthanc" in got.reason
    assert not signed.exists() or not any(signed.iterdir())
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["dataset", "signed", str(signed), "--user", "dr.e2e", "--password-stdin",
                 "--db", f"sqlite:///{tmp_path / 'medassist.db'}", "--emr-dir", str(emr_dir),
                 "--orthanc", orthanc.url]) == 0
    assert len(list((signed / uid / "dicom").rglob("*.dcm"))) == len(read_series(
        case_dirs(synth_case)[0]))
    assert (signed / uid / "emr.txt").read_text(encoding="utf-8") == (
        emr_dir / f"{uid}.txt").read_text(encoding="utf-8")
    (case,) = import_cases(signed, tmp_path / "cases")
    assert case.reason is None and case.case_dir is not None
    assert isinstance(ds, pydicom.Dataset)


def test_sr_pending_while_the_pacs_is_down_is_sent_later(
        orthanc: OrthancServer, synth_case: Path, factory: sessionmaker[Session],
        checkpoint: Path, tmp_path: Path) -> None:
    """Sign while Orthanc is down: the signature stands, the SR cannot be built (its source
    headers are in the PACS only) and is pending, visibly; `pacs send` queues and delivers it
    once Orthanc is back."""
    client = PacsClient(orthanc.url, timeout_s=5)
    orthanc.wait_all_stable()
    start_from_now(factory, client)
    emr_dir = tmp_path / "emr"
    uid = _upload(orthanc, case_dirs(synth_case)[1], emr_dir)
    watcher = Watcher(factory=factory, client=client,
                      processor=PipelineProcessor(checkpoint, emr_dir=emr_dir))
    assert [o.state for o in watcher.run_once()] == ["done"]
    with unit_of_work(factory) as s:
        rid = s.scalars(select(Report)).one().id
        doc = actor_of(create_user(s, username="dr.down", display_name="Dr Down",
                                   role="clinician", password=PASSWORD, actor=audit.SYSTEM))
    with unit_of_work(factory) as s:
        version = _decided_and_submitted(s, rid, doc)
    resolver = chain(local_sources, PacsSources(client))
    orthanc.stop()
    try:
        with unit_of_work(factory) as s:
            sig, item = sign_and_queue(s, rid, doc, PASSWORD, version, resolver)
            assert item is None and sig.report_id == rid
        with unit_of_work(factory) as s:
            assert get_report(s, rid).status == "SIGNED"
            assert unsent_signed(s) == [rid]
        rec, d = send_round(factory, resolver, client.store_bytes)
        assert (rec.queued, rec.pending, d.sent) == (0, 1, 0)
    finally:
        orthanc.start()
    rec, d = send_round(factory, resolver, client.store_bytes)
    assert (rec.queued, rec.pending, d.sent, d.failed) == (1, 0, 1, 0)
    with unit_of_work(factory) as s:
        assert unsent_signed(s) == [] and outbox.pending(s) == []
        sr_uid = s.scalars(select(OutboxItem)).one().sop_instance_uid
        assert audit.verify(s).ok
    assert sr_uid in client.search_instances(uid)
