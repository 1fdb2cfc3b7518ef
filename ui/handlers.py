"""Every action of the review app as a plain function of :class:`Handlers`.

Each handler takes the session token first, resolves it (inactivity logoff), checks the role
*inside* the handler (a hidden Gradio endpoint can still be called directly) and runs in one
transaction (``storage.unit_of_work``; refusals are audited and committed). Nothing here
imports gradio: ``ui.app`` wires these functions to the page, and the unit tests call them
directly.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from medassist import audit, reports
from medassist.audit import Actor, AuditAction, ObjectType, Outcome
from medassist.auth import authenticate, check_password, require_role
from medassist.draft import STATED_MIN_LOSS, Coverage, ReportDraft
from medassist.errors import (
    AuthenticationError,
    ConflictError,
    ExportError,
    InputError,
    MedAssistError,
    NotFoundError,
    ReportValidationError,
)
from medassist.storage import unit_of_work
from medassist.storage.models import (
    AuditEvent,
    Job,
    Patient,
    Report,
    ReportStatus,
    ReportVersion,
    Role,
    Study,
    User,
)
from ui.config import UIConfig
from ui.errors import LockedOutError, StudyDataError, UIError
from ui.imaging import PRESETS, Box, ImageCache, StudyImages
from ui.report_text import (
    DECISIONS,
    SIDES,
    FindingReview,
    compose,
    prose_note,
    reviews_from_text,
    split_findings,
    split_text,
)
from ui.sessions import SessionStore, UserSession, lockout_remaining

log = logging.getLogger("medassist.ui")

CLINICIAN = (Role.CLINICIAN,)
AUDITORS = (Role.AUDITOR, Role.ADMIN)
ANY_ROLE = (Role.CLINICIAN, Role.AUDITOR, Role.ADMIN)
STATUSES = ("all", *(s.value for s in ReportStatus))
MAX_TEXT = 50_000
MAX_REASON = 2_000


@dataclass(frozen=True)
class ClientInfo:
    """What the HTTP request says about the caller (used only from trusted proxies)."""

    peer: str | None
    headers: dict[str, str]


@dataclass
class Services:
    factory: sessionmaker[Session]
    config: UIConfig
    sessions: SessionStore
    images: ImageCache
    export_dir: Path


def make_services(factory: sessionmaker[Session], config: UIConfig,
                  export_dir: Path | None = None) -> Services:
    from medassist.storage.engine import default_data_dir

    out = Path(export_dir or config.export_dir or default_data_dir() / "exports")
    return Services(factory=factory, config=config,
                    sessions=SessionStore(config.session_idle_s),
                    images=ImageCache(config.cache_studies), export_dir=out)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LoginResult:
    token: str
    username: str
    display_name: str
    role: str


@dataclass(frozen=True)
class WorklistRow:
    report_id: int
    pseudo_id: str
    accession: str
    status: str
    priority: str
    age: str
    findings: str
    amends: int | None


@dataclass(frozen=True)
class EmrView:
    available: bool
    message: str
    segments: list[tuple[str, str | None]]


@dataclass(frozen=True)
class StudyView:
    report_id: int
    status: str
    version: int
    study_uid: str
    pseudo_id: str
    text: str
    ai_text: str
    sections: dict[str, str]
    reviews: list[FindingReview]
    weights: dict[str, float]
    emr: EmrView
    n_slices: int
    start_slice: int
    signature: reports.SignatureInfo | None
    rejection_reason: str | None
    read_only: bool
    amends_report_id: int | None
    disclaimer: str
    #: what the scan and the model did not see of the lungs ("" where nothing, or for drafts
    #: stored before stop 33)
    coverage: str = ""


def coverage_note(cov: Coverage | None) -> str:
    """The header's note on the lungs' coverage: the scan's ends that run through them and
    the share the model's grid left out (from ``STATED_MIN_LOSS`` on, as the draft's technique
    states it)."""
    if cov is None:
        return ""
    parts = [f"the scan ends within the lungs ({', '.join(cov.scan_cuts_lung)})"] \
        if cov.scan_cuts_lung else []
    loss = 100.0 * (1.0 - cov.lung_in_model_grid)
    if cov.lung_in_model_grid < 1.0 - STATED_MIN_LOSS:  # the technique's own test
        parts.append(f"the model did not see {'<1' if loss < 1.0 else f'{loss:.0f}'} % "
                     "of the lungs")
    return "COVERAGE: " + "; ".join(parts) if parts else ""


@dataclass(frozen=True)
class ConflictInfo:
    message: str
    their_version: int
    their_author: str
    their_text: str
    their_diff: str


@dataclass(frozen=True)
class SaveResult:
    saved: bool
    version: int
    text: str
    conflict: ConflictInfo | None
    message: str


@dataclass(frozen=True)
class SignResult:
    signer_name: str
    signed_at: str
    meaning: str
    content_sha256: str
    exports: dict[str, str]
    export_error: str = ""
    #: why the export holds no DICOM SR ("" when it does; :attr:`Exports.note`)
    export_note: str = ""


@dataclass(frozen=True)
class Exports:
    """The files a report was exported to (format -> path) and, when there is no DICOM SR
    among them, why (its source CT instances are not here); "" when there is one."""

    paths: dict[str, str]
    note: str = ""


@dataclass(frozen=True)
class AuditView:
    rows: list[list[Any]]
    verify_ok: bool
    verify_message: str


@dataclass(frozen=True)
class BatchView:
    counts: dict[str, int]
    queue: dict[str, int]
    failures: list[list[str]]
    #: results not yet delivered to the PACS: outbox items not sent (state, attempts, last
    #: error) and signed reports whose SR is not in the outbox yet (``medassist pacs send``)
    sends: list[list[str]] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


def _age(t: datetime, now: datetime | None = None) -> str:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    s = max(0.0, ((now or datetime.now(UTC)) - t).total_seconds())
    if s < 3600:
        return f"{int(s // 60)} min"
    if s < 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def priority(draft: ReportDraft) -> str:
    """A sort key for the worklist derived from the draft (not a clinical triage):
    ``high``: a finding called present; ``check``: consistency flags or low-confidence
    findings, or lungs the scan or the model did not cover (:func:`coverage_note`);
    ``routine``: otherwise."""
    if any(f.present for f in draft.findings):
        return "high"
    if any(f.flags and set(f.flags) - {"no_emr", "size_measured", "ratio_measured"}
           for f in draft.findings):
        return "check"
    if coverage_note(draft.coverage):
        return "check"
    return "routine"


PRIORITY_ORDER = {"high": 0, "check": 1, "routine": 2}


def study_location(session: Session, study_uid: str) -> Path | None:
    """Where the study's DICOM files are: the ingest queue keeps it for batch and listen
    studies, a folder or (``medassist batch``) a zip file holding the study."""
    from medassist.pacs.models import IngestItem

    loc = session.scalar(select(IngestItem.location).where(IngestItem.study_uid == study_uid))
    return Path(loc) if loc else None


def location_present(location: Path | None) -> bool:
    """Whether a recorded study location is still there: a folder, or a (zip) file."""
    return location is not None and (location.is_dir() or location.is_file())


_HEADER_ERRORS = (OSError, ValueError, EOFError, KeyError, IndexError, TypeError,
                  AttributeError, RuntimeError, NotImplementedError)


def _first_accession(location: Path) -> str:
    """The AccessionNumber of the first readable DICOM file of a study folder or member of a
    study zip (name order; headers only, nothing extracted; members over ``dicom_io``'s
    size limit skipped as the indexer skips them); "" when none is readable."""
    import zipfile
    import zlib

    import pydicom
    from pydicom.errors import InvalidDicomError

    from dicom_io.index import MAX_MEMBER_BYTES

    def acc_of(fh: Any) -> str | None:
        try:
            ds = pydicom.dcmread(fh, stop_before_pixels=True,
                                 specific_tags=["AccessionNumber"])
        except (InvalidDicomError, zlib.error, zipfile.BadZipFile, *_HEADER_ERRORS):
            return None  # not DICOM, or damaged: try the next one
        return str(ds.get("AccessionNumber", "") or "")

    if location.is_dir():
        for p in sorted(location.rglob("*")):
            if p.is_file() and (acc := acc_of(p)) is not None:
                return acc
        return ""
    try:
        with zipfile.ZipFile(location) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if info.is_dir() or info.file_size > MAX_MEMBER_BYTES:
                    continue
                try:
                    fh = zf.open(info)
                except (zipfile.BadZipFile, zlib.error, *_HEADER_ERRORS):
                    continue  # encrypted or damaged member
                with fh:
                    if (acc := acc_of(fh)) is not None:
                        return acc
    except (zipfile.BadZipFile, zlib.error, *_HEADER_ERRORS):
        pass  # not a readable archive
    return ""


def _accession(location: Path | None, cache: dict[str, str]) -> str:
    """The study's AccessionNumber from its recorded location (cached); "" if unreadable."""
    if location is None:
        return ""
    key = str(location)
    if key in cache:
        return cache[key]
    try:
        acc = _first_accession(location)
    except OSError:
        acc = ""
    cache[key] = acc
    return acc


