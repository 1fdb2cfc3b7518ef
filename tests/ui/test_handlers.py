"""Every handler of the review app as a plain function, on a copy of the seeded SQLite DB."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from medassist import audit
from medassist.errors import (
    AuthenticationError,
    IllegalTransitionError,
    MedAssistError,
    NotFoundError,
    PermissionDeniedError,
    ReportValidationError,
)
from medassist.storage import (
    AuditEvent,
    Report,
    ReportVersion,
    make_engine,
    session_factory,
    unit_of_work,
)
from tests.dicom_factory import zip_folder
from tests.ui.conftest import USERS, XSS, Seeded, copy_db
from ui.config import UIConfig, load_config
from ui.errors import LockedOutError, NotLoggedInError, SessionExpiredError, UIConfigError, UIError
from ui.handlers import (
    ClientInfo,
    EmrView,
    Handlers,
    StudyView,
    emr_segments,
    make_services,
    priority,
)
from ui.imaging import PRESETS, StudyImages, window_volume
from ui.report_text import (
    FindingReview,
    compose,
    pending_note,
    reviews_from_text,
    split_findings,
    split_text,
)
from ui.sessions import SessionStore

ROOT = Path(__file__).resolve().parents[2]


def _handlers(seeded: Seeded, tmp_path: Path, **cfg: object) -> Handlers:
    url = copy_db(seeded, tmp_path / "ui.db")
    engine = make_engine(url)
    config = UIConfig(**{"lockout_failures": 3, **cfg})  # type: ignore[arg-type]
    return Handlers(make_services(session_factory(engine), config, tmp_path / "exports"))


@pytest.fixture()
def h(seeded: Seeded, tmp_path: Path) -> Handlers:
    return _handlers(seeded, tmp_path)


def _login(h: Handlers, user: str) -> str:
    return h.login(user, USERS[user][2]).token


def _events(h: Handlers, event_type: str, object_id: str | None = None) -> list[AuditEvent]:
    with unit_of_work(h.s.factory) as s:
        q = select(AuditEvent).where(AuditEvent.event_type == event_type)
        if object_id is not None:
            q = q.where(AuditEvent.object_id == object_id)
        return list(s.scalars(q.order_by(AuditEvent.seq)))


def _report(h: Handlers, rid: int) -> Report:
    with unit_of_work(h.s.factory) as s:
        r = s.get(Report, rid)
        assert r is not None
        s.expunge(r)
        return r


# --------------------------------------------------------------------------- login


def test_login_logout_and_audit(h: Handlers) -> None:
    r = h.login("dr.alice", USERS["dr.alice"][2])
    assert r.role == "clinician" and r.display_name == "Dr Alice Able" and len(r.token) > 30
    assert h.alive(r.token) and h.whoami(r.token).role == "clinician"
    h.logout(r.token)
    assert not h.alive(r.token)
    with pytest.raises(NotLoggedInError):
        h.worklist(r.token)
    assert [e.outcome for e in _events(h, "LOGIN", "dr.alice")] == [0]
    assert len(_events(h, "LOGOUT", "dr.alice")) == 1


def test_wrong_password_and_lockout_from_audit(h: Handlers) -> None:
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            h.login("dr.bob", "wrong-password")
    # locked now, even with the right password; the refusal is audited
    with pytest.raises(LockedOutError, match="locked"):
        h.login("dr.bob", USERS["dr.bob"][2])
    assert any(e.detail == "login while locked out" for e in _events(h, "REFUSAL", "dr.bob"))
    # other users are not affected
    assert h.login("dr.alice", USERS["dr.alice"][2]).token


def test_lockout_expires_and_success_resets(seeded: Seeded, tmp_path: Path) -> None:
    h = _handlers(seeded, tmp_path, lockout_s=0.5)
    with pytest.raises(AuthenticationError):
        h.login("dr.bob", "wrong")
    h.login("dr.bob", USERS["dr.bob"][2])  # one failure then success: not locked
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            h.login("dr.bob", "wrong")
    with pytest.raises(LockedOutError):
        h.login("dr.bob", USERS["dr.bob"][2])
    import time

    time.sleep(0.6)
    assert h.login("dr.bob", USERS["dr.bob"][2]).role == "clinician"


def test_inactivity_logoff() -> None:
    now = [0.0]
    store = SessionStore(idle_s=60, clock=lambda: now[0])
    s = store.create(1, "u", "U", "clinician")
    now[0] = 59
    assert store.get(s.token).username == "u"  # activity refreshes the session
    now[0] = 118
    store.get(s.token, touch=False)
    now[0] = 120
    with pytest.raises(SessionExpiredError):
        store.get(s.token)
    with pytest.raises(NotLoggedInError):
        store.get(s.token)
    with pytest.raises(NotLoggedInError):
        store.get(None)


def test_sso_header_only_from_trusted_proxy(seeded: Seeded, tmp_path: Path) -> None:
    h = _handlers(seeded, tmp_path, sso_user_header="X-Remote-User",
                  trusted_proxies=("10.1.0.0/16",))
    pw = USERS["dr.alice"][2]
    ok = ClientInfo("10.1.2.3", {"x-remote-user": "dr.alice"})
    assert h.login("dr.alice", pw, ok).username == "dr.alice"
    for client in (ClientInfo("10.2.0.1", {"x-remote-user": "dr.alice"}),  # not a proxy
                   ClientInfo("10.1.2.3", {"x-remote-user": "dr.bob"}),    # other SSO user
                   ClientInfo("10.1.2.3", {}), None):
        with pytest.raises(AuthenticationError, match="single sign-on"):
            h.login("dr.alice", pw, client)
    # without sso_user_header the header means nothing
    (tmp_path / "2").mkdir()
    h2 = _handlers(seeded, tmp_path / "2")
    assert h2.login("dr.alice", pw, ClientInfo("1.2.3.4", {"x-remote-user": "x"})).token


def test_config_precedence_and_validation(tmp_path: Path) -> None:
    f = tmp_path / "ui.yaml"
    f.write_text("ui:\n  session_idle_s: 100\n  lockout_failures: 7\n"
                 "  trusted_proxies: [127.0.0.1, 10.0.0.0/8]\n", encoding="utf-8")
    c = load_config(f, environ={"MEDASSIST_UI_LOCKOUT_FAILURES": "4"},
                    overrides={"session_idle_s": 30.0, "concurrency": None})
    assert (c.session_idle_s, c.lockout_failures, c.concurrency) == (30.0, 4, 8)
    assert c.is_trusted_proxy("10.9.9.9") and not c.is_trusted_proxy("11.0.0.1")
    assert not UIConfig().is_trusted_proxy("127.0.0.1")  # nothing trusted by default
    assert load_config(environ={}).session_idle_s == 900.0  # configs/ui.yaml
    for bad in ("ui:\n  nope: 1\n", "ui:\n  session_idle_s: abc\n",
                "ui:\n  trusted_proxies: [not-an-ip]\n", "ui:\n  sso_user_header: 'a b'\n"):
        f.write_text(bad, encoding="utf-8")
        with pytest.raises(UIConfigError):
            load_config(f, environ={})
    with pytest.raises(UIConfigError):
        load_config(tmp_path / "missing.yaml")


# --------------------------------------------------------------------------- worklist


def test_worklist_filter_search_and_roles(h: Handlers, seeded: Seeded) -> None:
    tok = _login(h, "dr.alice")
    rows = h.worklist(tok)
    assert {r.report_id for r in rows} == set(seeded.reports.values())
    assert all(r.status == "DRAFT" for r in rows)
    truth = next(r for r in rows if r.report_id == seeded.reports["truth"])
    assert truth.priority == "high" and rows[0] == truth  # present finding first
    assert {r.priority for r in rows} >= {"high", "check"}
    assert h.worklist(tok, "SIGNED") == []
    one = rows[1]
    assert [r.report_id for r in h.worklist(tok, "all", one.pseudo_id[:12])] == [one.report_id]
    assert one.accession
    assert [r.report_id for r in h.worklist(tok, "all", one.accession)] == [one.report_id]
    with pytest.raises(UIError):
        h.worklist(tok, "BOGUS")
    aud = _login(h, "aud.ann")
    with pytest.raises(PermissionDeniedError):
        h.worklist(aud)
    assert any("may not open the worklist" in e.detail for e in _events(h, "REFUSAL"))
    with pytest.raises(NotLoggedInError):
        h.worklist(None)


# --------------------------------------------------------------------------- study


def test_open_study_view_emr_and_audit(h: Handlers, seeded: Seeded) -> None:
    tok = _login(h, "dr.alice")
    v = h.open_study(tok, seeded.reports["truth"])
    assert v.status == "DRAFT" and not v.read_only and v.n_slices > 20
    assert set(v.weights) == {"CT", "EMR"} and abs(sum(v.weights.values()) - 1) < 1e-3
    present = [r for r in v.reviews if r.present]
    assert len(present) == 1 and present[0].slices
    assert present[0].slices[0] <= v.start_slice <= present[0].slices[-1]
    assert v.emr.available
    marked = [t for t, lab in v.emr.segments if lab]
    assert len(marked) == 1 and len(marked[0]) == 40
    assert "".join(t for t, _ in v.emr.segments) == \
        (seeded.cases["truth"] / "emr.txt").read_text(encoding="utf-8")
    assert len(_events(h, "PHI_READ", str(v.report_id))) == 1
    # the draft's coverage (drafts since stop 33 carry it) reaches the header's note
    from medassist.draft import ReportDraft
    from medassist.reports import get_report
    from ui.handlers import coverage_note

    with unit_of_work(h.s.factory) as s:
        stored = ReportDraft.from_json(get_report(s, v.report_id).draft_json)
    assert stored.coverage is not None and v.coverage == coverage_note(stored.coverage)
    x = h.open_study(tok, seeded.reports["xss"])
    assert XSS in "".join(t for t, _ in x.emr.segments)  # plain text pieces, as written
    with pytest.raises(NotFoundError):
        h.open_study(tok, 9999)
    with pytest.raises(PermissionDeniedError):
        h.open_study(_login(h, "adm.adam"), v.report_id)


def test_what_the_note_changed_is_stated_beside_it(h: Handlers, seeded: Seeded) -> None:
    """A model draft with a note says what the note changed in the calls (since stop 50):
    the sentence of its stored ``note_effect``, after what is highlighted."""
    from medassist.draft import ReportDraft
    from medassist.reports import get_report

    v = h.open_study(_login(h, "dr.alice"), seeded.reports["model0"])
    with unit_of_work(h.s.factory) as s:
        stored = ReportDraft.from_json(get_report(s, v.report_id).draft_json)
    assert stored.note_effect is not None and stored.note_effect.largest is not None
    said = stored.note_effect.summary()
    assert said.startswith("Without the note, ")
    assert v.emr.available and v.emr.message.endswith(" " + said)


def _with_note(h: Handlers, seeded: Seeded, tmp_path: Path, note: bytes) -> EmrView:
    """The study view of model0's draft with its study moved to a copy whose emr.txt holds
    ``note``."""
    from medassist.pacs.models import IngestItem

    case = tmp_path / "case"
    shutil.copytree(seeded.cases["model0"], case)
    (case / "emr.txt").write_bytes(note)
    with unit_of_work(h.s.factory) as s:
        row = s.scalars(select(IngestItem).where(
            IngestItem.study_uid == seeded.study_uids["model0"])).one()
        row.location = str(case / "dicom")
    return h.open_study(_login(h, "dr.alice"), seeded.reports["model0"]).emr


def test_changed_emr_is_not_shown(h: Handlers, seeded: Seeded, tmp_path: Path) -> None:
    emr = _with_note(h, seeded, tmp_path, b"another note")
    assert not emr.available and "changed" in emr.message and emr.segments == []


def test_unreadable_emr_is_not_shown(h: Handlers, seeded: Seeded, tmp_path: Path) -> None:
    """A note that is not UTF-8 (medassist.emr.read_note's input error) is said to be
    unreadable, not shown garbled and not a crash of the handler."""
    emr = _with_note(h, seeded, tmp_path, "Patient f\u00e9brile.".encode("latin-1"))
    assert not emr.available and "cannot be read" in emr.message and emr.segments == []


def test_render_windows_overlay_and_cache(h: Handlers, seeded: Seeded) -> None:
    tok = _login(h, "dr.alice")
    rid = seeded.reports["truth"]
    v = h.open_study(tok, rid)
    k = v.start_slice
    plain = np.asarray(h.render(tok, rid, k, *PRESETS["lung"], False))
    boxed = np.asarray(h.render(tok, rid, k, *PRESETS["lung"], True))
    assert plain.ndim == 2 and min(plain.shape) >= 256
    assert boxed.ndim == 3 and (boxed[..., 0] != boxed[..., 1]).any()  # coloured box
    far = next(i for i in range(v.n_slices) if i not in v.reviews[0].slices and
               all(i not in r.slices for r in v.reviews))
    assert np.asarray(h.render(tok, rid, far, *PRESETS["lung"], True)).ndim == 2
    bone = np.asarray(h.render(tok, rid, k, *PRESETS["bone"], False))
    assert not np.array_equal(plain, bone)
    assert h.finding_slice(tok, v.reviews, [r.present for r in v.reviews].index(True)) \
        == v.start_slice
    assert h.finding_slice(tok, v.reviews, 1 if not v.reviews[1].present else 2) is None
    with pytest.raises(UIError, match="outside"):
        h.render(tok, rid, v.n_slices, *PRESETS["lung"], False)
    with pytest.raises(UIError, match="width"):
        h.render(tok, rid, k, 0, 40, False)
    with pytest.raises(UIError):
        h.preset("brain")
    with pytest.raises(PermissionDeniedError):
        h.render(_login(h, "aud.ann"), rid, k, 400, 40, False)
    assert len(h.s.images._items) == 1


def test_window_volume_and_study_images() -> None:
    hu = np.array([[[-1000, -600, 150]]], dtype=np.int16)
    assert window_volume(hu, 1500, -600).tolist() == [[[59, 127, 255]]]  # (HU + 1350) * 255 / 1500
    si = StudyImages(np.zeros((3, 4, 4), dtype=np.int16), max_windows=1)
    si.render(0, 400, 40)
    si.render(0, 1500, -600)
    assert len(si._windows) == 1


# --------------------------------------------------------------------------- editing


def test_report_text_round_trip(seeded: Seeded, h: Handlers) -> None:
    with unit_of_work(h.s.factory) as s:
        rep = s.get(Report, seeded.reports["truth"])
        assert rep is not None
        from medassist.draft import ReportDraft

        d = ReportDraft.from_json(rep.draft_json)
        ai = rep.ai_text
    revs = reviews_from_text(d, ai)
    assert compose(split_text(ai), revs) == ai  # nothing decided: the AI text unchanged
    revs[0] = replace(revs[0], decision="edited", side="left", size_mm=12.5, text="a | b")
    revs[1] = replace(revs[1], decision="rejected")
    text = compose(split_text(ai), revs)
    back = reviews_from_text(d, text)
    assert (back[0].decision, back[0].side, back[0].size_mm, back[0].text) == \
        ("edited", "left", 12.5, "a | b")
    assert back[1].decision == "rejected" and back[2].decision == "pending"
    assert compose(split_text(text), back) == text
    assert split_findings(split_text(text)["findings"])[0] == split_text(ai)["findings"]


def test_apply_save_conflict_sign_export_amend(h: Handlers, seeded: Seeded) -> None:
    a, b = _login(h, "dr.alice"), _login(h, "dr.bob")
    rid = seeded.reports["truth"]
    va, vb = h.open_study(a, rid), h.open_study(b, rid)
    i = [r.present for r in va.reviews].index(True)
    revs = h.apply_finding(a, va.reviews, i, "edited", "left", 25, "Left upper lobe nodule.")
    j = [r.present for r in va.reviews].index(False)
    revs = h.apply_finding(a, revs, j, "rejected", "", None, "")
    with pytest.raises(UIError):
        h.apply_finding(a, va.reviews, i, "maybe", "", None, "")
    with pytest.raises(UIError):
        h.apply_finding(a, va.reviews, i, "edited", "up", None, "")
    with pytest.raises(UIError):
        h.apply_finding(a, va.reviews, i, "edited", "", -3, "")
    with pytest.raises(UIError):
        h.apply_finding(a, va.reviews, 99, "accepted", "", None, "")
    r1 = h.save(a, rid, va.version, va.sections, revs)
    assert r1.saved and r1.version == va.version + 1 and "size=25 mm" in r1.text
    assert h.save(a, rid, r1.version, va.sections, revs).message == "No change to save."
    # Bob edited the version Alice started from: conflict, nothing overwritten
    mine = dict(vb.sections, impression="Bob's impression.")
    r2 = h.save(b, rid, vb.version, mine, vb.reviews)
    assert not r2.saved and r2.conflict is not None
    assert "Dr Alice Able saved this report first" in r2.conflict.message
    assert r2.conflict.their_text == r1.text and "Bob's impression." in r2.conflict.their_diff
    assert _report(h, rid).text == r1.text
    # Bob reloads and applies his change again: both edits are kept in the versions
    vb2 = h.open_study(b, rid)
    r3 = h.save(b, rid, vb2.version, dict(vb2.sections, impression="Bob's impression."),
                vb2.reviews)
    assert r3.saved and "size=25 mm" in r3.text and "Bob's impression." in r3.text
    with unit_of_work(h.s.factory) as s:
        texts = [v.text for v in s.scalars(select(ReportVersion).where(
            ReportVersion.report_id == rid).order_by(ReportVersion.number))]
    assert texts[1:] == [r1.text, r3.text]
    # signing: refused while some AI findings have no decision (named), nothing changed
    undecided = [r.label for r in vb2.reviews if r.decision == "pending"]
    assert undecided and len(undecided) == len(vb2.reviews) - 2
    with pytest.raises(ReportValidationError, match=f"have no decision \\({undecided[0]}") as e:
        h.sign(a, rid, r3.version, USERS["dr.alice"][2])
    assert "press 'Accept the undecided findings'" in str(e.value)
    assert _report(h, rid).status == "DRAFT" and _report(h, rid).version_id == r3.version
    # the rest accepted as drafted in one step; the reviewer's decisions kept
    v4 = h.open_study(a, rid)
    with pytest.raises(PermissionDeniedError):
        h.accept_undecided(_login(h, "adm.adam"), v4.reviews)
    revs4 = h.accept_undecided(a, v4.reviews)
    assert [r.decision for r in revs4] == [
        {i: "edited", j: "rejected"}.get(k, "accepted") for k in range(len(revs4))]
    assert [(r.side, r.size_mm, r.text) for r in revs4] == \
        [(r.side, r.size_mm, r.text) for r in v4.reviews]
    assert pending_note(v4.reviews) == (f"{len(undecided)} of {len(v4.reviews)} AI findings "
                                        "still need a decision before signing.")
    assert pending_note(revs4) == ""
    # with the text: what it still marks unverified too (the draft's guard)
    marked = compose(dict(v4.sections, impression="[UNVERIFIED: side uncertain on the CT] "
                          "Right effusion."), revs4)
    assert pending_note(revs4, marked) == (
        "Check before signing: 1 sentence(s) still carry the draft's [UNVERIFIED] mark; check "
        "each and delete its mark, or edit or delete the sentence.")
    assert pending_note(v4.reviews, marked).startswith(
        f"{len(undecided)} of {len(v4.reviews)} AI findings still need a decision before "
        "signing. Check before signing: 1 sentence(s)")
    r4 = h.save(a, rid, v4.version, v4.sections, revs4)
    assert r4.saved and all(f"- {u} [accepted]" in r4.text for u in undecided)
    # wrong password refused (audited), the report stays a draft
    with pytest.raises(AuthenticationError):
        h.sign(a, rid, r4.version, "not-my-password")
    assert _report(h, rid).status == "DRAFT"
    assert any(e.outcome == 4 for e in _events(h, "REPORT_SIGN", str(rid)))
    with pytest.raises(Exception, match="changed by someone else"):
        h.sign(a, rid, r1.version, USERS["dr.alice"][2])
    sig = h.sign(a, rid, r4.version, USERS["dr.alice"][2])
    assert (sig.signer_name, sig.meaning) == ("Dr Alice Able", "reviewed and approved")
    assert sig.signed_at.endswith("Z")
    assert Path(sig.exports["fhir"]).is_file() and Path(sig.exports["sr"]).is_file()
    fhir = json.loads(Path(sig.exports["fhir"]).read_text(encoding="utf-8"))
    assert fhir["status"] == "final"
    # the exports state the signed decisions: the rejected finding left out, the edited
    # one's side and size the reviewer's
    obs = {o["id"]: o for o in fhir["contained"] if o["resourceType"] == "Observation"}
    assert f"finding-{j + 1}" not in obs and len(obs) == len(va.reviews) - 1
    comps = {c["code"]["text"]: c for c in obs[f"finding-{i + 1}"]["component"]}
    assert comps["Laterality"]["valueCodeableConcept"]["text"] == "Left"
    assert [c["valueQuantity"]["value"] for t, c in comps.items()
            if t.endswith("(stated by the reviewer)")] == [25.0]
    v = h.open_study(a, rid)
    assert v.read_only and v.signature is not None and v.status == "SIGNED"
    with pytest.raises(IllegalTransitionError):
        h.save(a, rid, v.version, dict(v.sections, impression="late"), v.reviews)
    new = h.amend(a, rid)
    nv = h.open_study(a, new)
    assert nv.status == "IN_REVIEW" and nv.amends_report_id == rid and not nv.read_only
    assert _report(h, rid).status == "SIGNED"
    with pytest.raises(PermissionDeniedError):
        h.sign(_login(h, "adm.adam"), new, nv.version, USERS["adm.adam"][2])


def _a_finding_rejected(h: Handlers) -> tuple[str, int, StudyView, str,
                                                list[FindingReview]]:
    """Dr Alice opens the first worklist report and rejects a finding that a sentence naming
    it alone affirms: (token, report id, the view opened, its label, the reviews)."""
    from medassist.labeler import label_sentence

    a = _login(h, "dr.alice")
    rid = next(iter(h.worklist(a))).report_id
    v = h.open_study(a, rid)
    k = next(n for n, r in enumerate(v.reviews)
             if label_sentence(r.label.replace("_", " ") + ".").get(r.label))
    return a, rid, v, v.reviews[k].label, h.apply_finding(a, v.reviews, k, "rejected", "",
                                                          None, "")


def test_a_save_warns_of_prose_that_states_a_rejected_finding(h: Handlers) -> None:
    """Rejecting a finding does not edit the prose: a save whose narrative still affirms it
    is kept and its message says which sentence; once the narrative no longer does, none."""
    a, rid, v, label, revs = _a_finding_rejected(h)
    sentence = label.replace("_", " ").capitalize() + "."
    r = h.save(a, rid, v.version, dict(v.sections, findings=sentence), revs)
    assert r.saved and r.message.startswith(f"Saved (version {r.version}). Check before "
                                            "signing:")
    assert f'({label}): affirms a finding you rejected: "{sentence}"' in r.message
    r2 = h.save(a, rid, r.version, dict(v.sections, findings="Lungs clear.",
                                        impression="Normal study."), revs)
    assert r2.saved and r2.message == f"Saved (version {r2.version})."


def test_signing_a_text_against_its_decisions_needs_the_signers_confirmation(
        h: Handlers) -> None:
    """A saved text whose narrative affirms a rejected finding and whose impression keeps
    the draft's [UNVERIFIED] mark: the save says so, and signing is refused before the
    password is checked, naming the sentences and the box to tick; ticked ("Sign the text as
    written"), it signs, and the audit entry records what was confirmed, by label."""
    a, rid, v, label, rejected = _a_finding_rejected(h)
    revs = h.accept_undecided(a, rejected)
    sections = dict(v.sections, findings=label.replace("_", " ").capitalize() + ".",
                    impression="[UNVERIFIED: side uncertain on the CT] Findings as above.")
    r = h.save(a, rid, v.version, sections, revs)
    assert r.saved and "1 sentence(s) still carry the draft's [UNVERIFIED] mark" in r.message
    with pytest.raises(ReportValidationError, match=(
            f"2 sentence\\(s\\) .*FINDINGS sentence 1 \\({label}\\): affirms a finding you "
            r"rejected; IMPRESSION sentence 1: still carries .*tick 'Sign the text as "
            r"written'")):
        h.sign(a, rid, r.version, "not-my-password")
    assert _report(h, rid).status == "DRAFT"
    assert not any(e.outcome == 4 for e in _events(h, "REPORT_SIGN", str(rid)))
    sig = h.sign(a, rid, r.version, USERS["dr.alice"][2], confirm_text=True)
    assert sig.signer_name == "Dr Alice Able" and _report(h, rid).status == "SIGNED"
    assert _events(h, "REPORT_SIGN", str(rid))[-1].detail == (
        f"meaning=reviewed and approved; text confirmed as written despite {label} rejected, "
        "text unverified")


def _sr_refs(path: Path) -> tuple[set[str], list[list[str]]]:
    """An SR's evidence (the SOPInstanceUIDs it lists) and each measurement group's source
    image references."""
    import pydicom

    from medassist.export.sr import group_source_uids, measurement_groups

    ds = pydicom.dcmread(path)
    evidence = {i.ReferencedSOPInstanceUID for e in ds.CurrentRequestedProcedureEvidenceSequence
                for se in e.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    return evidence, [group_source_uids(g) for g in measurement_groups(ds)]


def test_a_study_batched_from_a_zip_file(seeded: Seeded, tmp_path: Path) -> None:
    """A generated case's dicom/ folder zipped (a README member first) and batched by
    `medassist batch` (its note beside it as <stem>.txt): the study view shows the same volume
    as the case's folder gives, the worklist reads its accession from the archive, signing
    writes an SR read from the archive's members with the study's UID and the same instance
    references as an SR from the folder, and `pacs send`'s local resolver reads them too.
    Without its location (none recorded, gone) only FHIR is written and the result says why;
    a zip that is not an archive fails the export with a reason and gives no accession."""
    import io

    import pydicom

    from medassist import reports
    from medassist.batch_cli import run_batch
    from medassist.export.sr import build_sr
    from medassist.pacs.models import IngestItem
    from medassist.pacs.sendback import local_sources
    from medassist.pipeline import build_volume, select_series, series_files, series_sources
    from medassist.storage import Study
    from ui.handlers import _accession
    from ui.seed import generate_cases

    h = _handlers(seeded, tmp_path)
    (case,) = generate_cases(tmp_path / "gen", [6])
    inp = tmp_path / "zips"
    inp.mkdir()
    archive = zip_folder(case / "dicom", inp / "study6.zip")
    shutil.copy(case / "emr.txt", inp / "study6.txt")
    sink = io.StringIO()
    summary = run_batch(inp, db=f"sqlite:///{tmp_path / 'ui.db'}",
                        checkpoint=str(seeded.checkpoint), err=sink, out=sink)
    assert (summary["done"], summary["failed"]) == (1, 0), sink.getvalue()
    series = select_series(case / "dicom")
    uid = series.study_uid
    with unit_of_work(h.s.factory) as s:
        rid = s.scalars(select(Report.id).join(Study, Report.study_id == Study.id)
                        .where(Study.study_uid == uid)).one()
        assert s.scalars(select(IngestItem.location).where(IngestItem.study_uid == uid)
                         ).one() == str(archive)
    tok = _login(h, "dr.alice")
    # images: the same HU volume as the case's folder gives
    v = h.open_study(tok, rid)
    folder_vol = build_volume(series)
    folder_hu = np.asarray(folder_vol.array)
    with unit_of_work(h.s.factory) as s:
        _, imgs = h._load_images(s, reports.get_report(s, rid))
    assert imgs.hu.shape == folder_hu.shape and np.array_equal(imgs.hu, folder_hu)
    assert v.n_slices == folder_hu.shape[0] and v.emr.available
    assert np.asarray(h.render(tok, rid, v.n_slices // 2, *PRESETS["lung"], False)).ndim == 2
    # accession: the first DICOM member's (the README before it is skipped)
    accession = str(pydicom.dcmread(series_files(series)[0]).AccessionNumber)
    row = next(r for r in h.worklist(tok) if r.report_id == rid)
    assert accession and row.accession == accession
    assert [r.report_id for r in h.worklist(tok, "all", accession)] == [rid]
    # sign: FHIR and an SR whose sources are the archive's members
    r = h.save(tok, rid, v.version, dict(v.sections, impression="No acute findings."),
               h.accept_undecided(tok, v.reviews))
    sig = h.sign(tok, rid, r.version, USERS["dr.alice"][2])
    assert (sig.export_error, sig.export_note) == ("", "")
    assert sorted(sig.exports) == ["fhir", "sr"]
    sr_path = Path(sig.exports["sr"])
    ds = pydicom.dcmread(sr_path)
    assert ds.StudyInstanceUID == uid and ds.VerificationFlag == "VERIFIED"
    folder_sops = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                   for p in series_files(series)}
    with unit_of_work(h.s.factory) as s:
        view = reports.report_view(s, reports.get_report(s, rid))
    from_folder = tmp_path / "from_folder.dcm"
    build_sr(view, [str(p) for p in series_files(series)]).save_as(from_folder,
                                                                   enforce_file_format=True)
    evidence, groups = _sr_refs(sr_path)
    assert evidence == folder_sops and (evidence, groups) == _sr_refs(from_folder)
    assert len(groups) == len(view.draft.findings)
    # the tiny model cites no slices: with some cited, the archive's members give the same
    # references as the folder's files, the instances at those positions along the axis
    f0 = view.draft.findings[0]
    cited = replace(view, draft=replace(view.draft, findings=(
        replace(f0, evidence=replace(f0.evidence, slices=(3, 4, 5))),
        *view.draft.findings[1:])))
    for sources, out in ((series_sources(select_series(archive)), tmp_path / "z.dcm"),
                         ([str(p) for p in series_files(series)], tmp_path / "f.dcm")):
        build_sr(cited, sources).save_as(out, enforce_file_format=True)
    zip_refs, folder_refs = _sr_refs(tmp_path / "z.dcm"), _sr_refs(tmp_path / "f.dcm")
    assert zip_refs == folder_refs and len(zip_refs[1][0]) == 3
    in_array_order = folder_vol.provenance.instance_uids  # the draft's slice indices' order
    assert zip_refs[1][0] == [in_array_order[k] for k in (3, 4, 5)]
    with unit_of_work(h.s.factory) as s:
        local = local_sources(s, uid, series.series_uid)
    assert {d.SOPInstanceUID for d in local} == folder_sops
    # no location recorded, or gone: FHIR only, and the result says why
    for location, why in ((None, "keeps no folder or zip file"),
                          (str(tmp_path / "gone.zip"), "no longer where")):
        with unit_of_work(h.s.factory) as s:
            s.scalars(select(IngestItem).where(IngestItem.study_uid == uid)).one().location = \
                location
        ex = h.export(tok, rid)
        assert sorted(ex.paths) == ["fhir"] and why in ex.note
    fresh = Handlers(make_services(h.s.factory, h.s.config, tmp_path / "exports2"))
    with pytest.raises(UIError, match="no longer where"):
        fresh.open_study(_login(fresh, "dr.alice"), rid)
    # a .zip that is not an archive: the export fails with its reason (sign reports it as
    # export_error), the images say they cannot be read, and there is no accession
    archive.write_bytes(b"not a zip archive" * 64)
    with unit_of_work(h.s.factory) as s:
        s.scalars(select(IngestItem).where(IngestItem.study_uid == uid)).one().location = \
            str(archive)
    with pytest.raises(MedAssistError, match="CT series"):
        h.export(tok, rid)
    with pytest.raises(UIError, match="cannot read the images"):
        fresh.open_study(_login(fresh, "dr.alice"), rid)
    assert _accession(archive, {}) == "" and _accession(tmp_path / "none.zip", {}) == ""


def test_reject_needs_reason(h: Handlers, seeded: Seeded) -> None:
    tok = _login(h, "dr.alice")
    rid = seeded.reports["model0"]
    v = h.open_study(tok, rid)
    with pytest.raises(ReportValidationError, match="reason"):
        h.reject(tok, rid, v.version, "   ")
    assert _report(h, rid).status == "DRAFT"
    assert h.reject(tok, rid, v.version, "Wrong patient series.") == "REJECTED"
    rep = _report(h, rid)
    assert rep.status == "REJECTED" and rep.rejection_reason == "Wrong patient series."
    assert h.open_study(tok, rid).read_only


# --------------------------------------------------------------------------- audit, batch


def test_audit_view_roles_and_verify(h: Handlers, seeded: Seeded) -> None:
    c = _login(h, "dr.alice")
    rid = seeded.reports["truth"]
    h.open_study(c, rid)
    with pytest.raises(PermissionDeniedError):
        h.audit_view(c, str(rid))
    for user in ("aud.ann", "adm.adam"):
        a = h.audit_view(_login(h, user), seeded.study_uids["truth"])
        assert a.verify_ok and "intact" in a.verify_message
        kinds = [r[2] for r in a.rows]
        assert "DRAFT_CREATE" in kinds and "PHI_READ" in kinds
    assert h.audit_view(_login(h, "aud.ann"), str(rid)).rows == a.rows
    with pytest.raises(NotFoundError):
        h.audit_view(_login(h, "aud.ann"), "1.2.3")
    assert len(_events(h, "AUDIT_VERIFY")) == 3
    with unit_of_work(h.s.factory) as s:
        assert audit.verify(s).ok


def test_batch_status_shows_failures(h: Handlers) -> None:
    b = h.batch_status(_login(h, "aud.ann"))
    assert b.counts.get("done") == 5 and b.queue.get("done") == 5 and b.queue.get("failed") == 1
    assert len(b.failures) == 1 and "build_volume" in b.failures[0][3]
    # results not yet in the PACS: a queued send that failed, with its error, and every signed
    # report whose SR is not queued yet
    from io import BytesIO

    from medassist.pacs import outbox
    from medassist.pacs.sendback import unsent_signed
    from tests.pacs.helpers import text_sr

    buf = BytesIO()
    text_sr().save_as(buf, enforce_file_format=True)
    with unit_of_work(h.s.factory) as s:
        item = outbox.add(s, buf.getvalue(), kind="sr")
        item.state, item.attempts, item.last_error = "retrying", 2, "PacsUnavailableError: down"
        signed = unsent_signed(s)
    sends = h.batch_status(_login(h, "aud.ann")).sends
    assert sends[0][1:4] == ["retrying", "2", "PacsUnavailableError: down"]
    assert [r[0] for r in sends[1:]] == [f"report {rid} SR" for rid in signed]
    assert all(r[1] == "not queued" for r in sends[1:])
    with pytest.raises(NotLoggedInError):
        h.batch_status("forged-token")


def test_helpers() -> None:
    assert emr_segments("abcdef", [((1, 3), "x"), ((2, 4), "y")]) == \
        [("a", None), ("bc", "x"), ("d", "y"), ("ef", None)]
    assert emr_segments("", []) == []


def test_import_loads_nothing_and_app_builds(h: Handlers) -> None:
    code = "import sys, ui.app, ui.cli, ui.handlers; print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
    from ui.app import build_app

    app = build_app(h)
    fns = app.config["dependencies"]
    assert all(d["api_visibility"] == "private" for d in fns)


def test_priority_from_draft(h: Handlers, seeded: Seeded) -> None:
    from medassist.draft import ReportDraft

    with unit_of_work(h.s.factory) as s:
        drafts = {k: ReportDraft.from_json(s.get(Report, rid).draft_json)  # type: ignore[union-attr]
                  for k, rid in seeded.reports.items()}
    assert priority(drafts["truth"]) == "high"
    assert priority(drafts["model0"]) == "check"  # low-confidence findings, none present
    from medassist.draft import Coverage

    calm = replace(drafts["model0"], findings=tuple(
        replace(f, flags=()) for f in drafts["model0"].findings),
        coverage=Coverage(lung_in_model_grid=1.0))
    assert priority(calm) == "routine"
    # lungs the scan or the model did not cover: the reader checks them
    assert priority(replace(calm, coverage=Coverage(lung_in_model_grid=0.9))) == "check"
    assert priority(replace(calm, coverage=Coverage(
        lung_in_model_grid=1.0, scan_cuts_lung=("inferior",)))) == "check"
    assert priority(replace(calm, coverage=None)) == "routine"  # drafts before stop 33


def test_finding_rows_say_not_assessed_for_a_label_the_model_never_calls_and_found_on_ct(
) -> None:
    from ui.app import finding_rows
    from ui.report_text import FindingReview

    def review(present: bool, flags: tuple[str, ...]) -> FindingReview:
        return FindingReview(index=0, label="lung_nodule", present=present, probability=0.24,
                             flags=flags, slices=(), decision="pending", side="",
                             size_mm=None, text="Lung nodule: not assessed by this model.")

    rows = finding_rows([review(False, ("low_confidence", "not_assessed")),
                         review(False, ()), review(True, ("low_confidence",)),
                         review(False, ("small_not_assessed",)),
                         review(True, ("found_on_ct", "size_measured")),
                         review(False, ("low_confidence", "air_bronchograms"))])
    assert [r[2] for r in rows] == ["not assessed", "absent", "present",
                                    "absent (small ones not assessed)",
                                    "present (found on the CT)",
                                    "absent (air bronchograms: the consolidation)"]
    assert "air bronchograms: read as the consolidation" in rows[5][4]
    # a call made by the CT measurement (a pericardial effusion) says so beside the head's
    # probability, which did not make it
    assert rows[4][4] == "found on the CT"
    assert rows[0][4] == "low confidence; not assessed by the model" and rows[1][4] == "-"
    assert rows[3][4] == "small ones not assessed"
    # the finding as a reader names it; a flag the table does not know reads as itself
    assert rows[0][1] == "lung nodule"
    assert finding_rows([review(True, ("some_new_flag",))])[0][4] == "some_new_flag"


def test_finding_rows_say_a_side_resting_on_near_equal_evidence_is_uncertain() -> None:
    from ui.app import finding_rows
    from ui.report_text import FindingReview

    def review(side: str, model_side: str, flags: tuple[str, ...]) -> FindingReview:
        return FindingReview(index=0, label="lung_mass", present=True, probability=0.29,
                             flags=flags, slices=(), decision="pending", side=side,
                             size_mm=None, text="Left lung mass (lul).",
                             model_side=model_side)

    rows = finding_rows([review("left", "left", ("side_uncertain",)),
                         review("left", "left", ()),
                         review("right", "left", ("side_uncertain",))])  # reviewer's side
    assert [r[6] for r in rows] == ["left (uncertain on CT)", "left", "right"]
    assert rows[0][4] == "side uncertain on the CT"


def test_coverage_note() -> None:
    from medassist.draft import Coverage
    from ui.handlers import coverage_note

    assert coverage_note(None) == ""
    assert coverage_note(Coverage(lung_in_model_grid=0.998)) == ""  # below 0.5 %: not stated
    assert coverage_note(Coverage(lung_in_model_grid=0.92, scan_cuts_lung=("inferior",))) == \
        "COVERAGE: the scan ends within the lungs (inferior); the model did not see 8 % of " \
        "the lungs"
    assert coverage_note(Coverage(lung_in_model_grid=0.993)) == \
        "COVERAGE: the model did not see <1 % of the lungs"


def test_finding_rows_say_a_size_was_measured_on_the_ct_and_do_not_flag_it() -> None:
    from ui.app import finding_rows
    from ui.report_text import FindingReview

    def review(flags: tuple[str, ...]) -> FindingReview:
        return FindingReview(index=0, label="lung_mass", present=True, probability=0.9,
                             flags=flags, slices=(), decision="pending", side="left",
                             size_mm=42.3, text="Left lung mass, about 42 mm.",
                             model_size_mm=42.3)

    measured, head = finding_rows([review(("size_measured",)), review(())])
    assert measured[7] == "42.3 (measured on CT)" and measured[4] == "-"
    assert head[7] == "42.3 (estimate)"
    # with the measured axes (drafts since stop 31) the column reads as a report does
    axes = replace(review(("size_measured",)), size_axes_mm=(40.5, 33.0, 42.0))
    assert finding_rows([axes])[0][7] == \
        "42.3 (measured on CT; axial 40.5 x 33, craniocaudal 42)"
    assert finding_rows([replace(axes, size_mm=50.0)])[0][7] == "50 (edited)"
    # a size the reviewer changed is theirs, whatever the draft's was
    for flags in (("size_measured",), ()):
        edited = replace(review(flags), size_mm=50.0)
        assert edited.size_edited and not edited.size_measured
        assert finding_rows([edited])[0][7] == "50 (edited)"
    # a cardiomegaly's measured ratio: no size in mm, and no flag to check either
    ratio = FindingReview(index=0, label="cardiomegaly", present=True, probability=0.9,
                          flags=("ratio_measured",), slices=(), decision="pending",
                          side="midline", size_mm=None,
                          text="Cardiomegaly (heart), cardiothoracic ratio 0.62 measured on "
                               "the CT.")
    row = finding_rows([ratio])[0]
    assert row[7] == "-" and row[4] == "-"
    # with the ratio as a number (drafts since stop 29) the size column states it
    row = finding_rows([replace(ratio, ratio=0.62)])[0]
    assert row[7] == "CTR 0.62 (measured on CT)" and row[4] == "-"
