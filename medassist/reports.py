"""Report lifecycle: DRAFT → IN_REVIEW → SIGNED | REJECTED, edits, amendments, e-signatures.

Every function takes the caller's :class:`~sqlalchemy.orm.Session` (the caller commits) and
an :class:`~medassist.audit.Actor`; every read, draft, edit, transition, signature and refusal
is written to the audit trail. Mutations take the ``expected_version`` the client read
(``Report.version_id``, SQLAlchemy's ``version_id_col``): a stale one raises
:class:`ConflictError`, never a silent overwrite.
"""

from __future__ import annotations

import difflib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from medassist import audit
from medassist.audit import Actor, AuditAction, ObjectType, Outcome
from medassist.auth import actor_of, check_password, refuse, require_role
from medassist.draft import ReportDraft, canonical_json, sha256_text
from medassist.errors import (
    AuthenticationError,
    ConflictError,
    IllegalTransitionError,
    NotFoundError,
    ReportValidationError,
)
from medassist.review import BLOCK, ProseIssue, prose_issues, undecided
from medassist.storage.models import (
    Patient,
    Report,
    ReportStatus,
    ReportVersion,
    Role,
    Series,
    Signature,
    Study,
    User,
    utcnow,
)

log = logging.getLogger("medassist.reports")

SIGNATURE_MEANING = "reviewed and approved"
S = ReportStatus

#: (state, action) → next state. Anything else is an illegal transition.
TRANSITIONS: dict[tuple[ReportStatus, str], ReportStatus] = {
    (S.DRAFT, "edit"): S.DRAFT,
    (S.DRAFT, "submit"): S.IN_REVIEW,
    (S.IN_REVIEW, "edit"): S.IN_REVIEW,
    (S.IN_REVIEW, "sign"): S.SIGNED,
    (S.IN_REVIEW, "reject"): S.REJECTED,
    (S.SIGNED, "amend"): S.SIGNED,  # the signed report stays; a new linked report is made
}


def allowed_actions(state: ReportStatus | str) -> list[str]:
    return sorted(a for (s, a) in TRANSITIONS if s == ReportStatus(state))


# --- helpers ------------------------------------------------------------------------------


def edit_ratio(ai_text: str, text: str) -> float:
    """Fraction of the AI draft changed: ``1 - SequenceMatcher.ratio()`` (0 = untouched)."""
    return round(1.0 - difflib.SequenceMatcher(None, ai_text, text, autojunk=False).ratio(), 6)


def unified_diff(ai_text: str, text: str, label: str) -> str:
    return "".join(difflib.unified_diff(ai_text.splitlines(keepends=True),
                                        text.splitlines(keepends=True),
                                        fromfile="ai_draft", tofile=label))


def get_report(session: Session, report_id: int) -> Report:
    report = session.get(Report, report_id)
    if report is None:
        raise NotFoundError(f"no report with ID {report_id}")
    return report


def _check_version(report: Report, expected_version: int) -> None:
    if report.version_id != expected_version:
        raise ConflictError(
            f"report {report.id} was changed by someone else (you edited version "
            f"{expected_version}, it is now at version {report.version_id}); reload it and "
            "apply your change again", report_id=report.id, expected=expected_version,
            actual=report.version_id)


def _flush(session: Session, report: Report, expected_version: int) -> None:
    rid = report.id  # read before the flush: a failed flush expires the instance
    try:
        session.flush()
    except StaleDataError as exc:
        raise ConflictError(
            f"report {rid} was changed by someone else while you edited version "
            f"{expected_version}; reload it and apply your change again",
            report_id=rid, expected=expected_version, actual=None) from exc


def _transition(session: Session, report: Report, action: str, actor: Actor) -> ReportStatus:
    state = ReportStatus(report.status)
    nxt = TRANSITIONS.get((state, action))
    if nxt is None:
        allowed = allowed_actions(state)
        audit.record(session, AuditAction.REFUSAL, actor, ObjectType.REPORT, report.id,
                     outcome=Outcome.MINOR_FAILURE,
                     detail=f"illegal transition: {action} from {state.value}")
        hint = (" A signed report is immutable: amend it to correct it." if state == S.SIGNED
                else "")
        raise IllegalTransitionError(
            f"cannot {action} report {report.id}: it is {state.value}; allowed there: "
            f"{allowed or 'nothing (final state)'}.{hint}",
            report_id=report.id, state=state.value, action=action)
    return nxt


