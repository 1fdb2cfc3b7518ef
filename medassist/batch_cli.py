"""``medassist batch INPUT [--emr-dir D] [--db URL] [--workers N] [--limit N] [--checkpoint CK]
[--engine inprocess|ray] [--address auto|HOST:PORT] [--actors N] [--gpus-per-actor G]
[--batch-size B] [--job-log FILE]``.

Drafts reports for every study under INPUT through the ingest queue shared with ``pacs watch``
and ``pacs listen`` (source ``batch``): one row per StudyInstanceUID, claimed under a lease and
finished in the same transaction as the stored draft, so a killed run restarts where it stopped
with no duplicate and no lost report (a dead worker's claim is taken back at once on the same
host).  A study that fails is recorded with its stage and reason and the batch goes on.

Studies: every ``dicom/`` folder under INPUT (``medassist synth`` output, the EMR note is
the ``emr.txt`` beside it) and every ``*.zip`` file the same walk finds outside them, else every
sub-folder and ``*.zip`` file of INPUT (else INPUT itself).  A zip file is one study (its
members read as ``dicom_io`` reads an archive; the note beside it is ``<zip stem>.txt`` or
``.json``, or ``emr.txt`` above a ``dicom.zip``); one that is not a readable archive is recorded
with its reason and the batch goes on.  DICOM files that lie outside every study so found (loose
files directly in INPUT beside its sub-folders and zip files; a folder outside the ``dicom/``
folders) are not read: each such folder is recorded as failed, naming how many files and how
to make them a study.  A study found twice (a folder and its zip file: one StudyInstanceUID) is
drafted once; the other location is recorded as a skipped duplicate.  EMR notes in
``--emr-dir D`` are ``D/<StudyInstanceUID>.txt`` or ``D/<case folder or zip stem>.txt``
(or ``.json``).

Engines (docs/scale.md): ``inprocess`` (default) runs ``--workers`` processes on this machine,
each loading the checkpoint once (``PipelineProcessor``); ``ray`` runs the same stages on a Ray
cluster (decode in CPU tasks, batched inference in ``--actors`` actors holding the model),
through the same queue and storage, so a retried task never duplicates a report.  Ray is an
optional extra (``pip install 'medassist[ray]'``).

Exit status: 0 when every study is done (or skipped: no diagnostic CT), 1 when some failed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from medassist.errors import InputError, UsageError

if TYPE_CHECKING:  # the commands import these (SQLAlchemy) when they run, not the parser
    from sqlalchemy.orm import Session, sessionmaker

    from medassist.pacs.models import IngestItem

ENGINES = ("inprocess", "ray")


@dataclass(frozen=True)
class StudyFolder:
    """One study found under the batch input: a folder or a zip file (``path``)."""

    path: Path
    study_uid: str | None
    reason: str | None = None  # why no UID could be read (not queued)
    duplicate_of: Path | None = None  # an earlier location of the same StudyInstanceUID


def is_study_archive(path: Path) -> bool:
    """A file named ``*.zip`` (any case): one study, whatever it holds."""
    return path.suffix.lower() == ".zip" and path.is_file()


def _walk_studies(root: Path) -> tuple[list[Path], list[Path], dict[Path, list[str]]]:
    """Every folder named ``dicom`` under ``root`` and every ``*.zip`` file outside them,
    through symbolic links to folders too (an archive of links; ``Path.rglob`` does not follow
    them before Python 3.13), each real folder and file once (a link loop ends); and the
    other files of every folder outside them (by name, per folder: what no such study reads)."""
    dicom: list[Path] = []
    zips: list[Path] = []
    others: dict[Path, list[str]] = {}
    seen: set[str] = set()
    seen_zips: set[str] = set()
    for here, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()  # the first of two links to one study, in name order, is kept
        real = os.path.realpath(here)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        if Path(here).name == "dicom" and Path(here) != root:
            dicom.append(Path(here))
            dirs[:] = []  # a study's own subfolders hold no further studies
            continue  # nor do its files (the folder is the study)
        for name in sorted(files):
            p = Path(here) / name
            if not is_study_archive(p):
                others.setdefault(Path(here), []).append(name)
            elif os.path.realpath(p) not in seen_zips:
                seen_zips.add(os.path.realpath(p))
                zips.append(p)
    return sorted(dicom), sorted(zips), others


def input_studies(root: Path) -> tuple[list[Path], dict[Path, list[str]]]:
    """The studies under ``root`` (sorted): every ``dicom/`` folder and every ``*.zip`` file
    found outside them; when there is no ``dicom/`` folder, every sub-folder and ``*.zip`` file
    of ``root``, else ``root`` itself.  And, per folder, the files that no study so found
    reads (for :func:`unread_dicom`), from the same walk."""
    if not root.is_dir():
        raise InputError(f"batch input {root} is not a folder", path=str(root))
    dicom, zips, others = _walk_studies(root)
    if dicom:
        return sorted(dicom + zips), others
    subs = sorted(p for p in root.iterdir() if p.is_dir() or is_study_archive(p))
    if subs:  # the sub-folders are the studies: only the input's own files are left
        return subs, {root: others[root]} if root in others else {}
    return [root], {}


def study_folders(root: Path) -> list[Path]:
    """The studies of :func:`input_studies`."""
    return input_studies(root)[0]


_NO_UID = "enumerate: no readable DICOM file with a StudyInstanceUID"


def _is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file: ``DICM`` after the 128-byte preamble (what :func:`read_study_uid`
    reads; pydicom without ``force`` reads no other)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def unread_dicom(left: Mapping[Path, Sequence[str]]) -> list[StudyFolder]:
    """Of the files no study reads (:func:`input_studies`' second value, per folder), the
    DICOM ones: one entry per folder holding any, with how many and how to make them a study
    (loose files in INPUT beside its sub-folders and zip files, a folder outside the
    ``dicom/`` folders)."""
    out: list[StudyFolder] = []
    for folder, names in sorted(left.items()):
        loose = [n for n in names if _is_dicom_file(folder / n)]
        if loose:
            out.append(StudyFolder(folder, None, (
                f"enumerate: {len(loose)} DICOM file(s) in this folder (first {loose[0]!r}) "
                "lie outside every study found under the batch input (a dicom/ folder, a "
                "sub-folder of the input or a zip file) and were not read; move them into a "
                "folder of their own and run the batch again")))
    return out


def mark_duplicates(found: Sequence[StudyFolder]) -> list[StudyFolder]:
    """``found`` with each later location of a StudyInstanceUID already found marked
    ``duplicate_of`` the first (the queue drafts a study once)."""
    first: dict[str, Path] = {}
    out: list[StudyFolder] = []
    for f in found:
        if f.study_uid is not None and f.study_uid in first:
            out.append(StudyFolder(f.path, f.study_uid, f.reason, first[f.study_uid]))
            continue
        if f.study_uid is not None:
            first[f.study_uid] = f.path
        out.append(f)
    return out


def read_study_uid(folder: Path) -> StudyFolder:
    """The StudyInstanceUID of the first readable DICOM file (headers only) of a study folder
    or, for a zip file, of its first readable member (in name order)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if is_study_archive(folder):
        return _archive_study_uid(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "emr.txt")
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True,
                                 specific_tags=["StudyInstanceUID"])
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError):
            continue
        uid = ds.get("StudyInstanceUID")
        if uid:
            return StudyFolder(folder, str(uid))
    return StudyFolder(folder, None, _NO_UID)


