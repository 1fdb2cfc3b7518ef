"""The batch pipeline split into the stages that a batch engine schedules (issue 8).

The in-process engine runs :class:`medassist.pipeline.PipelineProcessor` (every stage of one
study, the checkpoint loaded once per worker) inside :func:`medassist.pacs.watch.process_one`.
The Ray engine (:mod:`medassist.scale.ray_engine`) needs the same stages cut where the work
changes hands: :func:`prepare_study` runs in Ray CPU tasks, :func:`draft_batch` (batched
:func:`medassist.drafting.infer`) in actors holding the model, and :func:`store_study` plus
the queue's ``finish`` in the actor, in one transaction per study.  They call the pipeline's
own stage functions (``select_series``, ``find_emr``, ``hash_inputs``,
``cross_check_identity``, ``store``), and ``tests/scale`` checks that both engines store the
same reports.

Stages (names as in :mod:`medassist.pipeline`, and in the queue's reasons):
``select_series`` → ``find_emr`` → ``build_volume`` (decode + resample to the model grid) →
``hash_inputs`` (CPU, :func:`prepare_study`) → ``draft`` (model, batched) →
``cross_check_identity`` → ``store`` (:func:`store_study`).

Idempotency is the pipeline's: the input key (series files, EMR bytes, checkpoint) names the
job, and the same key returns the stored report, so a retried task never duplicates a report.
The queue row's claim token makes each study's result commit at most once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_io.errors import DicomIOError, NoDiagnosticSeriesError
from dicom_io.index import SeriesIndex
from medassist import audit
from medassist.audit import Actor
from medassist.drafting import LoadedModel, Prepared
from medassist.emr import read_emr
from medassist.errors import (
    DraftError,
    InputError,
    MedAssistError,
    NotAChestCTError,
    PacsError,
    PipelineError,
    QueueStateError,
    RefusalError,
    StorageError,
)
from medassist.pacs import queue
from medassist.pacs.models import IngestItem, IngestState
from medassist.pipeline import Stored

log = logging.getLogger("medassist.batch")


@dataclass
class PreparedStudy:
    """The CPU side of one study, ready for the model (picklable: crosses Ray's object store).

    ``series`` keeps the instance headers for the identity cross-check; ``prepared`` is the
    resampled volume and the EMR text that were hashed into ``input_key``."""

    study_uid: str
    folder: str
    series: SeriesIndex
    input_key: str
    emr_sha256: str | None
    prepared: Prepared


def prepare_study(study_dir: Path, study_uid: str | None, model_cfg: Any,
                  checkpoint_sha256: str, *, emr_dir: Path | None = None,
                  require_emr: bool = True) -> PreparedStudy:
    """``select_series`` → ``find_emr`` → ``build_volume`` → ``hash_inputs`` (CPU only).

    Raises dicom_io's :class:`NoDiagnosticSeriesError` unchanged (the queue's
    ``no_diagnostic_ct``) and :class:`PipelineError` naming the stage for anything else."""
    from medassist.drafting import prepare
    from medassist.pipeline import find_emr, hash_inputs, select_series, series_sources

    study_dir = Path(study_dir)
    series = select_series(study_dir, study_uid)
    uid = series.study_uid
    emr_path = find_emr(study_dir, uid, emr_dir)
    try:  # one decode: dicom_io reads and assembles the series, then it is resampled
        prep = prepare(study_dir, None, model_cfg)
    except NoDiagnosticSeriesError:
        raise
    except DicomIOError as exc:
        raise PipelineError(f"{type(exc).__name__}: {exc}", stage="build_volume",
                            path=exc.path, kind=type(exc).__name__) from exc
    except NotAChestCTError as exc:  # as the in-process pipeline's draft stage says it
        raise PipelineError(f"{type(exc).__name__}: {exc}", stage="draft", path=exc.path,
                            kind=type(exc).__name__) from exc
    if prep.study.series_uid != series.series_uid:
        raise PipelineError("the volume was built from another series than the one selected",
                            stage="build_volume", kind="SeriesMismatch")
    if emr_path is None and require_emr:
        raise PipelineError("no EMR note found for the study (emr.txt next to the DICOM "
                            "folder or --emr-dir); the draft contract needs one",
                            stage="find_emr", kind="MissingEMR")
    try:  # text, or the note a FHIR Bundle / DocumentReference holds
        emr = read_emr(emr_path) if emr_path is not None else None
    except InputError as exc:
        raise PipelineError(str(exc).removeprefix(f"{exc.path}: "), stage="find_emr",
                            path=exc.path, kind=exc.kind) from exc
    emr_text = emr.text if emr is not None else None
    key = hash_inputs(series_sources(series), emr_text, checkpoint_sha256)
    emr_sha = hashlib.sha256(emr_text.encode("utf-8")).hexdigest() if emr_text is not None \
        else None
    prepared = Prepared(study=prep.study, emr=emr_text,
                        emr_facts=emr.facts if emr is not None else frozenset())
    return PreparedStudy(study_uid=uid, folder=str(study_dir), series=series, input_key=key,
                         emr_sha256=emr_sha, prepared=prepared)


def draft_batch(lm: LoadedModel, batch: Sequence[PreparedStudy], threshold: float | None = None
                ) -> list[dict[str, Any] | PipelineError]:
    """The model on a batch (one forward pass).  When the batch fails as a whole, each study
    is retried alone so that one bad study fails alone (stage ``draft``)."""
    from medassist.drafting import ModelCLIError, infer
    from multimodal.errors import MultimodalError

    caught = (ModelCLIError, MultimodalError, DicomIOError)

    def err(exc: Exception) -> PipelineError:
        return PipelineError(f"{type(exc).__name__}: {exc}", stage="draft",
                             kind=type(exc).__name__)

    if not batch:
        return []
    try:
        return list(infer(lm, [p.prepared for p in batch], threshold=threshold))
    except caught as exc:
        if len(batch) == 1:
            return [err(exc)]
    out: list[dict[str, Any] | PipelineError] = []
    for p in batch:
        try:
            out.append(infer(lm, [p.prepared], threshold=threshold)[0])
        except caught as exc:
            out.append(err(exc))
    return out


def store_study(session: Session, ps: PreparedStudy, data: Mapping[str, Any], *,
                checkpoint_sha256: str, labels: Sequence[str],
                pseudonym_key: bytes | None = None, actor: Actor = audit.SYSTEM) -> Stored:
    """``cross_check_identity`` → validate the draft → ``store`` (idempotent on the input key).

    The caller owns the transaction (and commits the queue's ``finish`` in the same one)."""
    from medassist.draft import ReportDraft
    from medassist.pipeline import cross_check_identity, patient_pseudonym, store

    series, emr = ps.series, ps.prepared.emr
    cross_check_identity(session, series, emr, study_uid=ps.study_uid, actor=actor)
    pids = {h.patient_id.strip() for h in series.instances if h.patient_id.strip()}
    if len(pids) != 1:
        raise PipelineError(f"the series carries {len(pids)} distinct patient IDs; expected "
                            "exactly one", stage="cross_check_identity", kind="PatientID")
    try:
        d = ReportDraft.from_dict(dict(data), labels=tuple(labels))
    except DraftError as exc:
        raise PipelineError(f"DraftError: {exc}", stage="draft", kind="DraftError") from exc
    for what, want, got in (("series", series.series_uid, d.inputs.series_uid),
                            ("checkpoint", checkpoint_sha256, d.model.checkpoint_sha256),
                            ("EMR", ps.emr_sha256, d.inputs.emr_sha256)):
        if want is not None and want != got:
            raise PipelineError(f"the {what} changed while the study was processed",
                                stage="draft", kind="InputChanged")
    try:
        return store(session, d, study_uid=ps.study_uid,
                     patient_pseudo_id=patient_pseudonym(pids.pop(), pseudonym_key),
                     input_key=ps.input_key, n_images=len(series.instances), actor=actor)
    except (PipelineError, StorageError, RefusalError):
        raise
    except MedAssistError as exc:  # e.g. the study is stored for another patient
        raise PipelineError(f"{type(exc).__name__}: {exc}", stage="store",
                            kind=type(exc).__name__) from exc


def result_summary(stored: Stored, input_key: str) -> dict[str, Any]:
    """What the queue row keeps (``result_json``): no PHI."""
    return {"kind": "draft", "report_id": stored.report_id, "job_id": stored.job_id,
            "input_key": input_key, "created": stored.created}


# --------------------------------------------------------------------------- job log


@dataclass
class JobLog:
    """The run's job log: every event is logged (``medassist.batch``), kept in ``events``
    and, with ``out``, written as one JSON line (UTC time, event, fields; no PHI)."""

    out: TextIO | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def emit(self, event: str, level: int = logging.INFO, **fields: Any) -> None:
        rec = {"time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "event": event,
               **fields}
        self.events.append(rec)
        log.log(level, "%s %s", event, json.dumps(fields, sort_keys=True, default=str))
        if self.out is not None:
            self.out.write(json.dumps(rec, sort_keys=True, default=str) + "\n")
            self.out.flush()

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]