def emr_segments(text: str, spans: Sequence[tuple[tuple[int, int], str]]
                 ) -> list[tuple[str, str | None]]:
    """``text`` cut into (piece, label or None) with the relied-on spans labelled; pieces are
    plain text (the page shows them as text, never as HTML)."""
    marks: list[str | None] = [None] * len(text)
    for (a, b), label in spans:
        for i in range(max(0, a), min(len(text), b)):
            marks[i] = marks[i] or label
    out: list[tuple[str, str | None]] = []
    start = 0
    for i in range(1, len(text) + 1):
        if i == len(text) or marks[i] != marks[start]:
            out.append((text[start:i], marks[start]))
            start = i
    return out


def unified(a: str, b: str, la: str, lb: str) -> str:
    return "".join(difflib.unified_diff(a.splitlines(keepends=True), b.splitlines(keepends=True),
                                        fromfile=la, tofile=lb))


def diff_segments(ai_text: str, text: str) -> list[tuple[str, str | None]]:
    """The "AI draft vs current" diff as (line, '+' | '-' | None) pieces."""
    out: list[tuple[str, str | None]] = []
    for line in difflib.ndiff(ai_text.splitlines(), text.splitlines()):
        tag = line[:2]
        if tag == "? ":
            continue
        out.append((line[2:] + "\n", "+" if tag == "+ " else "-" if tag == "- " else None))
    return out