def _archive_study_uid(archive: Path) -> StudyFolder:
    """:func:`read_study_uid` of a zip file: each member's headers are read from the archive
    (nothing is extracted), skipping what is not DICOM and, as ``dicom_io`` does, members
    larger than :data:`dicom_io.index.MAX_MEMBER_BYTES`."""
    import zipfile
    import zlib

    import pydicom
    from pydicom.errors import InvalidDicomError

    from dicom_io.index import MAX_MEMBER_BYTES

    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        return StudyFolder(archive, None, f"enumerate: not a readable zip archive "
                                          f"({type(exc).__name__}: {exc})")
    with zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir() or info.file_size > MAX_MEMBER_BYTES:
                continue
            try:
                with zf.open(info) as fh:
                    ds = pydicom.dcmread(fh, stop_before_pixels=True,
                                         specific_tags=["StudyInstanceUID"])
            except (InvalidDicomError, zipfile.BadZipFile, zlib.error, OSError, ValueError,
                    EOFError, KeyError, TypeError, RuntimeError, NotImplementedError):
                continue  # not DICOM, encrypted, or a damaged member
            uid = ds.get("StudyInstanceUID")
            if uid:
                return StudyFolder(archive, str(uid))
    return StudyFolder(archive, None, f"{_NO_UID} in the zip archive")


