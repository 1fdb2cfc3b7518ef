"""``pacs watch`` against the real Orthanc: C-STORE in, StableStudy, QIDO/WADO, dicom_io,
processor, exactly once across restarts; non-CT studies recorded with their reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from medassist.errors import PacsUnavailableError
from medassist.pacs import queue
from medassist.pacs.dicomweb import PacsClient
from medassist.pacs.models import IngestItem, PacsCursor
from medassist.pacs.watch import (
    ProcessResult,
    Watcher,
    cursor_name,
    set_cursor,
    volume_summary_processor,
)
from medassist.storage.engine import unit_of_work
from tests.pacs.conftest import REPO, OrthancServer, c_store, case_dirs, read_series
from tests.pacs.helpers import restamp, text_sr


class Counting:
    """The real volume processor (dicom_io.load_volume), counting its calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, study_dir: Path, study_uid: str, session: Session) -> ProcessResult:
        self.calls.append(study_uid)
        return volume_summary_processor(study_dir, study_uid, session)


def _rows(factory: sessionmaker[Session]) -> dict[str, IngestItem]:
    with unit_of_work(factory) as s:
        return {r.study_uid: r for r in s.scalars(select(IngestItem))}


def _watcher(factory: sessionmaker[Session], orthanc: OrthancServer, proc: Counting,
             **kw: object) -> Watcher:
    return Watcher(factory=factory, client=PacsClient(orthanc.url, timeout_s=10),
                   processor=proc, backoff=queue.Backoff(base_s=0.05, cap_s=0.2), **kw)  # type: ignore[arg-type]


def _start_at_end(factory: sessionmaker[Session], orthanc: OrthancServer) -> None:
    """Start the cursor after everything already in the shared Orthanc.

    Earlier tests' studies may still be waiting for their StableStudy change: wait for it
    first, so that it lies before the cursor.
    """
    orthanc.wait_all_stable()
    with unit_of_work(factory) as s:
        set_cursor(s, cursor_name(orthanc.url), PacsClient(orthanc.url).last_seq())


def test_watch_processes_each_study_once_across_restarts(
        orthanc: OrthancServer, synth_case: Path, factory: sessionmaker[Session]) -> None:
    _start_at_end(factory, orthanc)
    cases = case_dirs(synth_case)
    first = read_series(cases[0])
    uid1 = first[0].StudyInstanceUID
    truth = json.loads((cases[0] / "truth.json").read_text())
    assert truth["study"]["study_instance_uid"] == uid1
    assert set(c_store(orthanc.dicom_port, first)) == {0}
    orthanc.wait_stable(uid1)

    proc = Counting()
    outcomes = _watcher(factory, orthanc, proc).run_once()
    assert [(o.study_uid, o.state) for o in outcomes] == [(uid1, "done")]
    assert proc.calls == [uid1]
    row = _rows(factory)[uid1]
    assert (row.state, row.attempts, row.source) == ("done", 1, "watch")
    summary = json.loads(row.result_json or "{}")
    assert summary["series_uid"] == truth["study"]["main_series_instance_uid"]
    assert summary["instances"] == len(first)
    assert summary["shape"][0] == len(first) and summary["shape"][1:] == [128, 128]

    # restart: a new watcher (fresh client, same DB) sees nothing new
    proc2 = Counting()
    assert _watcher(factory, orthanc, proc2).run_once() == []
    assert proc2.calls == []
    with unit_of_work(factory) as s:
        cursor = s.scalars(select(PacsCursor)).one().seq
    assert cursor > 0

    # a study that arrives while no watcher runs is picked up by the next one, once
    second = read_series(cases[1])
    uid2 = second[0].StudyInstanceUID
    assert set(c_store(orthanc.dicom_port, second)) == {0}
    orthanc.wait_stable(uid2)
    proc3 = Counting()
    w3 = _watcher(factory, orthanc, proc3)
    assert [o.study_uid for o in w3.run_once()] == [uid2]
    assert w3.run_once() == []
    assert proc3.calls == [uid2]
    rows = _rows(factory)
    assert {u: (r.state, r.attempts) for u, r in rows.items()} == {
        uid1: ("done", 1), uid2: ("done", 1)}