# --------------------------------------------------------------------------- handlers


def _missing() -> StudyImages:
    raise StudyDataError("the study's images were evicted from the cache; open it again")


class Handlers:
    def __init__(self, services: Services) -> None:
        self.s = services
        self._acc: dict[str, str] = {}
        self._render_info: dict[int, tuple[str, tuple[Box, ...]]] = {}

    # ---- sessions ------------------------------------------------------------------------

    def _session(self, token: str | None, roles: Sequence[Role], what: str,
                 object_type: ObjectType = ObjectType.SYSTEM, object_id: str | int = "ui",
                 db: Session | None = None) -> UserSession:
        us = self.s.sessions.get(token)
        if us.role not in {r.value for r in roles}:
            actor = Actor(us.user_id, us.username, us.role)
            if db is not None:
                require_role(db, actor, roles, what, object_type, object_id)
            else:
                with unit_of_work(self.s.factory) as s2:
                    require_role(s2, actor, roles, what, object_type, object_id)
        return us

    @staticmethod
    def _actor(us: UserSession) -> Actor:
        return Actor(us.user_id, us.username, us.role)

    def login(self, username: str, password: str, client: ClientInfo | None = None
              ) -> LoginResult:
        username = (username or "").strip()
        cfg = self.s.config
        if cfg.sso_user_header:
            trusted = client is not None and cfg.is_trusted_proxy(client.peer)
            sso_user = (client.headers.get(cfg.sso_user_header.lower(), "")
                        if client is not None and trusted else "")
            if not sso_user or sso_user != username:
                with unit_of_work(self.s.factory) as s:
                    audit.record(s, AuditAction.LOGIN, Actor(None, "sso", "unknown"),
                                 ObjectType.USER, username[:64] or "-",
                                 outcome=Outcome.MINOR_FAILURE,
                                 detail="no matching SSO identity from a trusted proxy")
                raise AuthenticationError("login refused: sign in through the hospital's "
                                          "single sign-on with the same user name")
        with unit_of_work(self.s.factory) as s:
            left = lockout_remaining(s, username, failures=cfg.lockout_failures,
                                     lock_s=cfg.lockout_s)
            if left > 0:
                audit.record(s, AuditAction.REFUSAL, Actor(None, "anonymous", "unknown"),
                             ObjectType.USER, username[:64] or "-",
                             outcome=Outcome.MINOR_FAILURE, detail="login while locked out")
                raise LockedOutError(
                    f"account locked after {cfg.lockout_failures} failed logins; try again in "
                    f"{int(left // 60) + 1} min or ask an administrator")
            user = authenticate(s, username, password or "")
            us = self.s.sessions.create(user.id, user.username, user.display_name, user.role)
        log.info("login of %s (%s)", us.username, us.role)
        return LoginResult(us.token, us.username, us.display_name, us.role)

    def logout(self, token: str | None) -> None:
        us = self.s.sessions.end(token)
        if us is not None:
            with unit_of_work(self.s.factory) as s:
                audit.record(s, AuditAction.LOGOUT, self._actor(us), ObjectType.USER,
                             us.username)

    def whoami(self, token: str | None) -> UserSession:
        """The caller's live session (any role); refuses a missing or expired one."""
        return self._session(token, ANY_ROLE, "use the app")

    def alive(self, token: str | None) -> bool:
        """Whether the session is still live (does not count as activity)."""
        try:
            self.s.sessions.get(token, touch=False)
        except MedAssistError:
            return False
        return True

    # ---- worklist ------------------------------------------------------------------------

    def worklist(self, token: str | None, status: str = "all", query: str = ""
                 ) -> list[WorklistRow]:
        self._session(token, CLINICIAN, "open the worklist")
        if status not in STATUSES:
            raise UIError(f"unknown status filter {status!r}; use one of {list(STATUSES)}")
        q = (query or "").strip().lower()
        rows: list[WorklistRow] = []
        with unit_of_work(self.s.factory) as s:
            stmt = (select(Report, Study, Patient).join(Study, Report.study_id == Study.id)
                    .join(Patient, Study.patient_id == Patient.id).order_by(Report.id))
            if status != "all":
                stmt = stmt.where(Report.status == status)
            for rep, study, pat in s.execute(stmt).all():
                acc = _accession(study_location(s, study.study_uid), self._acc)
                if q and q not in pat.pseudo_id.lower() and q not in acc.lower():
                    continue
                d = ReportDraft.from_json(rep.draft_json)
                present = [f.label for f in d.findings if f.present]
                rows.append(WorklistRow(rep.id, pat.pseudo_id, acc, rep.status, priority(d),
                                        _age(study.created_at), ", ".join(present) or "-",
                                        rep.amends_report_id))
        rows.sort(key=lambda r: (r.status in ("SIGNED", "REJECTED"),
                                 PRIORITY_ORDER[r.priority], r.report_id))
        return rows

    # ---- study ---------------------------------------------------------------------------

    def _load_images(self, session: Session, rep: Report) -> tuple[str, StudyImages]:
        from dicom_io.errors import DicomIOError
        from medassist.pipeline import build_volume, select_series

        study_uid = rep.study.study_uid
        key = f"{rep.series_id}:{rep.dicom_sha256}"
        if key in self.s.images:
            return key, self.s.images.get(key, lambda: StudyImages(np.zeros((1, 1, 1))))
        location = study_location(session, study_uid)
        if location is None:
            raise StudyDataError(f"the images of study {study_uid} are not available here: "
                                 "the ingest queue has no folder or zip file for it (only "
                                 "studies queued by `medassist batch` or `pacs listen` keep "
                                 "one)")
        if not location_present(location):
            raise StudyDataError(f"the images of study {study_uid} are not available here: "
                                 "its folder or zip file is no longer where the ingest queue "
                                 "recorded it")
        want = rep.series.series_uid if rep.series is not None else None

        def load() -> StudyImages:
            try:
                series = select_series(location, study_uid)
                if want is not None and series.series_uid != want:
                    raise StudyDataError("the study folder or zip file now holds another "
                                         "series than the one the draft was made from")
                vol = build_volume(series)
            except (MedAssistError, DicomIOError) as exc:  # DicomIOError: no CT series
                if isinstance(exc, StudyDataError):
                    raise
                raise StudyDataError(f"cannot read the images of study {study_uid}: "
                                     f"{type(exc).__name__}") from exc
            return StudyImages(np.asarray(vol.array))

        return key, self.s.images.get(key, load)

    def _emr(self, session: Session, rep: Report, draft: ReportDraft) -> EmrView:
        from medassist.emr import read_note
        from medassist.pipeline import find_emr

        folder = study_location(session, rep.study.study_uid)
        emr_dir = Path(self.s.config.emr_dir) if self.s.config.emr_dir else None
        path = find_emr(folder, rep.study.study_uid, emr_dir) if folder is not None else None
        if path is None:
            return EmrView(False, "No EMR note found for this study.", [])
        try:  # text, or the note a FHIR Bundle / DocumentReference holds, as drafted
            text = read_note(path)
        except InputError:
            return EmrView(False, "The EMR note cannot be read.", [])
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != rep.emr_sha256:
            return EmrView(False, "The EMR note changed since the draft was made; its "
                                  "highlighted spans would be wrong, so it is not shown.", [])
        spans = [(sp, f.label) for f in draft.findings for sp in f.evidence.emr_spans]
        n = len({sp for sp, _ in spans})
        # a finding's spans: the passages its impression's context rests on, and the note's
        # tokens its presence rests on where the note raised it (multimodal.attribution)
        said = (f"{n} span(s) the model relied on are highlighted." if n else
                "No finding rests on a passage of this note: nothing is highlighted.")
        if draft.note_effect is not None:  # what the note changed in the calls (stop 50)
            said += " " + draft.note_effect.summary()
        return EmrView(True, said, emr_segments(text, spans))

    def open_study(self, token: str | None, report_id: int) -> StudyView:
        us = self._session(token, CLINICIAN, "open studies", ObjectType.REPORT, report_id)
        with unit_of_work(self.s.factory) as s:
            view = reports.read_report(s, int(report_id), self._actor(us))
            rep = reports.get_report(s, int(report_id))
            draft = view.draft
            _, imgs = self._load_images(s, rep)
            emr = self._emr(s, rep, draft)
            reviews = reviews_from_text(draft, view.text)
            present = [r for r in reviews if r.present and r.slices]
            start = (present[0].slices[len(present[0].slices) // 2] if present
                     else imgs.n_slices // 2)
            return StudyView(
                report_id=view.report_id, status=view.status, version=view.version_id,
                study_uid=view.study_uid, pseudo_id=view.patient_pseudo_id, text=view.text,
                ai_text=rep.ai_text, sections=split_text(view.text), reviews=reviews,
                weights={"CT": draft.modality_weights.ct, "EMR": draft.modality_weights.emr},
                emr=emr, n_slices=imgs.n_slices, start_slice=start,
                signature=view.signature, rejection_reason=view.rejection_reason,
                read_only=view.status in (ReportStatus.SIGNED.value,
                                          ReportStatus.REJECTED.value),
                amends_report_id=view.amends_report_id, disclaimer=draft.disclaimer,
                coverage=coverage_note(draft.coverage))

    def render(self, token: str | None, report_id: int, k: int, width: float, level: float,
               overlay: bool) -> Image.Image:
        """One slice. The report's series and evidence boxes are immutable, so after the first
        call a step needs no database query: session + role check, crop, boxes."""
        self._session(token, CLINICIAN, "view images", ObjectType.REPORT, report_id)
        rid = int(report_id)
        hit = self._render_info.get(rid)
        if hit is None or hit[0] not in self.s.images:
            with unit_of_work(self.s.factory) as s:
                rep = reports.get_report(s, rid)
                draft = ReportDraft.from_json(rep.draft_json)
                key, _ = self._load_images(s, rep)
            boxes = tuple(Box(f.label, f.evidence.box_voxels) for f in draft.findings
                          if f.evidence.box_voxels is not None)
            hit = (key, boxes)
            self._render_info[rid] = hit
        key, boxes = hit
        imgs = self.s.images.get(key, _missing)
        return imgs.render(int(k), float(width), float(level), boxes, bool(overlay))

    @staticmethod
    def preset(name: str) -> tuple[float, float]:
        if name not in PRESETS:
            raise UIError(f"unknown window preset {name!r}; use one of {sorted(PRESETS)}")
        return PRESETS[name]

    def finding_slice(self, token: str | None, reviews: Sequence[FindingReview], index: int
                      ) -> int | None:
        """The middle evidence slice of finding ``index`` (None: it has no evidence slices)."""
        self._session(token, CLINICIAN, "view findings")
        if not 0 <= index < len(reviews):
            raise UIError(f"no finding number {index}")
        sl = reviews[index].slices
        return sl[len(sl) // 2] if sl else None

    def apply_finding(self, token: str | None, reviews: Sequence[FindingReview], index: int,
                      decision: str, side: str, size_mm: float | None, text: str
                      ) -> list[FindingReview]:
        """Record the reviewer's decision on one finding (saved with :meth:`save`)."""
        self._session(token, CLINICIAN, "edit findings")
        if not 0 <= index < len(reviews):
            raise UIError(f"no finding number {index}; pick a finding in the table first")
        if decision not in DECISIONS:
            raise UIError(f"decision must be one of {list(DECISIONS)}")
        side = side or ""
        if side not in SIDES:
            raise UIError(f"side must be one of {[s for s in SIDES if s]} or empty")
        if size_mm is not None and not (isinstance(size_mm, int | float) and
                                        0 < float(size_mm) <= 1000):
            raise UIError("size must be a number of millimetres in (0, 1000], or empty")
        text = (text or "").strip()
        if len(text) > 2000:
            raise UIError("the finding text is too long (at most 2000 characters)")
        out = list(reviews)
        out[index] = replace(out[index], decision=decision, side=side,
                             size_mm=None if size_mm is None else round(float(size_mm), 1),
                             text=text or out[index].text)
        return out

    def accept_undecided(self, token: str | None, reviews: Sequence[FindingReview]
                         ) -> list[FindingReview]:
        """Accept, as drafted, every finding still pending (saved with :meth:`save`): the
        reviewer's one step for the findings they read and agree with, since a report is
        signed only once each AI finding is decided."""
        self._session(token, CLINICIAN, "edit findings")
        return [replace(r, decision="accepted") if r.decision == "pending" else r
                for r in reviews]

    def save(self, token: str | None, report_id: int, expected_version: int,
             sections: dict[str, str], reviews: Sequence[FindingReview]) -> SaveResult:
        """Save the edited sections and finding decisions as a new version; if someone else
        saved first, nothing is written and their change is returned (:class:`ConflictInfo`)."""
        us = self._session(token, CLINICIAN, "edit reports", ObjectType.REPORT, report_id)
        text = compose(sections, list(reviews))
        if len(text) > MAX_TEXT:
            raise UIError(f"the report is too long (at most {MAX_TEXT} characters)")
        try:
            with unit_of_work(self.s.factory) as s:
                rep = reports.get_report(s, int(report_id))
                if rep.text == text and rep.version_id == expected_version:
                    return SaveResult(False, rep.version_id, text, None, "No change to save.")
                reports.edit_report(s, int(report_id), self._actor(us), text,
                                    int(expected_version))
                version = rep.version_id
            return SaveResult(True, version, text, None,
                              f"Saved (version {version}).{prose_note(text)}")
        except ConflictError:
            conflict = self._conflict(int(report_id), int(expected_version), text)
            return SaveResult(False, int(expected_version), text, conflict, conflict.message)

    def _conflict(self, report_id: int, expected_version: int, mine: str) -> ConflictInfo:
        with unit_of_work(self.s.factory) as s:
            rep = reports.get_report(s, report_id)
            last = s.scalar(select(ReportVersion).where(ReportVersion.report_id == report_id)
                            .order_by(ReportVersion.number.desc()).limit(1))
            author = "the AI draft"
            if last is not None and last.author_id is not None:
                u = s.get(User, last.author_id)
                author = u.display_name if u is not None else f"user {last.author_id}"
            when = last.created_at.strftime("%H:%M:%S UTC") if last is not None else "?"
            msg = (f"Not saved: {author} saved this report first (at {when}; it is now at "
                   f"version {rep.version_id}, you edited version {expected_version}, "
                   f"status {rep.status}). Their text is shown below and was not overwritten; "
                   "your edit is kept in the editor: reload their version and apply your "
                   "change again.")
            return ConflictInfo(msg, rep.version_id, author, rep.text,
                                unified(mine, rep.text, "your edit", f"{author} (saved)"))

    def sign(self, token: str | None, report_id: int, expected_version: int, password: str,
             *, confirm_text: bool = False) -> SignResult:
        """Submit (if still a draft) and sign after re-entering the password, then export the
        signed report as DICOM SR and FHIR. A text whose prose contradicts the finding
        decisions or still carries the draft's [UNVERIFIED] marks is signed only with
        ``confirm_text`` (the app's "Sign the text as written" box)."""
        us = self._session(token, CLINICIAN, "sign reports", ObjectType.REPORT, report_id)
        actor = self._actor(us)
        with unit_of_work(self.s.factory) as s:
            rep = reports.get_report(s, int(report_id))
            if not split_text(rep.text)["impression"].strip():
                raise ReportValidationError("not signed: the report has no IMPRESSION; write "
                                            "one and save the draft before signing")
            # before the password is checked (sign_report checks it again after)
            reports.require_decisions(rep, "accept, edit or reject each in the findings "
                                           "table, or press 'Accept the undecided findings', "
                                           "then Save draft")
            reports.require_resolved_prose(rep, confirm_text,
                                           "edit those sentences (or delete a mark once you "
                                           "have checked its sentence) and Save draft, or "
                                           "tick 'Sign the text as written' and sign again")
            if rep.status == ReportStatus.DRAFT.value:
                user = s.get(User, us.user_id)
                if user is None or not user.active or not check_password(user, password or ""):
                    audit.record(s, AuditAction.REPORT_SIGN, actor, ObjectType.REPORT, rep.id,
                                 outcome=Outcome.MINOR_FAILURE,
                                 detail="re-authentication failed")
                    raise AuthenticationError("not signed: the password is wrong; re-enter "
                                              "your own password")
                reports.submit_for_review(s, rep.id, actor, int(expected_version))
                expected_version = rep.version_id
            sig = reports.sign_report(s, rep.id, actor, password or "", int(expected_version),
                                      confirm_text=confirm_text)
            result = (sig.signer_name, sig.signed_at, sig.meaning, sig.content_sha256)
        try:
            ex = self.export(token, int(report_id))
            exports, note, problem = ex.paths, ex.note, ""
        except MedAssistError as exc:  # signed and committed: report the export problem
            log.warning("export of signed report %s failed: %s", report_id, type(exc).__name__)
            exports, note, problem = {}, "", f"{type(exc).__name__}: {exc}"
        return SignResult(*result, exports=exports, export_error=problem, export_note=note)

    def export(self, token: str | None, report_id: int) -> Exports:
        """Write the FHIR and SR exports of a report under the export folder (audited).

        The SR needs the source CT instances: those of the series in the study's folder or
        zip file the ingest queue recorded (a zip's members are read in place). Without one
        (a ``pacs watch`` study; a location no longer there) only FHIR is written and
        :attr:`Exports.note` says why; a series that cannot be read raises (``PipelineError``,
        ``ExportError``), as a failed export."""
        from dicom_io.errors import DicomIOError
        from medassist.export import export_report
        from medassist.pipeline import select_series, series_sources

        us = self._session(token, CLINICIAN, "export reports", ObjectType.REPORT, report_id)
        out = self.s.export_dir / f"report-{int(report_id)}"
        paths: dict[str, str] = {}
        with unit_of_work(self.s.factory) as s:
            rep = reports.get_report(s, int(report_id))
            location = study_location(s, rep.study.study_uid)
            uid = rep.study.study_uid
        with unit_of_work(self.s.factory) as s:
            paths["fhir"] = str(export_report(s, int(report_id), self._actor(us), "fhir",
                                              out / "report.fhir.json"))
        if location is None:
            return Exports(paths, "no DICOM SR: the ingest queue keeps no folder or zip "
                                  "file of this study's CT (only `medassist batch` and `pacs "
                                  "listen` studies keep one); make it with `medassist pacs "
                                  "send` or `medassist export --dicom`")
        if not location_present(location):
            return Exports(paths, "no DICOM SR: the study's folder or zip file is no longer "
                                  "where the ingest queue recorded it; export it with "
                                  "`medassist export --dicom`")
        try:
            sources = series_sources(select_series(location, uid))
        except DicomIOError as exc:  # NoDiagnosticSeriesError leaves select_series unchanged
            raise ExportError(f"no DICOM SR: the study's CT series cannot be read "
                              f"({type(exc).__name__}: {exc})") from exc
        with unit_of_work(self.s.factory) as s:
            paths["sr"] = str(export_report(s, int(report_id), self._actor(us), "sr",
                                            out / "report.sr.dcm", sources=sources))
        return Exports(paths)

    def reject(self, token: str | None, report_id: int, expected_version: int, reason: str
               ) -> str:
        us = self._session(token, CLINICIAN, "reject reports", ObjectType.REPORT, report_id)
        reason = (reason or "").strip()
        if not reason:
            raise ReportValidationError("a rejection needs a reason: say why the draft is "
                                        "unusable")
        if len(reason) > MAX_REASON:
            raise UIError(f"the reason is too long (at most {MAX_REASON} characters)")
        actor = self._actor(us)
        with unit_of_work(self.s.factory) as s:
            rep = reports.get_report(s, int(report_id))
            if rep.status == ReportStatus.DRAFT.value:
                reports.submit_for_review(s, rep.id, actor, int(expected_version))
                expected_version = rep.version_id
            reports.reject_report(s, rep.id, actor, reason, int(expected_version))
            return rep.status

    def amend(self, token: str | None, report_id: int) -> int:
        """Start an amendment of a signed report (a new linked report, IN_REVIEW)."""
        us = self._session(token, CLINICIAN, "amend reports", ObjectType.REPORT, report_id)
        with unit_of_work(self.s.factory) as s:
            rep = reports.get_report(s, int(report_id))
            new = reports.amend_report(s, rep.id, self._actor(us), rep.text)
            return new.id

    # ---- audit and batch -----------------------------------------------------------------

    def audit_view(self, token: str | None, target: str) -> AuditView:
        """The audit events of a study (StudyInstanceUID, or a report ID) and the result of
        verifying the whole chain: auditors and administrators only."""
        target = (target or "").strip()
        with unit_of_work(self.s.factory) as s:
            us = self._session(token, AUDITORS, "view the audit trail", ObjectType.AUDIT_LOG,
                               audit.DEFAULT_CHAIN, db=s)
            study: Study | None = None
            if target.isdigit():
                rep = s.get(Report, int(target))
                study = rep.study if rep is not None else None
            elif target:
                study = s.scalar(select(Study).where(Study.study_uid == target))
            if target and study is None:
                raise NotFoundError(f"no study or report {target!r}")
            rows: list[list[Any]] = []
            if study is not None:
                rids = [str(r) for r in s.scalars(select(Report.id)
                                                  .where(Report.study_id == study.id))]
                ev = s.scalars(select(AuditEvent).where(
                    ((AuditEvent.object_type == ObjectType.REPORT.value)
                     & AuditEvent.object_id.in_(rids))
                    | ((AuditEvent.object_type == ObjectType.STUDY.value)
                       & (AuditEvent.object_id == study.study_uid)))
                    .order_by(AuditEvent.seq))
                rows = [[e.seq, e.event_time, e.event_type, e.action, e.outcome, e.username,
                         e.role, f"{e.object_type} {e.object_id}", e.detail] for e in ev]
            res = audit.verify(s)
            msg = (f"audit chain intact: {res.checked} events, head {res.head_hash}" if res.ok
                   else res.first_broken.describe() if res.first_broken else "broken")
            audit.record(s, AuditAction.AUDIT_VERIFY, self._actor(us), ObjectType.AUDIT_LOG,
                         res.chain, outcome=Outcome.SUCCESS if res.ok else
                         Outcome.SERIOUS_FAILURE,
                         detail=f"{'intact' if res.ok else 'broken'} events={res.checked}")
        return AuditView(rows, res.ok, msg)

    def batch_status(self, token: str | None) -> BatchView:
        """Jobs and ingest-queue progress, and the failures with their reasons (no PHI)."""
        from medassist.pacs.models import IngestItem

        self._session(token, ANY_ROLE, "view batch status")
        with unit_of_work(self.s.factory) as s:
            counts = {st: n for st, n in s.execute(
                select(Job.status, func.count()).group_by(Job.status)).all()}
            q = {st: n for st, n in s.execute(
                select(IngestItem.state, func.count()).group_by(IngestItem.state)).all()}
            fails = [[i.study_uid, i.state, str(i.attempts), (i.reason or "")[:500],
                      i.updated_at.strftime("%Y-%m-%d %H:%M")]
                     for i in s.scalars(select(IngestItem).where(
                         IngestItem.state.in_(("failed", "no_diagnostic_ct")))
                         .order_by(IngestItem.updated_at.desc()).limit(200))]
            fails += [[f"job {j.id}", j.status, "-", (j.reason or "")[:500],
                       j.updated_at.strftime("%Y-%m-%d %H:%M")]
                      for j in s.scalars(select(Job).where(Job.status == "failed")
                                         .order_by(Job.id.desc()).limit(200))]
            sends = self._pending_sends(s)
        return BatchView(counts, q, fails, sends)

    @staticmethod
    def _pending_sends(s: Session) -> list[list[str]]:
        from medassist.pacs import outbox
        from medassist.pacs.sendback import unsent_signed

        rows = [[f"report {i.report_id} {i.kind.upper()}" if i.report_id else
                 f"{i.kind.upper()} {i.sop_instance_uid}", i.state, str(i.attempts),
                 (i.last_error or "")[:500], i.next_attempt_at.strftime("%Y-%m-%d %H:%M")]
                for i in outbox.pending(s)[:200]]
        rows += [[f"report {rid} SR", "not queued", "0",
                  "signed; its SR is built and sent by `medassist pacs send`", "-"]
                 for rid in unsent_signed(s)[:200]]
        return rows


def findings_narrative(sections: dict[str, str]) -> str:
    return split_findings(sections.get("findings", ""))[0]