def _next_version_number(session: Session, report_id: int) -> int:
    nums = session.scalars(select(ReportVersion.number)
                           .where(ReportVersion.report_id == report_id)).all()
    return max(nums, default=0) + 1


def _add_version(session: Session, report: Report, kind: str, text: str,
                 author_id: int | None) -> ReportVersion:
    n = _next_version_number(session, report.id)
    v = ReportVersion(report_id=report.id, number=n, kind=kind, author_id=author_id, text=text,
                      text_sha256=sha256_text(text),
                      diff_vs_ai=unified_diff(report.ai_text, text, f"version {n}"),
                      edit_ratio=edit_ratio(report.ai_text, text))
    session.add(v)
    return v


# --- operations ---------------------------------------------------------------------------


def store_draft(session: Session, draft: ReportDraft, *, study_uid: str, patient_pseudo_id: str,
                actor: Actor = audit.SYSTEM, n_images: int | None = None,
                job_id: int | None = None) -> Report:
    """Store a model draft (idempotent: the same draft for the same study returns the same
    report). ``patient_pseudo_id`` must be pseudonymous; no PHI is stored outside the text."""
    if not patient_pseudo_id or len(patient_pseudo_id) > 64:
        raise ReportValidationError("patient pseudonymous ID must be 1..64 characters")
    h = draft.content_hash()
    patient = session.scalar(select(Patient).where(Patient.pseudo_id == patient_pseudo_id))
    if patient is None:
        patient = Patient(pseudo_id=patient_pseudo_id)
        session.add(patient)
        session.flush()
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        study = Study(patient_id=patient.id, study_uid=study_uid)
        session.add(study)
        session.flush()
    elif study.patient_id != patient.id:
        raise refuse(session, actor, ObjectType.STUDY, study_uid,
                     "study belongs to another patient", ReportValidationError,
                     f"study {study_uid} is stored for another pseudonymous patient; "
                     "refusing to attach this draft")
    existing = session.scalar(select(Report).where(Report.study_id == study.id,
                                                   Report.draft_sha256 == h,
                                                   Report.amends_report_id.is_(None)))
    if existing is not None:
        return existing
    series = session.scalar(select(Series).where(Series.series_uid == draft.inputs.series_uid))
    if series is None:
        series = Series(study_id=study.id, series_uid=draft.inputs.series_uid,
                        n_images=n_images, dicom_sha256=draft.inputs.dicom_sha256)
        session.add(series)
        session.flush()
    text = draft.render_text()
    report = Report(study_id=study.id, series_id=series.id, job_id=job_id,
                    status=S.DRAFT.value, text=text, ai_text=text,
                    draft_json=draft.canonical_json(), draft_sha256=h,
                    model_name=draft.model.name, model_version=draft.model.version,
                    checkpoint_sha256=draft.model.checkpoint_sha256,
                    dicom_sha256=draft.inputs.dicom_sha256, emr_sha256=draft.inputs.emr_sha256,
                    created_by=actor.user_id)
    session.add(report)
    session.flush()
    _add_version(session, report, "ai_draft", text, None)
    session.flush()
    audit.record(session, AuditAction.DRAFT_CREATE, actor, ObjectType.REPORT, report.id,
                 model_version=f"{draft.model.name}:{draft.model.version}",
                 input_hashes={"dicom_sha256": draft.inputs.dicom_sha256,
                               "emr_sha256": draft.inputs.emr_sha256,
                               "checkpoint_sha256": draft.model.checkpoint_sha256,
                               "draft_sha256": h},
                 after_hash=sha256_text(text))
    log.info("stored draft report %s for study %s", report.id, study_uid)
    return report


@dataclass(frozen=True)
class SignatureInfo:
    signer_name: str
    signed_at: str
    meaning: str
    content_sha256: str


@dataclass(frozen=True)
class ReportView:
    """What a reader (and the exporters) see of a report."""

    report_id: int
    status: str
    version_id: int
    text: str
    draft: ReportDraft
    study_uid: str
    series_uid: str | None
    patient_pseudo_id: str
    amends_report_id: int | None
    signature: SignatureInfo | None
    rejection_reason: str | None


