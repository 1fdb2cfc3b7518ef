"""Fixtures of the review-app tests: generated studies drafted by a tiny model trained in
seconds, seeded into a template SQLite database that each test copies.

Studies (all from the case generator, drafted through the real pipeline and batch):
- ``model``: three cases drafted by the tiny model (it detects nothing, as expected);
- ``xss``: a case whose EMR note ends with ``<script>`` and ``<img onerror>`` payloads;
- ``truth``: a case whose draft is the model's, with the generator's *ground-truth* lesion
  written in as a present finding with its evidence box and slices (a test fixture to
  exercise the overlay and the jump-to-slice: the tiny model finds nothing to box);
- a corrupt case (truncated instance) that fails in the batch, for the batch-status view.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from medassist.storage import Report, Study, make_engine, session_factory, unit_of_work, upgrade

ROOT = Path(__file__).resolve().parents[2]
XSS = "<script>alert('emr')</script> <img src=x onerror=\"alert('img')\">"
USERS = {
    "dr.alice": ("Dr Alice Able", "clinician", "alice-password-1"),
    "dr.bob": ("Dr Bob Baker", "clinician", "bob-password-22"),
    "aud.ann": ("Ann Auditor", "auditor", "ann-password-333"),
    "adm.adam": ("Adam Admin", "admin", "adam-password-4444"),
}


@dataclass(frozen=True)
class Seeded:
    db: Path                      # the template database (copy it before writing)
    cases: dict[str, Path]        # name -> case folder
    reports: dict[str, int]       # name -> report ID
    study_uids: dict[str, str]
    checkpoint: Path


def _truth_box(case: Path) -> tuple[str, list[int], float]:
    """The first ground-truth finding of ``case``: its label, its box in volume indices
    (k0, i0, j0, k1, i1, j1) and its size, from truth.json and the volume's affine."""
    from dicom_io.volume import load_volume

    truth = json.loads((case / "truth.json").read_text(encoding="utf-8"))
    f = truth["findings"][0]
    vol = load_volume(case / "dicom")
    inv = np.linalg.inv(vol.affine)
    c = np.array([f["center_mm"][a] for a in "xyz"])
    e = np.array([f["extent_mm"][a] for a in "xyz"]) / 2.0
    corners = np.array([c + np.array(s) * e for s in itertools.product((-1, 1), repeat=3)])
    idx = (inv @ np.c_[corners, np.ones(8)].T)[:3].T
    lo = np.clip(np.floor(idx.min(axis=0)), 0, np.array(vol.shape) - 1).astype(int)
    hi = np.clip(np.ceil(idx.max(axis=0)), 0, np.array(vol.shape) - 1).astype(int)
    return str(f["kind"]), [*lo.tolist(), *hi.tolist()], float(f["size_mm"])


def _store_truth_case(url: str, case: Path, checkpoint: Path) -> None:
    from medassist.draft import ReportDraft
    from medassist.pacs import queue
    from medassist.pacs.models import IngestItem
    from medassist.pipeline import draft, patient_pseudonym, select_series, store

    series = select_series(case / "dicom")
    d = draft(case / "dicom", case / "emr.txt", checkpoint).to_dict()
    label, box, size = _truth_box(case)
    emr = (case / "emr.txt").read_text(encoding="utf-8")
    a = emr.index("\n", emr.index("\n") + 1) + 1  # the third line of the note
    for f in d["findings"]:
        if f["label"] == label:
            f.update(present=True, probability=0.9, size_mm=round(size, 1), flags=[],
                     sentence=f"{label.replace('_', ' ')} measuring {size:.0f} mm.")
            f["evidence"].update(slices=list(range(box[0], box[3] + 1)), box_voxels=box,
                                 emr_spans=[[a, a + 40]])
    rd = ReportDraft.from_dict(d)
    engine = make_engine(url)
    with unit_of_work(session_factory(engine)) as s:
        store(s, rd, study_uid=series.study_uid,
              patient_pseudo_id=patient_pseudonym(series.first.patient_id),
              input_key=hashlib.sha256(b"ui-test-truth" + series.study_uid.encode()).hexdigest(),
              n_images=series.n_images)
        queue.enqueue(s, series.study_uid, source="batch", location=str(case / "dicom"))
        row = s.scalars(select(IngestItem).where(IngestItem.study_uid == series.study_uid)).one()
        row.state = "done"
    engine.dispose()


@pytest.fixture(scope="session")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    import io

    from medassist.batch_cli import run_batch
    from medassist.model_cli import TrainConfig, train
    from ui.seed import ensure_user, generate_cases

    base = tmp_path_factory.mktemp("ui-seed")
    ck = base / "ck"
    optim = {"seed": 0, "steps": 2, "batch_size": 2, "grad_accum": 1, "lr": 3e-3,
             "warmup_steps": 1, "checkpoint_every": 2, "log_every": 100}
    train(TrainConfig(model_config=str(ROOT / "configs/model/tiny.yaml"),
                      synth_config=str(ROOT / "configs/synth/small.yaml"), data_seed=3,
                      train_cases=2, max_emr_tokens=256, out=str(ck), optim=optim))
    batch = base / "batch"
    cases = generate_cases(batch, [0, 2, 3, 4])
    # the EMR note of case 4 ends with HTML/script payloads (shown as text, never run)
    xss_emr = cases[3] / "emr.txt"
    xss_emr.write_text(xss_emr.read_text(encoding="utf-8") + "\nNote: " + XSS + "\n",
                       encoding="utf-8")
    # a corrupt study: one instance truncated (fails at build_volume)
    (bad,) = generate_cases(base / "tmp-bad", [5])
    bad_dst = batch / "case_bad"
    shutil.copytree(bad, bad_dst)
    victim = sorted(p for p in (bad_dst / "dicom").rglob("*") if p.is_file())[10]
    victim.write_bytes(victim.read_bytes()[:200])
    db = base / "template.db"
    url = f"sqlite:///{db}"
    engine = make_engine(url)
    upgrade(engine)
    factory = session_factory(engine)
    sink = io.StringIO()
    summary = run_batch(batch, db=url, checkpoint=str(ck), err=sink, out=sink)
    assert (summary["done"], summary["failed"]) == (4, 1), sink.getvalue()
    # case 1 has ground-truth findings (seed 11): the overlay fixture
    (truth_case,) = generate_cases(base / "extra", [1])
    _store_truth_case(url, truth_case, ck)
    for name, (display, role, pw) in USERS.items():
        ensure_user(factory, name, display, role, pw)
    names = {"model0": cases[0], "model1": cases[1], "model2": cases[2], "xss": cases[3],
             "truth": truth_case}
    from medassist.pipeline import select_series

    uids = {k: select_series(v / "dicom").study_uid for k, v in names.items()}
    with unit_of_work(factory) as s:
        reps = {k: s.scalars(select(Report.id).join(Study, Report.study_id == Study.id)
                             .where(Study.study_uid == u)).one() for k, u in uids.items()}
    engine.dispose()
    import sqlite3

    con = sqlite3.connect(db)  # fold the WAL into the file so that a plain copy is complete
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return Seeded(db=db, cases=names, reports=reps, study_uids=uids, checkpoint=ck)


def copy_db(seeded: Seeded, dest: Path) -> str:
    import sqlite3

    src = sqlite3.connect(seeded.db)
    dst = sqlite3.connect(dest)
    src.backup(dst)
    dst.close()
    src.close()
    return f"sqlite:///{dest}"