def test_non_ct_studies_are_recorded_with_a_reason(
        orthanc: OrthancServer, synth_case: Path, factory: sessionmaker[Session]) -> None:
    _start_at_end(factory, orthanc)
    ct = read_series(case_dirs(synth_case)[0])
    mr = restamp(ct[:4], Modality="MR", SOPClassUID="1.2.840.10008.5.1.4.1.1.4")
    loc = restamp(ct[:3], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
                  SeriesDescription="Topogram")
    sr = [text_sr()]
    for ds in (mr, loc, sr):
        assert set(c_store(orthanc.dicom_port, ds)) == {0}
    uids = {"mr": mr[0].StudyInstanceUID, "loc": loc[0].StudyInstanceUID,
            "sr": sr[0].StudyInstanceUID}
    for uid in uids.values():
        orthanc.wait_stable(uid)

    proc = Counting()
    _watcher(factory, orthanc, proc).run_once()
    rows = _rows(factory)
    for key in ("mr", "loc", "sr"):
        assert rows[uids[key]].state == "no_diagnostic_ct", key
    assert "no CT series (modalities: MR)" in (rows[uids["mr"]].reason or "")
    assert "no CT series (modalities: SR)" in (rows[uids["sr"]].reason or "")
    loc_reason = rows[uids["loc"]].reason or ""
    assert loc_reason.startswith("no diagnostic CT series:") and "localizer" in loc_reason.lower()
    assert uids["mr"] not in proc.calls and uids["sr"] not in proc.calls
    assert uids["loc"] in proc.calls  # downloaded CT, refused by dicom_io's selection


def test_transient_errors_back_off_and_the_study_is_kept(
        orthanc: OrthancServer, synth_case: Path, factory: sessionmaker[Session]) -> None:
    _start_at_end(factory, orthanc)
    ct = restamp(read_series(case_dirs(synth_case)[0]))
    uid = ct[0].StudyInstanceUID
    assert set(c_store(orthanc.dicom_port, ct)) == {0}
    orthanc.wait_stable(uid)

    class Flaky(Counting):
        def __call__(self, study_dir: Path, study_uid: str, session: Session) -> ProcessResult:
            self.calls.append(study_uid)
            if len(self.calls) < 3:
                raise PacsUnavailableError("simulated outage")
            return volume_summary_processor(study_dir, study_uid, session)

    proc = Flaky()
    w = _watcher(factory, orthanc, proc)
    w.backoff = queue.Backoff(base_s=0.3, cap_s=0.3, max_attempts=5)
    first = w.run_once()
    assert [(o.state, "simulated outage" in (o.reason or "")) for o in first] == \
        [("queued", True)]
    row = _rows(factory)[uid]
    assert (row.state, row.attempts) == ("queued", 1)
    assert "PacsUnavailableError" in (row.reason or "")
    assert w.run_once() == []  # backoff: not due yet
    deadline = time.monotonic() + 10
    while _rows(factory)[uid].state != "done" and time.monotonic() < deadline:
        time.sleep(0.35)
        w.run_once()
    row = _rows(factory)[uid]
    assert (row.state, row.attempts, len(proc.calls)) == ("done", 3, 3)


def test_watch_killed_mid_study_then_restarted_processes_it_once(
        orthanc: OrthancServer, synth_case: Path, tmp_path: Path,
        factory: sessionmaker[Session]) -> None:
    ct = restamp(read_series(case_dirs(synth_case)[1]))
    uid = ct[0].StudyInstanceUID
    _start_at_end(factory, orthanc)
    assert set(c_store(orthanc.dicom_port, ct)) == {0}
    orthanc.wait_stable(uid)

    db = str(factory.kw["bind"].url)
    marker = tmp_path / "started"
    env = dict(os.environ, MEDASSIST_TEST_MARKER=str(marker), PYTHONPATH=str(REPO))
    child = subprocess.Popen(
        [sys.executable, "-m", "medassist.pacs", "watch", "--orthanc", orthanc.url, "--db", db,
         "--once", "--processor", "tests.pacs.helpers:slow_processor"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, child.communicate()[0].decode()[-2000:]
            assert time.monotonic() < deadline, "watcher never started the study"
            time.sleep(0.1)
        assert _rows(factory)[uid].state == "processing"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)

    proc = Counting()
    outcomes = _watcher(factory, orthanc, proc).run_once()
    assert [(o.study_uid, o.state) for o in outcomes] == [(uid, "done")]
    assert proc.calls == [uid]
    row = _rows(factory)[uid]
    assert (row.state, row.attempts) == ("done", 2)  # the killed attempt left no result
    assert json.loads(row.result_json or "{}")["instances"] == len(ct)
    assert _watcher(factory, orthanc, proc).run_once() == []


@pytest.mark.parametrize("bad", ["../../x", "1.2.3/../4", "1." * 40])
def test_invalid_study_uids_never_reach_the_queue(factory: sessionmaker[Session],
                                                  bad: str) -> None:
    from medassist.errors import InputError

    with unit_of_work(factory) as s, pytest.raises(InputError):
        queue.enqueue(s, bad, source="watch")