def report_view(session: Session, report: Report) -> ReportView:
    sig = session.scalar(select(Signature).where(Signature.report_id == report.id))
    study = report.study
    return ReportView(
        report_id=report.id, status=report.status, version_id=report.version_id,
        text=report.text, draft=ReportDraft.from_json(report.draft_json),
        study_uid=study.study_uid,
        series_uid=report.series.series_uid if report.series is not None else None,
        patient_pseudo_id=study.patient.pseudo_id, amends_report_id=report.amends_report_id,
        signature=None if sig is None else SignatureInfo(sig.signer_name, sig.signed_at,
                                                         sig.meaning, sig.content_sha256),
        rejection_reason=report.rejection_reason)


def read_report(session: Session, report_id: int, actor: Actor,
                action: AuditAction = AuditAction.PHI_READ, detail: str = "") -> ReportView:
    """Read a report (PHI): clinicians only; audited (``action``: PHI_READ or EXPORT)."""
    require_role(session, actor, [Role.CLINICIAN], "read reports", ObjectType.REPORT,
                 report_id)
    report = get_report(session, report_id)
    view = report_view(session, report)
    audit.record(session, action, actor, ObjectType.REPORT, report.id,
                 after_hash=sha256_text(report.text), detail=detail)
    return view


def edit_report(session: Session, report_id: int, actor: Actor, text: str,
                expected_version: int) -> ReportVersion:
    """A clinician edit: a new version with a diff against the AI draft."""
    require_role(session, actor, [Role.CLINICIAN], "edit reports", ObjectType.REPORT,
                 report_id)
    report = get_report(session, report_id)
    _transition(session, report, "edit", actor)
    if not text.strip():
        raise ReportValidationError("the report text must not be empty")
    _check_version(report, expected_version)
    before = sha256_text(report.text)
    report.text = text
    report.updated_at = utcnow()
    _flush(session, report, expected_version)
    v = _add_version(session, report, "edit", text, actor.user_id)
    session.flush()
    audit.record(session, AuditAction.REPORT_EDIT, actor, ObjectType.REPORT, report.id,
                 before_hash=before, after_hash=v.text_sha256,
                 detail=f"version={v.number} edit_ratio={v.edit_ratio:.4f}")
    return v


def submit_for_review(session: Session, report_id: int, actor: Actor,
                      expected_version: int) -> Report:
    require_role(session, actor, [Role.CLINICIAN], "submit reports", ObjectType.REPORT,
                 report_id)
    report = get_report(session, report_id)
    nxt = _transition(session, report, "submit", actor)
    _check_version(report, expected_version)
    report.status = nxt.value
    report.updated_at = utcnow()
    _flush(session, report, expected_version)
    audit.record(session, AuditAction.REPORT_SUBMIT, actor, ObjectType.REPORT, report.id,
                 after_hash=sha256_text(report.text), detail="DRAFT->IN_REVIEW")
    return report


def reject_report(session: Session, report_id: int, actor: Actor, reason: str,
                  expected_version: int) -> Report:
    """IN_REVIEW → REJECTED; ``reason`` is required (stored, not put into the audit)."""
    require_role(session, actor, [Role.CLINICIAN], "reject reports", ObjectType.REPORT,
                 report_id)
    report = get_report(session, report_id)
    nxt = _transition(session, report, "reject", actor)
    if not reason.strip():
        raise refuse(session, actor, ObjectType.REPORT, report.id, "rejection without reason",
                     ReportValidationError,
                     "a rejection needs a reason: say why the draft is unusable")
    _check_version(report, expected_version)
    report.status = nxt.value
    report.rejection_reason = reason.strip()
    report.updated_at = utcnow()
    _flush(session, report, expected_version)
    audit.record(session, AuditAction.REPORT_REJECT, actor, ObjectType.REPORT, report.id,
                 after_hash=sha256_text(reason.strip()), detail="IN_REVIEW->REJECTED")
    return report