def _factory(db: str | None) -> sessionmaker[Session]:
    from medassist.storage import make_engine, resolve_db_url, session_factory, upgrade

    engine = make_engine(resolve_db_url(db))
    upgrade(engine)
    return session_factory(engine)


def enqueue_all(factory: sessionmaker[Session], folders: Sequence[StudyFolder]) -> int:
    """Queue every study (source ``batch``) in one transaction; returns how many were new."""
    from medassist.pacs import queue
    from medassist.storage import unit_of_work

    new = 0
    with unit_of_work(factory) as s:
        for f in folders:
            if f.study_uid is not None and f.duplicate_of is None:
                _, created = queue.enqueue(s, f.study_uid, source="batch",
                                           location=str(f.path.resolve()))
                new += int(created)
    return new


def worker_loop(db: str | None, checkpoint: str, emr_dir: str | None,
                max_studies: int | None = None) -> int:
    """Claim and process ``batch`` studies until none is due; returns how many it handled."""
    from medassist.pacs.watch import process_one
    from medassist.pipeline import PipelineProcessor

    factory = _factory(db)
    # the processor loads the checkpoint once, on its first study
    proc = PipelineProcessor(Path(checkpoint), emr_dir=Path(emr_dir) if emr_dir else None)
    n = 0
    while max_studies is None or n < max_studies:
        if process_one(factory, None, proc, sources=("batch",)) is None:
            break
        n += 1
    return n


def _worker_main(db: str | None, checkpoint: str, emr_dir: str | None) -> None:
    worker_loop(db, checkpoint, emr_dir)


def _rows(factory: sessionmaker[Session], uids: Sequence[str]) -> dict[str, IngestItem]:
    from sqlalchemy import select

    from medassist.pacs.models import IngestItem
    from medassist.storage import unit_of_work

    out: dict[str, IngestItem] = {}
    with unit_of_work(factory) as s:
        for i in range(0, len(uids), 500):
            for r in s.scalars(select(IngestItem).where(IngestItem.study_uid.in_(
                    uids[i:i + 500]))):
                s.expunge(r)
                out[r.study_uid] = r
    return out


def _progress(out: TextIO, finished: int, total: int, done_now: int, t0: float,
              final: bool = False) -> None:
    """``[####....] 3/20 studies  0.42 studies/s  ETA 40 s`` (redrawn in place on a TTY)."""
    tty = bool(getattr(out, "isatty", lambda: False)())
    dt = max(time.monotonic() - t0, 1e-6)
    rate = done_now / dt
    left = total - finished
    eta = f"{left / rate:5.0f} s" if rate > 0 else "    ? s"
    width = 24
    fill = int(width * finished / total) if total else width
    line = (f"[{'#' * fill}{'.' * (width - fill)}] {finished}/{total} studies  "
            f"{rate:5.2f} studies/s  ETA {eta}")
    out.write(f"\r{line}" + ("\n" if final else "") if tty else f"{line}\n")
    out.flush()


