"""The review app in a real browser: Playwright drives Debian's Chromium (headless) against a
`medassist serve` subprocess on 127.0.0.1 with a seeded SQLite database.

Screenshots (worklist, study view with the evidence overlay, signed report) are written to
``$MEDASSIST_TEST_ARTIFACTS/ui`` (default ``out/test-artifacts/ui``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from medassist import audit
from medassist.storage import AuditEvent, Report, make_engine, session_factory, unit_of_work
from tests.ui.conftest import USERS, Seeded, copy_db

pw_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("MEDASSIST_TEST_ARTIFACTS", ROOT / "out" / "test-artifacts")) / "ui"
T = 30_000  # ms


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    db_url: str
    export_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def session(self) -> Any:
        return session_factory(make_engine(self.db_url))


def _start(seeded: Seeded, base: Path, **env_extra: str) -> Server:
    db_url = copy_db(seeded, base / "serve.db")
    port = _free_port()
    home = base / "home"
    home.mkdir()
    (base / "gradio").mkdir()
    env = {**os.environ, "HOME": str(home), "GRADIO_TEMP_DIR": str(base / "gradio"),
           "GRADIO_ANALYTICS_ENABLED": "False", "MEDASSIST_UI_LOCKOUT_FAILURES": "3",
           "PYTHONUNBUFFERED": "1", **env_extra}
    log = base / "serve.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medassist", "serve", "--db", db_url, "--host", "127.0.0.1",
             "--port", str(port), "--export-dir", str(base / "exports")],
            stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        try:
            if httpx.get(url + "/config", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() - t0 > 90:
            proc.kill()
            pytest.fail("medassist serve did not start:\n" + log.read_text(errors="replace"))
        time.sleep(0.3)
    return Server(url, db_url, base / "exports", proc, log)


def _stop(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()


@pytest.fixture(scope="module")
def server(seeded: Seeded, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not Path(CHROMIUM).is_file():
        pytest.fail("Debian chromium is missing: `make services` installs it")
    srv = _start(seeded, tmp_path_factory.mktemp("ui-server"))
    yield srv
    _stop(srv)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with pw_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@dataclass
class Watch:
    """Dialogs, page errors and console errors seen by a page (a script that ran)."""

    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _page(browser: Any, server: Server) -> tuple[Any, Any, Watch]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    w = Watch()

    def on_dialog(d: Any) -> None:
        w.dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda e: w.errors.append(str(e)))
    page.on("console", lambda m: w.errors.append(m.text) if m.type == "error" else None)
    page.goto(server.url + "/")
    return ctx, page, w


def _field(page: Any, elem_id: str) -> Any:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def _login(page: Any, user: str, password: str | None = None) -> None:
    _field(page, "login-user").fill(user)
    _field(page, "login-password").fill(password or USERS[user][2])
    page.click("#login-btn")
    page.wait_for_selector("#main-panel", state="visible", timeout=T)


def _open(page: Any, report_id: int) -> None:
    page.locator("#open-id input").fill(str(report_id))
    page.click("#open-btn")
    page.wait_for_function(
        "rid => { const el = document.querySelector('#study-header textarea, "
        "#study-header input'); return el && el.value.startsWith('Report ' + rid + ' '); }",
        arg=str(report_id), timeout=T)
    page.wait_for_selector("#ct-image img", timeout=T)


def _value(page: Any, elem_id: str) -> str:
    return str(_field(page, elem_id).input_value())


def _wait_value(page: Any, elem_id: str, pattern: str) -> str:
    try:
        page.wait_for_function(
            "([id, pat]) => { const el = document.querySelector('#' + id + ' textarea, #' + id "
            "+ ' input'); return el && new RegExp(pat).test(el.value); }",
            arg=[elem_id, pattern], timeout=T)
    except pw_api.TimeoutError:
        toasts = page.locator(".toast-body, .toast-text, [data-testid=toast-body]")
        raise AssertionError(f"#{elem_id} never matched {pattern!r}; toasts: "
                             f"{toasts.all_inner_texts()}; page: "
                             f"{page.locator('body').inner_text()[-3000:]}") from None
    return _value(page, elem_id)


def _img_src(page: Any) -> str:
    return str(page.locator("#ct-image img").get_attribute("src"))


def _wait_new_img(page: Any, old: str) -> str:
    page.wait_for_function(
        "old => { const i = document.querySelector('#ct-image img'); "
        "return i && i.complete && i.naturalWidth > 0 && i.getAttribute('src') !== old; }",
        arg=old, timeout=T)
    return _img_src(page)


def _toast(page: Any, text: str) -> None:
    page.get_by_text(re.compile(re.escape(text))).first.wait_for(timeout=T)


def _shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    p = ARTIFACTS / name
    page.screenshot(path=str(p), full_page=True)
    return p


def _report(server: Server, rid: int) -> Report:
    with unit_of_work(server.session()) as s:
        r = s.get(Report, rid)
        assert r is not None
        s.expunge(r)
        return r


# --------------------------------------------------------------------------- direct API


def _deps(server: Server) -> list[dict[str, Any]]:
    return list(httpx.get(server.url + "/config", timeout=10).json()["dependencies"])


def _call(server: Server, fn_index: int, data: list[Any], session_hash: str) -> dict[str, Any]:
    """One event through /gradio_api/queue/join + /queue/data, as the page sends it."""
    r = httpx.post(server.url + "/gradio_api/queue/join", timeout=10,
                   json={"data": data, "fn_index": fn_index, "session_hash": session_hash,
                         "event_data": None, "trigger_id": None})
    if r.status_code != 200:
        return {"success": False, "status": r.status_code, "output": r.text}
    with httpx.stream("GET", server.url + "/gradio_api/queue/data",
                      params={"session_hash": session_hash}, timeout=60) as s:
        for line in s.iter_lines():
            if line.startswith("data:"):
                m = json.loads(line[5:])
                if m.get("msg") == "process_completed":
                    return dict(m)
    raise AssertionError("no completion message")


# --------------------------------------------------------------------------- scenarios


def test_full_review(browser: Any, server: Server, seeded: Seeded) -> None:
    rid = seeded.reports["truth"]
    ctx, page, w = _page(browser, server)
    _login(page, "dr.alice")
    page.wait_for_selector("#worklist .virtual-row", timeout=T)
    assert page.locator("#worklist .virtual-row").count() == len(seeded.reports)
    _shot(page, "worklist.png")
    # open the study by clicking its worklist row
    page.locator("#worklist .virtual-row").filter(has_text="high").first.locator(
        "[role=gridcell]").first.click()
    page.wait_for_function(
        "rid => { const el = document.querySelector('#study-header textarea, "
        "#study-header input'); return el && el.value.startsWith('Report ' + rid + ' '); }",
        arg=str(rid), timeout=T)
    page.wait_for_selector("#ct-image img", timeout=T)
    # the status line says how many AI findings still need a decision
    _wait_value(page, "save-msg", r"^\d+ of \d+ AI findings still need a decision before "
                "signing")
    # step through slices with the keyboard on the slider
    src = _img_src(page)
    slider = page.locator("#slice input[type=range]")
    start = int(slider.input_value())
    for _ in range(3):
        slider.focus()
        page.keyboard.press("ArrowLeft")
        src = _wait_new_img(page, src)
    assert int(slider.input_value()) == start - 3
    # a finding row: jump to its slices, overlay on
    page.locator("#findings .virtual-row").filter(has_text="present").first.locator(
        "[role=gridcell]").first.click()
    page.wait_for_function(f"() => document.querySelector('#slice input[type=range]').value == "
                           f"'{start}'", timeout=T)
    src = _wait_new_img(page, src)
    assert page.locator("#overlay input").is_checked()
    _shot(page, "study-overlay.png")
    # edit the finding and save
    page.locator("#f-decision label", has_text="edited").click()
    page.locator("#f-size input").fill("25")
    _field(page, "f-text").fill("Left upper lobe nodule, 25 mm.")
    page.click("#f-apply")
    page.locator("#findings", has_text="Left upper lobe nodule, 25 mm.").wait_for(timeout=T)
    # the impression keeps a mark of the draft's guard: the save says it is unresolved
    _field(page, "sec-impression").fill("[UNVERIFIED: side uncertain on the CT] Left upper "
                                        "lobe nodule; CT follow-up advised.")
    page.click("#save-btn")
    _wait_value(page, "save-msg", r"Saved \(version 2\)\. Check before signing: 1 "
                r"sentence\(s\) still carry the draft's \[UNVERIFIED\] mark")
    assert "size=25 mm: Left upper lobe nodule, 25 mm." in _report(server, rid).text
    page.locator("#diff", has_text="Left upper lobe nodule, 25 mm.").wait_for(timeout=T)
    # sign: refused while other AI findings have no decision; then the rest accepted
    _field(page, "sign-password").fill(USERS["dr.alice"][2])
    page.click("#sign-btn")
    _toast(page, "have no decision")
    assert _report(server, rid).status == "DRAFT"
    page.click("#f-accept-rest")
    _wait_value(page, "save-msg", r"finding\(s\) accepted as drafted")
    page.click("#save-btn")
    _wait_value(page, "save-msg", r"Saved \(version 3\)")
    assert "[accepted]" in _report(server, rid).text
    # the marked sentence: refused until the signer confirms the text as written
    _field(page, "sign-password").fill(USERS["dr.alice"][2])
    page.click("#sign-btn")
    _toast(page, "tick 'Sign the text as written'")
    assert _report(server, rid).status == "DRAFT"
    page.locator("#sign-confirm input").check()
    # a wrong password, then the right one
    _field(page, "sign-password").fill("not-the-password")
    page.click("#sign-btn")
    _toast(page, "password is wrong")
    assert _report(server, rid).status == "DRAFT"
    _field(page, "sign-password").fill(USERS["dr.alice"][2])
    page.click("#sign-btn")
    sig = _wait_value(page, "signature", "Electronically signed by Dr Alice Able")
    assert re.search(r"Time \(UTC\): \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", sig)
    assert "Meaning: reviewed and approved" in sig
    assert not page.locator("#sign-confirm").is_visible()
    # read-only afterwards, with an amend action
    assert _field(page, "sec-impression").is_disabled()
    assert not page.locator("#sign-btn").is_visible()
    assert page.locator("#amend-btn").is_visible()
    _shot(page, "signed-report.png")
    assert _report(server, rid).status == "SIGNED"
    out = server.export_dir / f"report-{rid}"
    assert (out / "report.sr.dcm").stat().st_size > 1000
    fhir = json.loads((out / "report.fhir.json").read_text(encoding="utf-8"))
    assert fhir["status"] == "final"
    # the audit chain verifies, with events for the view, the edit and the signature
    with unit_of_work(server.session()) as s:
        assert audit.verify(s).ok
        kinds = {e.event_type for e in s.scalars(select(AuditEvent).where(
            AuditEvent.object_type == "report", AuditEvent.object_id == str(rid),
            AuditEvent.outcome == 0))}
    assert {"PHI_READ", "REPORT_EDIT", "REPORT_SUBMIT", "REPORT_SIGN", "EXPORT"} <= kinds
    assert not w.dialogs
    ctx.close()
    # the auditor sees the same in the audit view
    ctx, page, w = _page(browser, server)
    _login(page, "aud.ann")
    page.wait_for_selector("#audit-target", state="visible", timeout=T)
    _field(page, "audit-target").fill(seeded.study_uids["truth"])
    page.click("#audit-btn")
    _wait_value(page, "audit-verify", "^OK: audit chain intact")
    page.locator("#audit-table", has_text="REPORT_SIGN").wait_for(timeout=T)
    table = page.locator("#audit-table").inner_text()
    assert "PHI_READ" in table and "REPORT_EDIT" in table
    ctx.close()


def test_reject_needs_a_reason(browser: Any, server: Server, seeded: Seeded) -> None:
    rid = seeded.reports["model0"]
    ctx, page, _ = _page(browser, server)
    _login(page, "dr.bob")
    _open(page, rid)
    page.click("#reject-btn")
    _toast(page, "a rejection needs a reason")
    assert _report(server, rid).status == "DRAFT"
    _field(page, "reject-reason").fill("Motion artefact; draft unusable.")
    page.click("#reject-btn")
    _wait_value(page, "signature", "Rejected. Reason: Motion artefact; draft unusable.")
    rep = _report(server, rid)
    assert rep.status == "REJECTED" and rep.rejection_reason == "Motion artefact; draft unusable."
    assert not page.locator("#reject-btn").is_visible()
    ctx.close()


def test_two_clinicians_conflict_loses_nothing(browser: Any, server: Server,
                                               seeded: Seeded) -> None:
    rid = seeded.reports["model1"]
    ca, pa, _ = _page(browser, server)
    cb, pb, _ = _page(browser, server)
    _login(pa, "dr.alice")
    _login(pb, "dr.bob")
    _open(pa, rid)
    _open(pb, rid)
    _field(pa, "sec-impression").fill("Alice: no acute abnormality.")
    pa.click("#save-btn")
    _wait_value(pa, "save-msg", "Saved")
    _field(pb, "sec-impression").fill("Bob: small nodule, follow up.")
    pb.click("#save-btn")
    _wait_value(pb, "save-msg", "Dr Alice Able saved this report first")
    conflict = _wait_value(pb, "conflict", "Alice: no acute abnormality.")
    assert "Bob: small nodule" in conflict  # the diff against Bob's edit
    assert _value(pb, "sec-impression") == "Bob: small nodule, follow up."  # kept
    text = _report(server, rid).text
    assert "Alice: no acute abnormality." in text and "Bob" not in text  # not overwritten
    # Bob reloads Alice's version and applies his change again
    pb.click("#reload-btn")
    _wait_value(pb, "sec-impression", "^Alice: no acute abnormality.$")
    _field(pb, "sec-impression").fill("Alice: no acute abnormality. Bob: follow up.")
    pb.click("#save-btn")
    _wait_value(pb, "save-msg", "Saved")
    assert _report(server, rid).text.count("Alice: no acute abnormality. Bob: follow up.") == 1
    ca.close()
    cb.close()


def test_wrong_role_and_direct_api_calls_refused(browser: Any, server: Server,
                                                 seeded: Seeded) -> None:
    ctx, page, _ = _page(browser, server)
    _login(page, "dr.alice")
    page.get_by_role("tab", name="Worklist").first.wait_for(timeout=T)
    assert not page.locator("#tab-audit").is_visible()
    tabs = page.get_by_role("tab", name="Audit")
    assert all(not tabs.nth(i).is_visible() for i in range(tabs.count()))
    ctx.close()
    deps = _deps(server)
    by_name = {d.get("api_name"): d["id"] for d in deps}
    # no session: every endpoint is refused (the login endpoint refuses the empty login)
    for d in deps:
        n = len(d["inputs"])
        res = _call(server, d["id"], [None] * n, uuid.uuid4().hex)
        if d.get("api_name") in ("tick", "logout"):
            # they only show the login panel again; nothing from the database
            assert res.get("success") is True and res["output"]["data"][0] is None
            continue
        assert res.get("success") is False, (d.get("api_name"), res)
    # the slider step skips the queue (POST /run/predict): refused without a session too
    r = httpx.post(server.url + "/gradio_api/run/predict", timeout=10,
                   json={"data": [None, seeded.reports["truth"], 1, 1500, -600, False],
                         "fn_index": by_name["render"], "session_hash": uuid.uuid4().hex})
    assert r.status_code != 200 or "not logged in" in r.text, r.text[:300]
    # a clinician's session (logged in through the API) cannot use the audit view
    sh = uuid.uuid4().hex
    ok = _call(server, by_name["login"], ["dr.alice", USERS["dr.alice"][2]], sh)
    assert ok["success"] is True
    assert not any(isinstance(v, str) and len(v) > 30 and v.isascii() and " " not in v and
                   v.replace("-", "").replace("_", "").isalnum()
                   for v in ok["output"]["data"]), "the session token must stay server-side"
    res = _call(server, by_name["audit"], [None, seeded.study_uids["truth"]], sh)
    assert res["success"] is False and "may not view the audit trail" in \
        json.dumps(res["output"])
    assert _call(server, by_name["worklist"], [None, "all", ""], sh)["success"] is True
    # an auditor's session cannot read studies or sign
    sh2 = uuid.uuid4().hex
    assert _call(server, by_name["login"], ["aud.ann", USERS["aud.ann"][2]], sh2)["success"]
    for name, data in (("worklist", [None, "all", ""]),
                       ("open_study", [None, seeded.reports["xss"], 1500, -600, False]),
                       ("render", [None, None, 1, 1500, -600, False])):
        res = _call(server, by_name[name], data, sh2)
        if name == "render":
            # rid comes from server-side state (none opened): nothing rendered
            assert res["success"] is False or res["output"]["data"] == [None]
        else:
            assert res["success"] is False, name
    with unit_of_work(server.session()) as s:
        details = [e.detail for e in s.scalars(select(AuditEvent).where(
            AuditEvent.event_type == "REFUSAL"))]
    assert any("may not view the audit trail" in d for d in details)


def test_xss_shown_as_text(browser: Any, server: Server, seeded: Seeded) -> None:
    rid = seeded.reports["xss"]
    ctx, page, w = _page(browser, server)
    _login(page, "dr.bob")
    _open(page, rid)
    emr = page.locator("#emr")
    emr.filter(has_text="<script>alert('emr')</script>").wait_for(timeout=T)
    assert "<img src=x onerror=" in emr.inner_text()
    payload = "<img src=x onerror=alert(3)><script>alert(4)</script>"
    page.locator("#findings .virtual-row").first.locator("[role=gridcell]").first.click()
    _wait_value(page, "f-index", "^0$")
    page.locator("#f-decision label", has_text="edited").click()
    _field(page, "f-text").fill(payload)
    page.click("#f-apply")
    page.locator("#findings", has_text=payload).wait_for(timeout=T)
    page.click("#save-btn")
    _wait_value(page, "save-msg", "Saved")
    assert payload in _report(server, rid).text
    page.locator("#diff", has_text=payload).wait_for(timeout=T)
    # an error message with markup is escaped too
    page.locator("#tab-audit").count()
    time.sleep(1.0)
    assert page.locator("img[src='x']").count() == 0
    assert page.locator("#emr script, #findings script, #diff script").count() == 0
    assert not w.dialogs, w.dialogs
    assert not [e for e in w.errors if "alert" in e or "onerror" in e], w.errors
    ctx.close()


def test_file_access_refused(server: Server, seeded: Seeded) -> None:
    db_file = server.db_url.removeprefix("sqlite:///")
    case_file = next(p for p in (seeded.cases["xss"] / "dicom").rglob("*") if p.is_file())
    for path in ("/etc/passwd", "../../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd",
                 "%2Fetc%2Fpasswd", db_file, str(seeded.cases["xss"] / "emr.txt"),
                 str(case_file), str(server.export_dir)):
        r = httpx.get(f"{server.url}/gradio_api/file={path}", timeout=10)
        assert r.status_code in (400, 403, 404), (path, r.status_code)
        assert b"root:" not in r.content and b"SQLite" not in r.content
    # the upload endpoint is capped
    big = b"0" * (2 << 20)
    r = httpx.post(f"{server.url}/gradio_api/upload", files={"files": ("a.bin", big)},
                   timeout=30)
    assert r.status_code in (400, 413), r.status_code


def test_inactivity_logoff(browser: Any, seeded: Seeded,
                           tmp_path_factory: pytest.TempPathFactory) -> None:
    srv = _start(seeded, tmp_path_factory.mktemp("ui-idle"), MEDASSIST_UI_SESSION_IDLE_S="3")
    try:
        ctx, page, _ = _page(browser, srv)
        _login(page, "dr.alice")
        # no activity: the page returns to the login panel by itself
        page.wait_for_selector("#login-panel", state="visible", timeout=T)
        assert not page.locator("#main-panel").is_visible()
        _wait_value(page, "login-msg", "logged off after inactivity")
        ctx.close()
    finally:
        _stop(srv)