# --------------------------------------------------------------------------- queue helpers


@dataclass(frozen=True)
class Failure:
    """How a failed study is recorded: ``state`` and ``reason`` (``Type: stage: why``);
    ``transient`` ones go back to ``queued`` with a backoff (as in ``pacs watch``)."""

    state: IngestState
    reason: str
    transient: bool


def classify(exc: BaseException) -> Failure:
    """The same mapping as :func:`medassist.pacs.watch.process_one`."""
    reason = f"{type(exc).__name__}: {exc}"[:4000]
    if isinstance(exc, NoDiagnosticSeriesError):
        return Failure(IngestState.NO_DIAGNOSTIC_CT, f"no diagnostic CT series: {exc.reason}",
                       False)
    if isinstance(exc, StorageError | OSError | TimeoutError):
        return Failure(IngestState.FAILED, reason, True)
    if isinstance(exc, DicomIOError | InputError | PacsError | RefusalError):
        return Failure(IngestState.FAILED, reason, False)
    return Failure(IngestState.FAILED, reason, True)


def record_failure(session: Session, claim: queue.Claim, failure: Failure) -> str:
    """Close the claim with ``failure``; returns the row's state afterwards."""
    if failure.state == IngestState.FAILED:
        return queue.fail(session, claim, failure.reason, transient=failure.transient).state
    return queue.finish(session, claim, state=failure.state, reason=failure.reason).state


