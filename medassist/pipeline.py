"""The report pipeline: study → select series → volume → hash inputs → identity check → model
draft → store (issue 5, section 2).

Each stage is a small typed function; a failure raises :class:`PipelineError` whose ``stage``
names where it failed (the ingest queue keeps ``"<stage>: <reason>"``).  A study without a
diagnostic CT series raises dicom_io's :class:`NoDiagnosticSeriesError` unchanged, so the
queue records it as ``no_diagnostic_ct``.

Idempotency: :func:`hash_inputs` gives a key over the instance files, the EMR bytes and the
model checkpoint; :func:`store` records it as the ``jobs.input_key`` of the stored report, and
the same key returns the same report (no duplicate).

:class:`PipelineProcessor` implements :class:`medassist.pacs.watch.StudyProcessor`:
``medassist pacs watch --processor medassist.pipeline:default_processor`` plugs it in
(checkpoint from ``$MEDASSIST_CHECKPOINT``, else ``models/demo``; EMR notes from
``$MEDASSIST_EMR_DIR``).  Functions take a Session and never commit.  No PHI is logged: the
patient is stored under a pseudonym (HMAC-SHA-256 of the PatientID with
``$MEDASSIST_PSEUDONYM_KEY``, or a plain salted SHA-256 without it).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_io.errors import DicomIOError, NoDiagnosticSeriesError
from dicom_io.header import Header
from dicom_io.index import SeriesIndex
from dicom_io.volume import Volume
from medassist import audit
from medassist.audit import Actor, ObjectType
from medassist.draft import ReportDraft
from medassist.drafting import LoadedModel
from medassist.emr import read_note
from medassist.errors import (
    DraftError,
    IdentityMismatchError,
    InputError,
    MedAssistError,
    NotAChestCTError,
    PipelineError,
    RefusalError,
    StorageError,
    UsageError,
)
from medassist.pacs.watch import ProcessResult
from medassist.storage.models import Job, JobStatus, Report

log = logging.getLogger("medassist.pipeline")

STAGES = ("select_series", "build_volume", "find_emr", "hash_inputs", "cross_check_identity",
          "draft", "store")
PSEUDONYM_KEY_ENV = "MEDASSIST_PSEUDONYM_KEY"
CHECKPOINT_ENV = "MEDASSIST_CHECKPOINT"
EMR_DIR_ENV = "MEDASSIST_EMR_DIR"

# The EMR header line (``MRN: 12345678``); "MRN 123" without a colon in the body (prior
# studies filed under another MRN) is not the patient's identity and is not matched.
_MRN_RE = re.compile(r"\bMRN\s*[:#]\s*([A-Za-z0-9][A-Za-z0-9\-]*)")
_ACC_RE = re.compile(r"\b(?:Accession(?:\s*(?:No\.?|Number|#))?|Acc\.?\s*(?:No\.?|#)?)\s*:\s*"
                     r"([A-Za-z0-9][A-Za-z0-9\-]*)", re.I)
# The date of birth the note states: "DOB: 04/02/1968", "Date of birth: 1968-04-02",
# "D.O.B. 02.04.1968"; first occurrence.
_DOB_RE = re.compile(r"\b(?:DOB|D\.O\.B\.?|Date\s+of\s+birth|Birth\s*date)\s*[:#]?\s*"
                     r"(\d{1,2}[/.\-]\d{1,2}[/.\-]\d{4}|\d{4}-\d{1,2}-\d{1,2}|\d{8})\b", re.I)
# The patient's sex: a "Sex: F" / "Gender: male" field, else the first "54 yo F" /
# "54-year-old man" (the HPI's opening; a relative named later is not read).
_SEX_FIELD_RE = re.compile(r"\b(?:Sex|Gender)\s*[:#]\s*(female|male|woman|man|F|M)\b", re.I)
_SEX_AGE_RE = re.compile(r"\b\d{1,3}\s*(?:yo|y/o|y\.o\.|-?\s*years?[- ]old)\s+"
                         r"(female|male|woman|man|gentleman|lady|F|M)\b", re.I)
_SEX_WORDS = {"f": "F", "female": "F", "woman": "F", "lady": "F",
              "m": "M", "male": "M", "man": "M", "gentleman": "M"}


# --------------------------------------------------------------------------- stages


def select_series(study_dir: Path, study_uid: str | None = None) -> SeriesIndex:
    """Index ``study_dir`` and choose its diagnostic CT series (``dicom_io.select_single``).

    Raises :class:`NoDiagnosticSeriesError` unchanged (the queue's ``no_diagnostic_ct``) and
    :class:`PipelineError` (stage ``select_series``) for anything else, including a study UID
    that differs from the one queued.
    """
    from dicom_io.index import scan
    from dicom_io.select import select_single

    try:
        series = select_single(scan(study_dir, workers=1))
    except NoDiagnosticSeriesError:
        raise
    except DicomIOError as exc:
        raise PipelineError(f"{type(exc).__name__}: {exc}", stage="select_series",
                            path=exc.path, kind=type(exc).__name__) from exc
    if study_uid is not None and series.study_uid != study_uid:
        raise PipelineError(f"the files hold study {series.study_uid}, not the queued study "
                            f"{study_uid}", stage="select_series", kind="StudyMismatch")
    return series


def build_volume(series: SeriesIndex) -> Volume:
    """Assemble the HU volume (``dicom_io.assemble``): truncated or inconsistent files fail here."""
    from dicom_io.volume import assemble

    try:
        return assemble(series)
    except DicomIOError as exc:
        raise PipelineError(f"{type(exc).__name__}: {exc}", stage="build_volume",
                            path=exc.path, kind=type(exc).__name__) from exc


def series_files(series: SeriesIndex) -> list[Path]:
    """The instance files of the series (sorted, unique): for a study in a zip file, the
    archive itself (what :func:`hash_inputs` hashes)."""
    return sorted({Path(h.path) for h in series.instances})


def series_sources(series: SeriesIndex) -> list[str]:
    """The instances of the series as ``dicom_io`` names them (sorted, unique): file paths,
    or ``archive.zip!member`` for a study in a zip file, each member once; what the SR export
    reads (:func:`medassist.export.sr.read_source_dataset`)."""
    return sorted({h.source for h in series.instances})


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _source_sha256(source: str | Path) -> str:
    """SHA-256 of one instance's bytes: a file (streamed), or a zip archive's member
    (``archive.zip!member``, read through :func:`dicom_io.volume.read_source`)."""
    if Path(source).is_file():
        return _file_sha256(Path(source))
    from dicom_io.volume import read_source

    return hashlib.sha256(read_source(str(source))).hexdigest()


def hash_inputs(files: Sequence[str | Path], emr_text: str | None,
                checkpoint_sha256: str) -> str:
    """The idempotency key: SHA-256 over the sorted per-instance SHA-256 digests, the EMR bytes
    (UTF-8) and the model checkpoint hash, each part length-delimited.

    ``files`` are the series' instances as :func:`series_sources` names them, so a study kept
    in a zip file hashes its series' members, not the archive: the same instances give the
    same key as a folder, a zip file or a zip file written again (since stop 37; the archive's
    own bytes, other series and files in it included, were hashed before)."""
    try:
        digests = sorted(_source_sha256(f) for f in files)
    except (OSError, DicomIOError) as exc:
        raise PipelineError(f"cannot read an instance file: {type(exc).__name__}",
                            stage="hash_inputs", kind=type(exc).__name__) from exc
    h = hashlib.sha256(b"medassist-pipeline-inputs/1\n")
    h.update(f"files {len(digests)}\n".encode())
    for d in digests:
        h.update(d.encode() + b"\n")
    emr = emr_text.encode("utf-8") if emr_text is not None else b""
    h.update(f"emr {len(emr) if emr_text is not None else -1}\n".encode())
    h.update(emr)
    h.update(f"\ncheckpoint {checkpoint_sha256}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class EmrIdentity:
    """What the EMR states about whom it describes (None = not stated).

    ``birth_dates``: the DICOM dates (YYYYMMDD) the note's date of birth can stand for: a
    day and month both 12 or less ("04/02/1968") are read both ways, as a note does not say
    which order it writes.  ``sex``: "F" or "M"."""

    mrn: str | None
    accession: str | None
    birth_dates: frozenset[str] | None = None
    sex: str | None = None


def _dicom_dates(text: str) -> frozenset[str] | None:
    """The valid YYYYMMDD dates a written date can mean (None: none is a valid date)."""
    import datetime

    parts = [int(v) for v in re.split(r"[/.\-]", text)] if not text.isdigit() else \
        [int(text[:4]), int(text[4:6]), int(text[6:])]
    if len(parts) != 3:
        return None
    if parts[0] > 31:  # year first: YYYY-MM-DD (and YYYYMMDD)
        orders = [(parts[0], parts[1], parts[2])]
    else:  # MM/DD/YYYY or DD/MM/YYYY
        orders = [(parts[2], parts[0], parts[1]), (parts[2], parts[1], parts[0])]
    out = set()
    for y, mo, d in orders:
        try:
            out.add(datetime.date(y, mo, d).strftime("%Y%m%d"))
        except ValueError:
            continue
    return frozenset(out) or None


def emr_identity(emr_text: str) -> EmrIdentity:
    """The patient MRN (``MRN: ...``, first occurrence), accession, date of birth and sex the
    note states."""
    m = _MRN_RE.search(emr_text)
    a = _ACC_RE.search(emr_text)
    b = _DOB_RE.search(emr_text)
    x = _SEX_FIELD_RE.search(emr_text) or _SEX_AGE_RE.search(emr_text)
    return EmrIdentity(mrn=m.group(1) if m else None, accession=a.group(1) if a else None,
                       birth_dates=_dicom_dates(b.group(1)) if b else None,
                       sex=_SEX_WORDS[x.group(1).lower()] if x else None)


def identity_mismatches(instances: Sequence[Header], emr_text: str) -> list[str]:
    """What the note states about its patient that the series' DICOM contradicts, in the
    order MRN, accession, date of birth, sex (empty: nothing does).  An item the note does
    not state, or the DICOM does not carry (e.g. de-identified; a PatientSex of "O"), is
    not compared.  Returns names only ("date of birth"), never a value."""
    ident = emr_identity(emr_text)
    out = []
    for what, stated, dicom_values in (
            ("patient ID (MRN)", ident.mrn, {h.patient_id for h in instances}),
            ("accession number", ident.accession, {h.accession_number for h in instances})):
        if stated is None:
            continue
        dicom_norm = {v.strip().upper() for v in dicom_values if v and v.strip()}
        if dicom_norm and dicom_norm != {stated.strip().upper()}:
            out.append(what)
    dobs = {h.patient_birth_date.strip() for h in instances if h.patient_birth_date.strip()}
    if ident.birth_dates is not None and dobs and not dobs <= ident.birth_dates:
        out.append("date of birth")
    sexes = {h.patient_sex for h in instances if h.patient_sex in ("F", "M")}
    if ident.sex is not None and sexes and sexes != {ident.sex}:
        out.append("sex")
    return out


def identity_reason(bad: Sequence[str]) -> str:
    """The refusal's reason for :func:`identity_mismatches`' non-empty result (names only)."""
    if not bad:
        raise ValueError("identity_reason needs at least one mismatch")
    reason = f"EMR {bad[0]} does not match the DICOM {bad[0]}"
    return reason + (f" (also different: {', '.join(bad[1:])})" if len(bad) > 1 else "")


def cross_check_identity(session: Session, series: SeriesIndex, emr_text: str | None, *,
                         study_uid: str, actor: Actor = audit.SYSTEM) -> None:
    """Refuse (audited) when the EMR's MRN, accession, date of birth or sex differs from the
    DICOM PatientID, AccessionNumber, PatientBirthDate or PatientSex
    (:func:`identity_mismatches`).  Only what differs is named: no value reaches the
    message, the log or the audit row."""
    from medassist.auth import refuse

    if emr_text is None:
        return
    bad = identity_mismatches(series.instances, emr_text)
    if bad:
        reason = identity_reason(bad)
        log.warning("study %s: identity cross-check failed (%s)", study_uid, ", ".join(bad))
        raise refuse(session, actor, ObjectType.STUDY, study_uid, reason,
                     IdentityMismatchError,
                     message=f"{reason}; refusing to draft (audited)")


def patient_pseudonym(patient_id: str, key: bytes | None = None) -> str:
    """A pseudonymous patient ID: ``p`` + 40 hex of HMAC-SHA-256 (with ``key``) or of a salted
    SHA-256 (without; a small ID space can then be enumerated: set a key in production)."""
    raw = patient_id.strip().encode("utf-8")
    if key:
        digest = hmac.new(key, raw, hashlib.sha256).hexdigest()
    else:
        digest = hashlib.sha256(b"medassist-patient/1:" + raw).hexdigest()
    return "p" + digest[:40]


def _env_key() -> bytes | None:
    v = os.environ.get(PSEUDONYM_KEY_ENV)
    return v.encode("utf-8") if v else None


def draft(study_dir: Path, emr_path: Path | None, checkpoint: Path, *,
          series_uid: str | None = None, checkpoint_sha256: str | None = None,
          emr_sha256: str | None = None, model: LoadedModel | None = None) -> ReportDraft:
    """Run the model (``model``, loaded once by the caller, else ``checkpoint`` is loaded for
    this call) and validate the draft contract.

    Checks that the draft describes the selected series, the same EMR bytes and the same
    checkpoint that were hashed (a file changed in between would break idempotency)."""
    from medassist.drafting import ModelCLIError, infer, make_report, prepare
    from medassist.model_data import finding_labels
    from multimodal.errors import MultimodalError

    try:
        if model is None:
            data = make_report(study_dir, emr_path, checkpoint)
        else:
            data = infer(model, [prepare(study_dir, emr_path, model.cfg)])[0]
        d = ReportDraft.from_dict(data, labels=finding_labels())
    except DraftError as exc:
        raise PipelineError(f"DraftError: {exc}", stage="draft", kind="DraftError") from exc
    except (ModelCLIError, MultimodalError, DicomIOError, NotAChestCTError) as exc:
        raise PipelineError(f"{type(exc).__name__}: {exc}", stage="draft",
                            kind=type(exc).__name__) from exc
    for what, want, got in (("series", series_uid, d.inputs.series_uid),
                            ("checkpoint", checkpoint_sha256, d.model.checkpoint_sha256),
                            ("EMR", emr_sha256, d.inputs.emr_sha256)):
        if want is not None and want != got:
            raise PipelineError(f"the {what} changed while the study was processed",
                                stage="draft", kind="InputChanged")
    return d


@dataclass(frozen=True)
class Stored:
    report_id: int
    job_id: int
    created: bool


def existing_report(session: Session, input_key: str) -> Report | None:
    """The report already drafted from exactly these inputs and this model, if any."""
    job = session.scalar(select(Job).where(Job.input_key == input_key))
    if job is None or job.status != JobStatus.DONE.value:
        return None
    return session.scalar(select(Report).where(Report.job_id == job.id)
                          .order_by(Report.id).limit(1))


def store(session: Session, d: ReportDraft, *, study_uid: str, patient_pseudo_id: str,
          input_key: str, n_images: int | None = None,
          actor: Actor = audit.SYSTEM) -> Stored:
    """Store the draft as a DRAFT report (``reports.store_draft``: version 1 = the AI draft,
    audited) with its inputs and model version under the job ``input_key``.

    The same ``input_key`` returns the existing report: nothing new is written."""
    from medassist.reports import store_draft
    from medassist.storage.models import utcnow

    job = session.scalar(select(Job).where(Job.input_key == input_key))
    if job is not None and job.status == JobStatus.DONE.value:
        rep = existing_report(session, input_key)
        if rep is not None:
            return Stored(rep.id, job.id, created=False)
    if job is None:
        job = Job(input_key=input_key, status=JobStatus.RUNNING.value, stage="store")
        session.add(job)
        session.flush()
    job.model_version = f"{d.model.name}:{d.model.version}"[:64]
    report = store_draft(session, d, study_uid=study_uid, patient_pseudo_id=patient_pseudo_id,
                         actor=actor, n_images=n_images, job_id=job.id)
    created = report.job_id == job.id
    if report.job_id is None:
        report.job_id = job.id
    job.study_id = report.study_id
    job.status = JobStatus.DONE.value
    job.stage = "store"
    job.reason = None
    job.updated_at = utcnow()
    session.flush()
    return Stored(report.id, job.id, created=created)


# --------------------------------------------------------------------------- EMR lookup


def find_emr(study_dir: Path, study_uid: str, emr_dir: Path | None = None) -> Path | None:
    """The EMR note of a study: ``<emr_dir>/<study_uid>.txt`` or ``<emr_dir>/<case>.txt``
    (``case`` = the study folder, or its parent for a ``dicom/`` folder written by
    ``medassist synth``), or the same names ending ``.json`` (a FHIR Bundle or
    DocumentReference holding the note, :mod:`medassist.emr`), else ``emr.txt``, ``emr.json``
    or ``emr_fhir.json`` (as ``medassist synth`` names its Bundle) next to or above the
    ``dicom/`` folder, in that order.

    A study in a zip file (``study.zip``, as ``medassist batch`` finds them): ``case`` is its
    stem, and beside it ``study.txt`` then ``study.json``; a ``dicom.zip`` is the zipped
    ``dicom/`` folder, its case the folder above with the notes named as for ``dicom/``."""
    archive = study_dir.suffix.lower() == ".zip" and study_dir.is_file()
    if archive and study_dir.stem != "dicom":
        case_name = study_dir.stem
        beside = [study_dir.with_name(f"{case_name}{ext}") for ext in (".txt", ".json")]
    else:
        case = study_dir.parent if archive or study_dir.name == "dicom" else study_dir
        case_name = case.name
        beside = [d / name for name in ("emr.txt", "emr.json", "emr_fhir.json")
                  for d in (study_dir, case)]
    candidates: list[Path] = []
    if emr_dir is not None:
        candidates += [emr_dir / f"{study_uid}.txt", emr_dir / f"{case_name}.txt",
                       emr_dir / f"{study_uid}.json", emr_dir / f"{case_name}.json"]
    candidates += beside
    for c in candidates:
        if c.is_file():
            return c
    return None


# --------------------------------------------------------------------------- processor


@dataclass
class PipelineProcessor:
    """:class:`medassist.pacs.watch.StudyProcessor` running every stage on one study.

    ``require_emr``: the draft contract needs an EMR hash, so a study without a note fails at
    stage ``find_emr`` with a clear reason.
    """

    checkpoint: Path
    emr_dir: Path | None = None
    actor: Actor = audit.SYSTEM
    pseudonym_key: bytes | None = None
    require_emr: bool = True

    def __post_init__(self) -> None:
        from multimodal.checkpoint import WEIGHTS, sha256_file

        self.checkpoint = Path(self.checkpoint)
        weights = self.checkpoint / WEIGHTS
        if not weights.is_file():
            raise UsageError(f"checkpoint {self.checkpoint}: no {WEIGHTS} (train one with "
                             "`medassist train` or pass --checkpoint)")
        self.checkpoint_sha256 = sha256_file(weights)
        if self.pseudonym_key is None:
            self.pseudonym_key = _env_key()
        self._model: LoadedModel | None = None

    def model(self) -> LoadedModel:
        """The checkpoint, loaded on first use and kept for every later study."""
        if self._model is None:
            from medassist.drafting import ModelCLIError, load_model
            from multimodal.errors import MultimodalError

            try:
                self._model = load_model(self.checkpoint)
            except (ModelCLIError, MultimodalError, OSError) as exc:
                raise PipelineError(f"cannot load the checkpoint: {type(exc).__name__}: {exc}",
                                    stage="draft", kind=type(exc).__name__) from exc
            if self._model.checkpoint_sha256 != self.checkpoint_sha256:
                raise PipelineError("the checkpoint changed after the processor was built",
                                    stage="draft", kind="InputChanged")
        return self._model

    def run(self, study_dir: Path, study_uid: str | None, session: Session, *,
            emr_path: Path | None = None) -> tuple[Stored, str]:
        """All stages; returns (stored, input_key).  ``study_uid`` None: the study found in
        ``study_dir``; ``emr_path`` None: looked up with :func:`find_emr`."""
        study_dir = Path(study_dir)
        series = select_series(study_dir, study_uid)
        study_uid = series.study_uid
        build_volume(series)
        if emr_path is None:
            emr_path = find_emr(study_dir, study_uid, self.emr_dir)
        if emr_path is None and self.require_emr:
            raise PipelineError("no EMR note found for the study (emr.txt next to the DICOM "
                                "folder or --emr-dir); the draft contract needs one",
                                stage="find_emr", kind="MissingEMR")
        try:  # text, or the note a FHIR Bundle / DocumentReference holds
            emr_text = read_note(emr_path) if emr_path is not None else None
        except InputError as exc:
            raise PipelineError(str(exc).removeprefix(f"{exc.path}: "), stage="find_emr",
                            path=exc.path, kind=exc.kind) from exc
        key = hash_inputs(series_sources(series), emr_text, self.checkpoint_sha256)
        cross_check_identity(session, series, emr_text, study_uid=study_uid, actor=self.actor)
        pids = {h.patient_id.strip() for h in series.instances if h.patient_id.strip()}
        if len(pids) != 1:
            raise PipelineError(f"the series carries {len(pids)} distinct patient IDs; "
                                "expected exactly one", stage="cross_check_identity",
                                kind="PatientID")
        # the model runs before any write: on SQLite the write lock is not held meanwhile
        d = draft(study_dir, emr_path, self.checkpoint, series_uid=series.series_uid,
                  checkpoint_sha256=self.checkpoint_sha256,
                  emr_sha256=hashlib.sha256(emr_text.encode("utf-8")).hexdigest()
                  if emr_text is not None else None, model=self.model())
        try:
            stored = store(session, d, study_uid=study_uid,
                           patient_pseudo_id=patient_pseudonym(pids.pop(), self.pseudonym_key),
                           input_key=key, n_images=series.n_images, actor=self.actor)
        except (PipelineError, StorageError, RefusalError):
            raise  # already staged / transient (retried) / audited refusal
        except MedAssistError as exc:  # e.g. the study is stored for another patient
            raise PipelineError(f"{type(exc).__name__}: {exc}", stage="store",
                                kind=type(exc).__name__) from exc
        return stored, key

    def __call__(self, study_dir: Path, study_uid: str, session: Session) -> ProcessResult:
        stored, key = self.run(study_dir, study_uid, session)
        log.info("study %s: report %d (%s)", study_uid, stored.report_id,
                 "stored" if stored.created else "already stored")
        summary: Mapping[str, Any] = {"kind": "draft", "report_id": stored.report_id,
                                      "job_id": stored.job_id, "input_key": key,
                                      "created": stored.created}
        return ProcessResult(summary=summary, report_id=stored.report_id)


def store_study(session: Session, study_dir: Path, *, checkpoint: Path,
                emr_path: Path | None = None, actor: Actor = audit.SYSTEM) -> Stored:
    """One study through every stage, stored (for ``medassist report --db``): same inputs and
    model, same report.  The caller commits (``storage.unit_of_work``)."""
    stored, _ = PipelineProcessor(checkpoint, actor=actor).run(study_dir, None, session,
                                                                emr_path=emr_path)
    return stored


def default_processor(study_dir: Path, study_uid: str, session: Session) -> ProcessResult:
    """``--processor medassist.pipeline:default_processor`` for ``pacs watch``: a
    :class:`PipelineProcessor` with ``$MEDASSIST_CHECKPOINT`` (else ``models/demo``) and
    ``$MEDASSIST_EMR_DIR``; built on first use and kept (the checkpoint is loaded once)."""
    emr = os.environ.get(EMR_DIR_ENV)
    from medassist.defaults import DEFAULT_CHECKPOINT

    proc = _processor_for(os.environ.get(CHECKPOINT_ENV, str(DEFAULT_CHECKPOINT)), emr or None)
    return proc(study_dir, study_uid, session)


@functools.lru_cache(maxsize=4)
def _processor_for(checkpoint: str, emr_dir: str | None) -> PipelineProcessor:
    return PipelineProcessor(Path(checkpoint), emr_dir=Path(emr_dir) if emr_dir else None)

__all__ = ["STAGES", "EmrIdentity", "PipelineProcessor", "Stored", "build_volume",
           "cross_check_identity", "default_processor", "draft", "emr_identity",
           "existing_report", "find_emr", "hash_inputs", "patient_pseudonym", "select_series",
           "series_files", "series_sources", "store", "store_study"]