def require_decisions(report: Report, how: str = "") -> None:
    """Raise :class:`ReportValidationError` while the report's text records no decision on
    some of its AI findings: the signed exports state each finding as the signer decided it,
    and one nobody decided would be stated as the model drafted it under the signer's name.
    ``how`` tells the caller's user how to decide them (default: the text's block)."""
    left = undecided(ReportDraft.from_json(report.draft_json), report.text)
    if left:
        how = how or (f"accept, edit or reject each (one line per finding under '{BLOCK}' in "
                      "FINDINGS, as the review app's finding editor writes them) and save "
                      "before signing")
        raise ReportValidationError(f"report {report.id} not signed: {len(left)} AI "
                                    f"finding(s) have no decision ({', '.join(left)}); {how}")


def require_resolved_prose(report: Report, confirmed: bool = False, how: str = ""
                           ) -> tuple[ProseIssue, ...]:
    """The sentences of the report's prose that contradict the reviewer's decisions or still
    carry the draft's ``[UNVERIFIED: ...]`` mark (:func:`~medassist.review.prose_issues`):
    raise :class:`ReportValidationError` naming them (section, number, finding and reason;
    not their text) unless the signer ``confirmed`` the text as written, and return them.
    The signed exports state the decisions, and an unresolved mark is the model's doubt
    signed as fact; but the labeler can misread a sentence, so the signer may confirm.
    ``how`` tells the caller's user how to resolve or confirm them."""
    issues = prose_issues(report.text)
    if issues and not confirmed:
        how = how or ("edit those sentences (or delete a mark once you have checked its "
                      "sentence) and save, or sign again confirming the text as written")
        raise ReportValidationError(
            f"report {report.id} not signed: {len({(i.section, i.number) for i in issues})} "
            "sentence(s) of its text contradict the decisions on its AI findings or are "
            "still marked unverified "
            f"({'; '.join(i.describe() for i in issues)}); {how}")
    return issues


def _confirmed_detail(issues: tuple[ProseIssue, ...]) -> str:
    """The audit's note of a text signed as written despite ``issues`` (labels, reasons)."""
    kinds = Counter(f"{i.label or 'text'} {i.reason}" for i in issues)
    return "; text confirmed as written despite " + ", ".join(
        f"{k}" + (f" x{n}" if n > 1 else "") for k, n in sorted(kinds.items()))


def _manifest(sig: Signature, version_number: int) -> str:
    return sha256_text(canonical_json({
        "report_id": sig.report_id, "report_version_id": sig.report_version_id,
        "version_number": version_number, "signer_id": sig.signer_id,
        "signer_name": sig.signer_name, "signed_at": sig.signed_at, "meaning": sig.meaning,
        "content_sha256": sig.content_sha256}))


def sign_report(session: Session, report_id: int, actor: Actor, password: str,
                expected_version: int, meaning: str = SIGNATURE_MEANING, *,
                confirm_text: bool = False) -> Signature:
    """IN_REVIEW → SIGNED after re-entering the password (21 CFR 11.200); audited. Every AI
    finding must have the reviewer's decision in the text (:func:`require_decisions`), and
    its prose must not contradict those decisions nor carry an unresolved ``[UNVERIFIED]``
    mark unless the signer confirms the text as written (``confirm_text``, recorded in the
    audit entry; :func:`require_resolved_prose`)."""
    require_role(session, actor, [Role.CLINICIAN], "sign reports", ObjectType.REPORT,
                 report_id)
    report = get_report(session, report_id)
    nxt = _transition(session, report, "sign", actor)
    user = session.get(User, actor.user_id) if actor.user_id is not None else None
    if user is None or not user.active or not check_password(user, password):
        audit.record(session, AuditAction.REPORT_SIGN, actor, ObjectType.REPORT, report.id,
                     outcome=Outcome.MINOR_FAILURE, detail="re-authentication failed")
        raise AuthenticationError(f"signing report {report_id} refused: the password is wrong "
                                  "or the account is disabled; re-enter your own password")
    if not meaning.strip():
        raise ReportValidationError("a signature needs its meaning (e.g. 'reviewed and "
                                    "approved')")
    _check_version(report, expected_version)
    require_decisions(report)
    issues = require_resolved_prose(report, confirm_text)
    version = session.scalar(select(ReportVersion).where(ReportVersion.report_id == report.id)
                             .order_by(ReportVersion.number.desc()).limit(1))
    if version is None or version.text != report.text:
        raise ConflictError(f"report {report.id}'s text does not match its latest version; "
                            "reload it", report_id=report.id, expected=expected_version,
                            actual=report.version_id)
    report.status = nxt.value
    report.updated_at = utcnow()
    _flush(session, report, expected_version)
    sig = Signature(report_id=report.id, report_version_id=version.id, signer_id=user.id,
                    signer_name=user.display_name, signed_at=audit.chain.utc_timestamp(),
                    meaning=meaning.strip(), content_sha256=sha256_text(report.text),
                    manifest_sha256="")
    sig.manifest_sha256 = _manifest(sig, version.number)
    session.add(sig)
    session.flush()
    audit.record(session, AuditAction.REPORT_SIGN, actor, ObjectType.REPORT, report.id,
                 after_hash=sig.content_sha256,
                 detail=f"meaning={sig.meaning}" + (_confirmed_detail(issues) if issues else ""))
    return sig