def _aware(t: datetime | None) -> datetime | None:
    return t if t is None or t.tzinfo is not None else t.replace(tzinfo=UTC)


def claim_study(session: Session, study_uid: str, *, owner: str, lease_s: float = 1800.0
                ) -> queue.Claim | None:
    """Claim one given study for a run whose claims are all made under ``owner`` (the Ray
    driver's ``host:pid``, so a rerun after the driver died takes them back at once).

    Due ``queued`` rows are claimed as :func:`queue.claim` does.  A row already
    ``processing`` under the same ``owner`` is claimed again with a fresh token: within one
    run each study is scheduled once, so that is a retry of a task whose process died (the
    earlier attempt, if it somehow lives on, can no longer finish: its token is void).
    Anything else (done, failed, claimed by another run, backing off) returns None."""
    import uuid

    from medassist.storage.engine import backend

    stmt = select(IngestItem).where(IngestItem.study_uid == study_uid)
    if backend(session) == "postgresql":
        stmt = stmt.with_for_update()
    row = session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()
    if row is None:
        return None
    now = queue.utcnow()
    due_at = _aware(row.next_attempt_at)
    due = row.state == IngestState.QUEUED.value and (due_at is None or due_at <= now)
    retry = row.state == IngestState.PROCESSING.value and row.claimed_by == owner[:128]
    if not (due or retry):
        return None
    if retry:
        row.reason = f"attempt {row.attempts} was interrupted (its task was retried)"
        log.warning("study %s: attempt %d was interrupted; retrying", study_uid, row.attempts)
    token = uuid.uuid4().hex
    row.state = IngestState.PROCESSING.value
    row.attempts += 1
    row.claimed_by = owner[:128]
    row.claim_token = token
    row.lease_until = now + timedelta(seconds=lease_s)
    row.updated_at = now
    session.flush()
    return queue.Claim(row.id, row.study_uid, row.location, row.source, token, row.attempts)


def row_state(session: Session, study_uid: str) -> str | None:
    row = session.scalars(select(IngestItem).where(IngestItem.study_uid == study_uid)
                          .execution_options(populate_existing=True)).one_or_none()
    return None if row is None else row.state


__all__ = ["Failure", "JobLog", "PreparedStudy", "QueueStateError", "claim_study",
           "classify", "draft_batch", "prepare_study", "record_failure", "result_summary",
           "row_state", "store_study"]