def run_batch(input_dir: Path, *, db: str | None, checkpoint: str, emr_dir: str | None = None,
              workers: int = 1, limit: int | None = None, err: TextIO = sys.stderr,
              out: TextIO = sys.stdout, engine: str = "inprocess",
              ray_config: Any = None, job_log: TextIO | None = None) -> dict[str, Any]:
    """Enumerate, enqueue, process, summarise; returns the summary.

    ``engine="ray"`` runs the studies on Ray (``ray_config``: a
    :class:`medassist.scale.ray_engine.RayConfig`); the summary then has ``events`` (the job
    log) and ``ray`` (start-up and processing seconds, cluster size)."""
    from medassist.pacs.models import IngestState
    from medassist.pipeline import PipelineProcessor
    from medassist.scale.stages import JobLog

    if engine not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if workers < 1:
        raise UsageError("--workers must be >= 1")
    if limit is not None and limit < 1:
        raise UsageError("--limit must be >= 1")
    ray_mod: Any = None
    if engine == "ray":
        from medassist.scale import ray_engine as ray_mod

        ray_mod.require_ray()  # a clear error before any work when Ray is missing
        if ray_config is None:
            ray_config = ray_mod.RayConfig()
    PipelineProcessor(Path(checkpoint))  # fail fast on a bad checkpoint, before any work
    every, left = input_studies(input_dir)
    folders = every[:limit] if limit is not None else every
    found = mark_duplicates([read_study_uid(f) for f in folders])
    found += unread_dicom(left)
    factory = _factory(db)
    enqueue_all(factory, found)
    uids = sorted({f.study_uid for f in found if f.study_uid is not None})
    final_states = (IngestState.DONE.value, IngestState.FAILED.value,
                    IngestState.NO_DIAGNOSTIC_CT.value)

    def finished_count() -> int:
        return sum(r.state in final_states for r in _rows(factory, uids).values())

    start_finished = finished_count()
    t0 = time.monotonic()
    _progress(err, start_finished, len(uids), 0, t0)
    extra: dict[str, Any] = {}
    jl = JobLog(out=job_log)
    jl.emit("start", engine=engine, studies=len(uids), already_finished=start_finished,
            workers=workers if engine == "inprocess" else None)
    if engine == "ray":
        from medassist.storage import resolve_db_url

        ctx = ray_mod.make_context(resolve_db_url(db), Path(checkpoint),
                                   Path(emr_dir) if emr_dir else None, ray_config)
        count = [start_finished]

        def on_row(r: dict[str, Any]) -> None:
            if r["state"] in final_states:
                count[0] += 1
                _progress(err, count[0], len(uids), count[0] - start_finished, t0)

        run = ray_mod.run_ray(factory, uids, ctx, ray_config, joblog=jl, on_row=on_row)
        extra = {"ray": {"startup_s": run.startup_s, "process_s": run.process_s,
                         "first_row_s": run.first_row_s, "actor_busy_s": run.actor_busy_s,
                         **run.cluster}}
    elif workers == 1:
        from medassist.pacs.watch import process_one

        proc = PipelineProcessor(Path(checkpoint), emr_dir=Path(emr_dir) if emr_dir else None)
        while process_one(factory, None, proc, sources=("batch",)) is not None:
            f = finished_count()
            _progress(err, f, len(uids), f - start_finished, t0)
    else:
        ctx_mp = multiprocessing.get_context("spawn")
        procs = [ctx_mp.Process(target=_worker_main, args=(db, checkpoint, emr_dir))
                 for _ in range(workers)]
        for p in procs:
            p.start()
        last = start_finished
        while any(p.is_alive() for p in procs):
            time.sleep(0.5)
            f = finished_count()
            if f != last:
                _progress(err, f, len(uids), f - start_finished, t0)
                last = f
        for p in procs:
            p.join()
    f = finished_count()
    _progress(err, f, len(uids), f - start_finished, t0, final=True)
    summary = summarise(_rows(factory, uids), found)
    summary.update(extra)
    summary["seconds"] = time.monotonic() - t0
    if engine == "inprocess":  # the Ray engine logged these as its rows came back
        for st in summary["studies"]:
            if st["state"] != IngestState.DONE.value:
                jl.emit("study_not_done", logging.WARNING, study_uid=st["study_uid"],
                        state=st["state"], reason=(st["reason"] or "")[:300])
    jl.emit("finish", **{k: summary[k] for k in ("done", "skipped", "failed", "pending")},
            seconds=round(summary["seconds"], 3))
    summary["events"] = jl.events
    write_table(summary, out)
    return summary


def summarise(rows: dict[str, IngestItem], found: Sequence[StudyFolder]) -> dict[str, Any]:
    """done / skipped / failed / pending, with the reasons of the ones not done."""
    from medassist.pacs.models import IngestState

    skipped_states = (IngestState.NO_DIAGNOSTIC_CT.value,)
    res: dict[str, Any] = {"done": 0, "skipped": 0, "failed": 0, "pending": 0, "studies": []}
    for f in found:
        if f.study_uid is None:
            res["failed"] += 1
            res["studies"].append({"folder": str(f.path), "study_uid": None,
                                   "state": "failed", "reason": f.reason})
            continue
        r = rows.get(f.study_uid)
        if f.duplicate_of is not None:
            res["skipped"] += 1
            res["studies"].append({"folder": str(f.path), "study_uid": f.study_uid,
                                   "state": "duplicate", "reason": (
                                       f"enumerate: the same StudyInstanceUID as {f.duplicate_of}, "
                                       "drafted once, from there")})
            continue
        state = r.state if r is not None else "missing"
        key = ("done" if state == IngestState.DONE.value else
               "skipped" if state in skipped_states else
               "failed" if state == IngestState.FAILED.value else "pending")
        res[key] += 1
        res["studies"].append({"folder": str(f.path), "study_uid": f.study_uid,
                               "state": state, "reason": r.reason if r is not None and
                               key != "done" else None})
    return res