def amend_report(session: Session, report_id: int, actor: Actor, text: str) -> Report:
    """Correct a signed report: a new linked report (IN_REVIEW) that needs its own signature;
    the signed original stays unchanged and readable."""
    require_role(session, actor, [Role.CLINICIAN], "amend reports", ObjectType.REPORT,
                 report_id)
    original = get_report(session, report_id)
    _transition(session, original, "amend", actor)
    if not text.strip():
        raise ReportValidationError("the amended text must not be empty")
    if session.scalar(select(Report.id).where(Report.amends_report_id == original.id)):
        raise refuse(session, actor, ObjectType.REPORT, original.id, "already amended",
                     ReportValidationError,
                     f"report {original.id} already has an amendment; amend the latest one")
    new = Report(study_id=original.study_id, series_id=original.series_id,
                 job_id=original.job_id, status=S.IN_REVIEW.value, text=text,
                 ai_text=original.ai_text, draft_json=original.draft_json,
                 draft_sha256=original.draft_sha256, model_name=original.model_name,
                 model_version=original.model_version,
                 checkpoint_sha256=original.checkpoint_sha256,
                 dicom_sha256=original.dicom_sha256, emr_sha256=original.emr_sha256,
                 amends_report_id=original.id, created_by=actor.user_id)
    session.add(new)
    session.flush()
    _add_version(session, new, "amendment", text, actor.user_id)
    session.flush()
    audit.record(session, AuditAction.REPORT_AMEND, actor, ObjectType.REPORT, new.id,
                 before_hash=sha256_text(original.text), after_hash=sha256_text(text),
                 detail=f"amends={original.id}")
    return new


def versions(session: Session, report_id: int) -> list[ReportVersion]:
    return list(session.scalars(select(ReportVersion).where(ReportVersion.report_id == report_id)
                                .order_by(ReportVersion.number)))


@dataclass(frozen=True)
class SignatureCheck:
    ok: bool
    problems: tuple[str, ...]


def verify_signature(session: Session, report_id: int) -> SignatureCheck:
    """Recompute the signed content's hash and the signature manifest from the database."""
    report = get_report(session, report_id)
    sig = session.scalar(select(Signature).where(Signature.report_id == report_id))
    if sig is None:
        return SignatureCheck(False, (f"report {report_id} has no signature",))
    problems: list[str] = []
    version = session.get(ReportVersion, sig.report_version_id)
    if report.status != S.SIGNED.value:
        problems.append(f"report status is {report.status}, not SIGNED")
    if sha256_text(report.text) != sig.content_sha256:
        problems.append("report text differs from the signed content")
    if version is None or version.report_id != report.id:
        problems.append("signed version is missing or belongs to another report")
    else:
        if sha256_text(version.text) != sig.content_sha256:
            problems.append("signed version text differs from the signed content")
        if _manifest(sig, version.number) != sig.manifest_sha256:
            problems.append("signature manifest (signer, time, meaning) was altered")
    return SignatureCheck(not problems, tuple(problems))


def signer_actor(user: User) -> Actor:
    return actor_of(user)


def report_summary(report: Report) -> dict[str, Any]:
    """Non-PHI summary (IDs, state, hashes) for logs and listings."""
    return {"report_id": report.id, "status": report.status, "version": report.version_id,
            "model_version": report.model_version, "draft_sha256": report.draft_sha256}
