"""Report lifecycle on both backends: transitions, illegal ones, edits with diffs, optimistic
locking, e-signature with re-authentication, amendments, tampering with signed text, audit."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, text

from medassist import audit, reports
from medassist.audit import Actor
from medassist.auth import authenticate, disable_user
from medassist.draft import ReportDraft
from medassist.errors import (
    AuthenticationError,
    ConflictError,
    IllegalTransitionError,
    ImmutableReportError,
    PermissionDeniedError,
    ReportValidationError,
)
from medassist.review import decision_line, prose_issues
from medassist.storage import AuditEvent, Report, ReportStatus, Role, Signature, unit_of_work

from .conftest import Db
from .factories import DRAFT, PASSWORD, STUDY_UID, add_user, decided


def _setup(db: Db) -> tuple[int, Actor]:
    with db.factory.begin() as s:
        doc = add_user(s, "alice")
        rep = reports.store_draft(s, ReportDraft.from_dict(DRAFT), study_uid=STUDY_UID,
                                  patient_pseudo_id="PSEUDO-0001")
        return rep.id, doc


def _version(db: Db, rid: int) -> int:
    with db.factory() as s:
        return reports.get_report(s, rid).version_id


def _events(db: Db) -> list[tuple[str, int, str]]:
    with db.factory() as s:
        return [(e.event_type, e.outcome, e.object_id)
                for e in s.scalars(select(AuditEvent).order_by(AuditEvent.seq))]


def test_happy_path_draft_edit_review_sign(db: Db) -> None:
    rid, doc = _setup(db)
    with db.factory.begin() as s:  # idempotent: the same draft again gives the same report
        again = reports.store_draft(s, ReportDraft.from_dict(DRAFT), study_uid=STUDY_UID,
                                    patient_pseudo_id="PSEUDO-0001")
        assert again.id == rid
    with db.factory.begin() as s:
        v = reports.edit_report(s, rid, doc, reports.read_report(s, rid, doc).text.replace(
            "9 mm", "10 mm"), expected_version=1)
        assert v.number == 2 and v.kind == "edit"
        assert "-A 9 mm solid nodule" in v.diff_vs_ai and "+A 10 mm solid nodule" in v.diff_vs_ai
        assert 0 < v.edit_ratio < 0.05
    with db.factory.begin() as s:
        reports.submit_for_review(s, rid, doc, expected_version=2)
    with db.factory.begin() as s:
        reports.edit_report(s, rid, doc, decided("FINDINGS:\nNodule.\n"), expected_version=3)
    with db.factory.begin() as s:
        sig = reports.sign_report(s, rid, doc, PASSWORD, expected_version=4)
        assert sig.signer_name == "Dr. Alice" and sig.meaning == "reviewed and approved"
        assert sig.signed_at.endswith("Z")
    with db.factory() as s:
        view = reports.read_report(s, rid, doc)
        assert view.status == "SIGNED" and view.signature is not None
        assert reports.verify_signature(s, rid).ok
        vs = reports.versions(s, rid)
        assert [x.kind for x in vs] == ["ai_draft", "edit", "edit"]
        assert vs[0].edit_ratio == 0.0 and vs[2].edit_ratio > 0.5
        s.commit()
    kinds = [e[0] for e in _events(db)]
    for k in ("USER_ADD", "DRAFT_CREATE", "PHI_READ", "REPORT_EDIT", "REPORT_SUBMIT",
              "REPORT_SIGN"):
        assert k in kinds
    with db.factory() as s:
        assert audit.verify(s).ok


ILLEGAL = [
    ("DRAFT", "sign"), ("DRAFT", "reject"), ("DRAFT", "amend"),
    ("IN_REVIEW", "submit"), ("IN_REVIEW", "amend"),
    ("SIGNED", "edit"), ("SIGNED", "submit"), ("SIGNED", "sign"), ("SIGNED", "reject"),
    ("REJECTED", "edit"), ("REJECTED", "submit"), ("REJECTED", "sign"), ("REJECTED", "reject"),
    ("REJECTED", "amend"),
]


def _bring_to(db: Db, rid: int, doc: Actor, state: str) -> None:
    with db.factory.begin() as s:
        if state == "DRAFT":
            return
        if state == "SIGNED":  # every AI finding decided first (accepted as drafted)
            text = reports.get_report(s, rid).text
            reports.edit_report(s, rid, doc, decided(text), 1)
            reports.submit_for_review(s, rid, doc, 2)
            reports.sign_report(s, rid, doc, PASSWORD, 3)
            return
        reports.submit_for_review(s, rid, doc, 1)
        if state == "REJECTED":
            reports.reject_report(s, rid, doc, "wrong patient history", 2)


def _do(db: Db, rid: int, doc: Actor, action: str) -> None:
    with unit_of_work(db.factory) as s:
        v = reports.get_report(s, rid).version_id
        if action == "edit":
            reports.edit_report(s, rid, doc, "new text", v)
        elif action == "submit":
            reports.submit_for_review(s, rid, doc, v)
        elif action == "sign":
            reports.sign_report(s, rid, doc, PASSWORD, v)
        elif action == "reject":
            reports.reject_report(s, rid, doc, "reason", v)
        elif action == "amend":
            reports.amend_report(s, rid, doc, "amended text")


@pytest.mark.parametrize(("state", "action"), ILLEGAL)
def test_illegal_transitions_refused_and_audited(db: Db, state: str, action: str) -> None:
    rid, doc = _setup(db)
    _bring_to(db, rid, doc, state)
    before = _version(db, rid)
    with pytest.raises(IllegalTransitionError) as info:
        _do(db, rid, doc, action)
    err = info.value
    assert (err.state, err.action, err.report_id) == (state, action, rid)
    assert f"cannot {action} report {rid}: it is {state}" in str(err)
    assert _version(db, rid) == before
    assert _events(db)[-1] == ("REFUSAL", 4, str(rid))


def test_reject_needs_reason(db: Db) -> None:
    rid, doc = _setup(db)
    _bring_to(db, rid, doc, "IN_REVIEW")
    with pytest.raises(ReportValidationError, match="needs a reason"), \
            unit_of_work(db.factory) as s:
        reports.reject_report(s, rid, doc, "  ", 2)
    _do(db, rid, doc, "reject")
    with db.factory() as s:
        r = reports.get_report(s, rid)
        assert r.status == "REJECTED" and r.rejection_reason == "reason"


def test_wrong_role_refused(db: Db) -> None:
    rid, _doc = _setup(db)
    with db.factory.begin() as s:
        aud = add_user(s, "audrey", Role.AUDITOR)
    with pytest.raises(PermissionDeniedError, match="needs role clinician"), \
            unit_of_work(db.factory) as s:
        reports.read_report(s, rid, aud)
    assert _events(db)[-1] == ("REFUSAL", 4, str(rid))


def test_signing_requires_password(db: Db) -> None:
    rid, doc = _setup(db)
    _bring_to(db, rid, doc, "IN_REVIEW")
    with pytest.raises(AuthenticationError, match="re-enter your own password"), \
            unit_of_work(db.factory) as s:
        reports.sign_report(s, rid, doc, "wrong password!", 2)
    assert _events(db)[-1] == ("REPORT_SIGN", 4, str(rid))
    with db.factory.begin() as s:
        assert reports.get_report(s, rid).status == "IN_REVIEW"
        disable_user(s, "alice", audit.SYSTEM)
    with pytest.raises(AuthenticationError), \
            unit_of_work(db.factory) as s:
        reports.sign_report(s, rid, doc, PASSWORD, 2)


def test_signing_needs_a_decision_on_every_ai_finding(db: Db) -> None:
    """A report whose text records no decision on some AI findings is not signed: the
    signed SR and FHIR would state those as the model drafted them, under the signer's name.
    The refusal names them and changes nothing; once each is decided the report signs."""
    rid, doc = _setup(db)
    _bring_to(db, rid, doc, "IN_REVIEW")
    part = "FINDINGS:\nNodule.\n\nReviewed AI findings:\n- pneumothorax [rejected]\n"
    with db.factory.begin() as s:
        reports.edit_report(s, rid, doc, part, 2)
    with pytest.raises(ReportValidationError, match=r"2 AI finding\(s\) have no decision "
                       r"\(lung_nodule, pleural_effusion\); accept, edit or reject each"), \
            unit_of_work(db.factory) as s:
        reports.sign_report(s, rid, doc, PASSWORD, 3)
    with db.factory() as s:
        assert reports.get_report(s, rid).status == "IN_REVIEW"
        assert s.scalars(select(Signature)).all() == []
    with db.factory.begin() as s:
        reports.edit_report(s, rid, doc, decided(part), 3)
    with db.factory.begin() as s:
        reports.sign_report(s, rid, doc, PASSWORD, 4)
    with db.factory() as s:
        assert reports.get_report(s, rid).status == "SIGNED"


def test_signing_asks_to_resolve_prose_against_the_decisions(db: Db) -> None:
    """The reviewer moved the nodule to the left and rejected the effusion, but the draft's
    narrative and impression still say right and affirm the effusion, and one sentence keeps
    the guard's mark: signing is refused, naming the sentences by section and number and why
    (not their text), and nothing changes. Confirmed as written, the report signs and the
    audit entry records the labels and reasons, no sentence. Once the prose is fixed it
    signs without confirming."""
    rid, doc = _setup(db)
    _bring_to(db, rid, doc, "IN_REVIEW")
    lines = [decision_line("lung_nodule", "edited", "left", 9.0, "A 9 mm nodule, left upper."),
             decision_line("pleural_effusion", "rejected", "", None, "")]
    text = decided(ReportDraft.from_dict(DRAFT).render_text(), DRAFT, *lines).replace(
        "IMPRESSION:\n", "IMPRESSION:\n[UNVERIFIED: side uncertain on the CT] Consider "
        "follow-up. ")
    with db.factory.begin() as s:
        reports.edit_report(s, rid, doc, text, 2)
    with pytest.raises(ReportValidationError, match=(
            r"5 sentence\(s\) .* \(FINDINGS sentence 1 \(lung_nodule\): states the other side "
            r"than the one you decided; FINDINGS sentence 2 \(pleural_effusion\): affirms a "
            r"finding you rejected; IMPRESSION sentence 1: still carries the draft's "
            r"\[UNVERIFIED\] mark; IMPRESSION sentence 2 \(lung_nodule\): states the other "
            r"side .*; IMPRESSION sentence 3 \(pleural_effusion\): affirms a finding you "
            r"rejected\)")) as err, unit_of_work(db.factory) as s:
        reports.sign_report(s, rid, doc, PASSWORD, 3)
    assert "Small left pleural effusion" not in str(err.value)
    with db.factory() as s:
        assert reports.get_report(s, rid).status == "IN_REVIEW"
        assert s.scalars(select(Signature)).all() == []
    with db.factory.begin() as s:
        reports.sign_report(s, rid, doc, PASSWORD, 3, confirm_text=True)
    with db.factory() as s:
        assert reports.get_report(s, rid).status == "SIGNED"
        detail = s.scalars(select(AuditEvent.detail).where(
            AuditEvent.event_type == audit.AuditAction.REPORT_SIGN.name,
            AuditEvent.outcome == 0).order_by(AuditEvent.seq)).all()[-1]
    assert detail == ("meaning=reviewed and approved; text confirmed as written despite "
                      "lung_nodule side x2, pleural_effusion rejected x2, text unverified")

    with db.factory.begin() as s:  # another study's draft, its prose fixed before signing
        rid2 = reports.store_draft(s, ReportDraft.from_dict(DRAFT),
                                   study_uid=STUDY_UID + ".2", patient_pseudo_id="PSEUDO-0001").id
    doc2 = doc
    _bring_to(db, rid2, doc2, "IN_REVIEW")
    fixed = decided("FINDINGS:\nA 9 mm solid nodule in the left upper lobe.\n\nIMPRESSION:\n"
                    "1. Left upper lobe nodule, 9 mm. No pleural effusion.\n", DRAFT, *lines)
    assert prose_issues(fixed) == ()
    with db.factory.begin() as s:
        reports.edit_report(s, rid2, doc2, fixed, 2)
    with db.factory.begin() as s:
        reports.sign_report(s, rid2, doc2, PASSWORD, 3)
    with db.factory() as s:
        assert reports.get_report(s, rid2).status == "SIGNED"


def _drop_immutability_triggers(db: Db) -> None:
    with db.admin_engine().begin() as conn:
        if db.backend == "postgresql":
            for table in ("reports", "signatures", "report_versions"):
                conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        else:
            for name in ("reports_signed_immutable", "signatures_no_update"):
                conn.execute(text(f"DROP TRIGGER {name}"))


def test_signed_rows_refused_in_sql(db: Db) -> None:
    """Migration 0004: signed content, signatures and versions cannot be changed or deleted
    in SQL, not even by the owner; unsigned drafts stay editable."""
    rid, doc = _setup(db)
    _bring_to(db, rid, doc, "SIGNED")
    for engine in (db.engine, db.admin_engine()):
        for sql in ("UPDATE reports SET status = 'DRAFT' WHERE id = :i",
                    "UPDATE reports SET draft_json = '{}' WHERE id = :i",
                    "DELETE FROM reports WHERE id = :i",
                    "UPDATE signatures SET signer_name = 'Dr. Mallory' WHERE report_id = :i",
                    "DELETE FROM signatures WHERE report_id = :i",
                    "UPDATE report_versions SET text = 'x' WHERE report_id = :i",
                    "DELETE FROM report_versions WHERE report_id = :i"):
            with pytest.raises(Exception, match=r"immutable|permission denied"), \
                    engine.begin() as conn:
                conn.execute(text(sql), {"i": rid})
    with db.factory() as s:
        assert reports.verify_signature(s, rid).ok
    with db.factory.begin() as s:
        other = reports.amend_report(s, rid, doc, "corrected text").id
    with db.admin_engine().begin() as conn:  # the unsigned amendment is not guarded
        conn.execute(text("UPDATE reports SET text = 'corrected again' WHERE id = :i"),
                     {"i": other})


def test_signed_text_changed_in_sql_fails_verification(db: Db) -> None:
    rid, doc = _setup(db)
    _bring_to(db, rid, doc, "SIGNED")
    with db.factory() as s:
        assert reports.verify_signature(s, rid).ok
    # the database refuses it, for the application role and for the owner (migration 0004)
    for engine in (db.engine, db.admin_engine()):
        with pytest.raises(Exception, match="immutable"), engine.begin() as conn:
            conn.execute(text("UPDATE reports SET text = text || ' tampered' WHERE id = :i"),
                         {"i": rid})
    # an attacker with owner rights drops the guard first: the signature check still catches it
    _drop_immutability_triggers(db)
    with db.admin_engine().begin() as conn:
        conn.execute(text("UPDATE reports SET text = text || ' tampered' WHERE id = :i"),
                     {"i": rid})
    with db.factory() as s:
        check = reports.verify_signature(s, rid)
    assert not check.ok and "report text differs from the signed content" in check.problems
    with db.admin_engine().begin() as conn:  # restore text, forge the signer name instead
        conn.execute(text("UPDATE reports SET text = replace(text, ' tampered', '') "
                          "WHERE id = :i"), {"i": rid})
        conn.execute(text("UPDATE signatures SET signer_name = 'Dr. Mallory'"))
    with db.factory() as s:
        check = reports.verify_signature(s, rid)
    assert check.problems == ("signature manifest (signer, time, meaning) was altered",)


def test_signed_report_immutable_in_orm(db: Db) -> None:
    rid, doc = _setup(db)
    _bring_to(db, rid, doc, "SIGNED")
    with pytest.raises(ImmutableReportError, match="amendment"), db.factory.begin() as s:
        r = s.get(Report, rid)
        assert r is not None
        r.text = "silently changed"
        s.flush()


def test_amendment_links_versions_and_keeps_both(db: Db) -> None:
    rid, doc = _setup(db)
    _bring_to(db, rid, doc, "SIGNED")
    with db.factory.begin() as s:
        new = reports.amend_report(s, rid, doc, decided("IMPRESSION:\nNodule is 11 mm.\n"))
        new_id = new.id
        assert new.amends_report_id == rid and new.status == "IN_REVIEW"
    with db.factory.begin() as s:
        reports.sign_report(s, new_id, doc, PASSWORD, 1)
    with db.factory() as s:
        old_view, new_view = reports.read_report(s, rid, doc), reports.read_report(s, new_id, doc)
        assert old_view.status == new_view.status == "SIGNED"
        assert "9 mm" in old_view.text and "11 mm" in new_view.text
        assert new_view.amends_report_id == rid
        assert reports.verify_signature(s, rid).ok and reports.verify_signature(s, new_id).ok
        assert reports.versions(s, new_id)[0].kind == "amendment"
        s.commit()
    with pytest.raises(ReportValidationError, match="already has an amendment"):
        _do(db, rid, doc, "amend")


def test_stale_version_conflict(db: Db) -> None:
    rid, doc = _setup(db)
    with db.factory.begin() as s:
        reports.edit_report(s, rid, doc, "first edit", expected_version=1)
    with pytest.raises(ConflictError, match="changed by someone else") as info, \
            db.factory.begin() as s:
        reports.edit_report(s, rid, doc, "second edit", expected_version=1)
    assert (info.value.expected, info.value.actual) == (1, 2)
    with db.factory() as s:
        assert reports.get_report(s, rid).text == "first edit"


def test_two_concurrent_edits_one_conflict(db: Db) -> None:
    """Two clinicians edit version 1 at the same time: one wins, one gets ConflictError."""
    rid, doc = _setup(db)
    with db.factory.begin() as s:
        bob = add_user(s, "bob")
    barrier = threading.Barrier(2)
    results: dict[str, str] = {}

    def edit(actor: Actor, body: str) -> None:
        try:
            with db.factory.begin() as s:
                report = reports.get_report(s, rid)  # both read version 1
                barrier.wait(timeout=5) if db.backend == "postgresql" else None
                assert report.version_id == 1 or db.backend == "sqlite"
                reports.edit_report(s, rid, actor, body, expected_version=1)
            results[actor.username] = "ok"
        except ConflictError:
            results[actor.username] = "conflict"

    threads = [threading.Thread(target=edit, args=(a, f"text by {a.username}"))
               for a in (doc, bob)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results.values()) == ["conflict", "ok"], results
    winner = next(k for k, v in results.items() if v == "ok")
    with db.factory() as s:
        r = reports.get_report(s, rid)
        assert r.text == f"text by {winner}" and r.version_id == 2
        assert len(reports.versions(s, rid)) == 2


def test_login_success_and_failures_audited(db: Db) -> None:
    _setup(db)
    with db.factory.begin() as s:
        assert authenticate(s, "alice", PASSWORD).username == "alice"
    for user, pw in (("alice", "nope nope nope"), ("mallory", PASSWORD)):
        with pytest.raises(AuthenticationError, match="login failed"), \
                unit_of_work(db.factory) as s:
            authenticate(s, user, pw)
    logins = [e for e in _events(db) if e[0] == "LOGIN"]
    assert logins == [("LOGIN", 0, "alice"), ("LOGIN", 4, "alice"), ("LOGIN", 4, "mallory")]
    with db.factory() as s:
        details = s.scalars(select(AuditEvent.detail).where(AuditEvent.outcome == 4)).all()
    assert details == ["wrong password", "unknown user"]


def test_status_values_are_constrained(db: Db) -> None:
    rid, _ = _setup(db)
    with pytest.raises(Exception, match=r"(?i)check|constraint"), \
            db.admin_engine().begin() as conn:
        conn.execute(text("UPDATE reports SET status = 'FINAL' WHERE id = :i"), {"i": rid})
    assert ReportStatus("SIGNED") is ReportStatus.SIGNED