def write_table(summary: dict[str, Any], out: TextIO) -> None:
    from medassist.pacs.models import IngestState

    out.write(f"{'result':<10}{'studies':>8}\n")
    for k in ("done", "skipped", "failed", "pending"):
        out.write(f"{k:<10}{summary[k]:>8}\n")
    rest = [s for s in summary["studies"] if s["state"] != IngestState.DONE.value]
    if rest:
        out.write("\nnot done:\n")
        for s in rest:
            reason = (s["reason"] or "").replace("\n", " ")
            out.write(f"  {s['state']:<17} {s['folder']}\n      {reason[:300]}\n")


def _ray_config(args: argparse.Namespace) -> Any:
    from medassist.scale.ray_engine import RayConfig

    return RayConfig(address=args.address, actors=args.actors,
                     gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
                     batch_size=args.batch_size)


def cmd_batch(args: argparse.Namespace) -> int:
    ray_opts = {"--address": args.address is not None, "--actors": args.actors is not None,
                "--gpus-per-actor": args.gpus_per_actor is not None,
                "--cpus-per-actor": args.cpus_per_actor is not None,
                "--batch-size": args.batch_size is not None}
    if args.engine != "ray":
        given = [k for k, v in ray_opts.items() if v]
        if given:
            raise UsageError(f"{', '.join(given)} only apply to --engine ray")
        ray_config = None
    else:
        if args.workers != 1:
            raise UsageError("--workers applies to --engine inprocess; use --actors with ray")
        from medassist.scale.ray_engine import require_ray

        require_ray()
        args.actors = 1 if args.actors is None else args.actors
        args.gpus_per_actor = 0.0 if args.gpus_per_actor is None else args.gpus_per_actor
        args.cpus_per_actor = 1.0 if args.cpus_per_actor is None else args.cpus_per_actor
        args.batch_size = 4 if args.batch_size is None else args.batch_size
        ray_config = _ray_config(args)
    with contextlib.ExitStack() as stack:
        log_fh = (stack.enter_context(Path(args.job_log).open("a", encoding="utf-8"))
                  if args.job_log else None)
        summary = run_batch(Path(args.input), db=args.db, checkpoint=args.checkpoint,
                            emr_dir=args.emr_dir, workers=args.workers, limit=args.limit,
                            engine=args.engine, ray_config=ray_config, job_log=log_fh)
    return 0 if summary["failed"] == 0 and summary["pending"] == 0 else 1


def add_parser(sub: Any) -> None:
    """Register ``batch`` on an argparse subparsers object."""
    from medassist.defaults import DEFAULT_CHECKPOINT

    p = sub.add_parser("batch", help="draft reports for every study under a folder "
                                     "(resumable, through the ingest queue)")
    p.add_argument("input", help="folder with one sub-folder or zip file per study (or "
                                 "medassist synth output: its dicom/ folders)")
    p.add_argument("--emr-dir", default=None,
                   help="EMR notes as <StudyInstanceUID>.txt or <case folder or zip "
                        "stem>.txt")
    p.add_argument("--db", default=None, help="database URL (default: $MEDASSIST_DB_URL, "
                                              "else the local SQLite file)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--limit", type=int, default=None, help="at most N studies")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--engine", choices=ENGINES, default="inprocess",
                   help="inprocess (default: --workers processes here) or ray (a Ray "
                        "cluster; pip install 'medassist[ray]')")
    p.add_argument("--address", default=None,
                   help="ray: 'auto' or HOST:PORT of a running cluster (default: start a "
                        "private local Ray)")
    p.add_argument("--actors", type=int, default=None,
                   help="ray: model actors, each loading the checkpoint once (default 1)")
    p.add_argument("--gpus-per-actor", type=float, default=None,
                   help="ray: GPUs reserved per actor (default 0)")
    p.add_argument("--cpus-per-actor", type=float, default=None,
                   help="ray: CPUs reserved per actor (default 1)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="ray: studies per model forward pass (default 4)")
    p.add_argument("--job-log", default=None,
                   help="append the run's job log (JSON lines) to FILE")
    p.set_defaults(func=cmd_batch)


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (until ``add_parser`` is wired into ``medassist.cli``)."""
    import logging

    from dicom_io.errors import DicomIOError
    from medassist.errors import MedAssistError

    ap = argparse.ArgumentParser(prog="medassist-batch")
    add_parser(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except MedAssistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except DicomIOError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
