"""The Gradio page of the review app: ``build_app(handlers) -> gr.Blocks`` and ``serve``.

Only wiring lives here: every callback resolves the session and checks the role inside
:mod:`ui.handlers`. Dynamic text (model output, EMR, user input, error messages) goes into
components that render text (Textbox, HighlightedText, Dataframe with ``str`` cells, Label)
and error messages are HTML-escaped, because Gradio renders ``gr.Error`` messages as HTML.
Nothing is built or loaded at import time.
"""

import html
import logging
import os
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from medassist.errors import MedAssistError
from ui.config import UIConfig
from ui.handlers import (
    STATUSES,
    ClientInfo,
    Handlers,
    Services,
    StudyView,
    diff_segments,
    findings_narrative,
)
from ui.imaging import PRESETS
from ui.report_text import (
    DECISIONS,
    SIDES,
    FindingReview,
    compose,
    pending_note,
    prose_note,
)

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger("medassist.ui")

F = TypeVar("F", bound=Callable[..., Any])

WORKLIST_HEADERS = ["report", "pseudonymous ID", "accession", "status", "priority", "age",
                    "AI findings", "amends"]
FINDING_HEADERS = ["#", "finding", "AI says", "probability", "marks", "decision", "side",
                   "size mm", "text", "slices"]
AUDIT_HEADERS = ["seq", "time (UTC)", "event", "action", "outcome", "user", "role", "object",
                 "detail"]
BATCH_HEADERS = ["study / job", "state", "attempts", "reason", "updated (UTC)"]
SEND_HEADERS = ["result", "state", "attempts", "last error", "next attempt (UTC)"]
SIGN_MEANING = "reviewed and approved"
#: every event: hidden from the API page and the client libraries (still role-checked inside,
#: since the page itself calls them), and no progress overlay (errors come as toasts)
EV: Any = {"api_visibility": "private", "show_progress": "hidden"}


def _guard(fn: F) -> F:
    """Turn the typed errors of a handler into an escaped Gradio error toast."""
    import gradio as gr

    @wraps(fn)
    def inner(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MedAssistError as exc:
            raise gr.Error(html.escape(str(exc)), print_exception=False) from None
        except (ValueError, TypeError) as exc:
            log.warning("bad request to %s: %s", fn.__name__, type(exc).__name__)
            raise gr.Error("invalid request", print_exception=False) from None
    return cast(F, inner)


def _client(request: Any) -> ClientInfo | None:
    if request is None:
        return None
    peer = getattr(getattr(request, "client", None), "host", None)
    headers = {k.lower(): v for k, v in dict(getattr(request, "headers", {}) or {}).items()}
    return ClientInfo(peer=peer, headers=headers)


def _size_cell(r: FindingReview) -> str:
    """The size column: mm, measured on the CT, the model's estimate, or the reviewer's; or a
    measured cardiothoracic ratio."""
    if r.size_mm is not None:
        how = ("edited" if r.size_edited else "measured on CT" if r.size_measured
               else "estimate")
        if how == "measured on CT" and r.size_axes_mm is not None:
            # as a reader states it: the axial long x short axis, and the craniocaudal extent
            a = r.size_axes_mm
            how += f"; axial {a[0]:g} x {a[1]:g}, craniocaudal {a[2]:g}"
        return f"{r.size_mm:g} ({how})"
    if r.ratio is not None:
        return f"CTR {r.ratio:.2f} (measured on CT)"
    return "-"


#: a draft flag (docs/model.md, the draft's JSON) as the findings table's marks state it; a
#: flag not listed reads as itself
FLAG_TEXT: dict[str, str] = {
    "no_emr": "no EMR note",
    "text_contradicts_head": "text contradicts the AI call",
    "text_omitted_finding": "text left it out (sentence added)",
    "text_history_unstated": "text rests on history the note does not state",
    "unreliable_detector": "unreliable detector",
    "not_assessed": "not assessed by the model",
    "small_not_assessed": "small ones not assessed",
    "context_from_note": "impression context from the note's history",
    "found_on_ct": "found on the CT",
    "air_bronchograms": "air bronchograms: read as the consolidation",
    "text_size_restated": "text size replaced by the measured one",
    "text_size_unmeasured": "text size not measured on the CT",
    "text_size_estimated": "text size is the estimate",
    "text_ratio_restated": "text ratio replaced by the measured one",
    "text_ratio_unmeasured": "text ratio not measured on the CT",
    "side_uncertain": "side uncertain on the CT",
    "reviewer_side": "side set by the reviewer",
    "reviewer_size": "size set by the reviewer",
}


def finding_rows(reviews: list[FindingReview]) -> list[list[Any]]:
    rows = []
    for r in reviews:
        marks = []
        if r.low_confidence:
            marks.append("low confidence")
        marks += [FLAG_TEXT.get(f, f) for f in r.consistency_flags]
        sl = f"{r.slices[0]}-{r.slices[-1]}" if r.slices else "-"
        rows.append([r.index, r.label.replace("_", " "), r.status,
                     f"{r.probability:.2f}", "; ".join(marks) or "-", r.decision,
                     f"{r.side} (uncertain on CT)" if r.side_uncertain else r.side or "-",
                     _size_cell(r),
                     r.text, sl])
    return rows


def signature_text(name: str, when: str, meaning: str, sha: str) -> str:
    return (f"Electronically signed by {name}\nTime (UTC): {when}\nMeaning: {meaning}\n"
            f"Content SHA-256: {sha}")


def build_app(services: Services | Handlers) -> "gr.Blocks":
    """The review app on ``services`` (nothing is served until ``launch``)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    h = services if isinstance(services, Handlers) else Handlers(services)
    windows = list(PRESETS)

    with gr.Blocks(title="medassist review", analytics_enabled=False) as app:
        token = gr.State(None)
        rid = gr.State(None)
        version = gr.State(None)
        reviews = gr.State([])
        ai_text = gr.State("")
        gr.Markdown("## medassist clinician review\nAI drafts are not diagnoses: a report is "
                    "final only once a clinician signs it.")

        with gr.Column(visible=True, elem_id="login-panel") as login_panel:
            user_in = gr.Textbox(label="User name", elem_id="login-user", max_lines=1)
            pw_in = gr.Textbox(label="Password", type="password", elem_id="login-password",
                               max_lines=1)
            login_btn = gr.Button("Log in", variant="primary", elem_id="login-btn")
            login_msg = gr.Textbox(label="", interactive=False, elem_id="login-msg",
                                   show_label=False)

        with gr.Column(visible=False, elem_id="main-panel") as main_panel:
            with gr.Row():
                who = gr.Textbox(interactive=False, show_label=False, elem_id="who", scale=4)
                logout_btn = gr.Button("Log out", elem_id="logout-btn", scale=1)
            with gr.Tabs(elem_id="tabs") as tabs:
                with gr.Tab("Worklist", id="worklist", elem_id="tab-worklist"):
                    with gr.Row():
                        status_in = gr.Dropdown(list(STATUSES), value="all", label="Status",
                                                elem_id="wl-status")
                        search_in = gr.Textbox(label="Search (pseudonymous ID or accession)",
                                               elem_id="wl-search", max_lines=1)
                        refresh_btn = gr.Button("Refresh", elem_id="wl-refresh")
                    wl_table = gr.Dataframe(headers=WORKLIST_HEADERS, interactive=False,
                                            elem_id="worklist", datatype="str", wrap=True)
                    with gr.Row():
                        open_in = gr.Number(label="Report ID", precision=0, elem_id="open-id")
                        open_btn = gr.Button("Open study", elem_id="open-btn")
                with gr.Tab("Study", id="study", elem_id="tab-study"):
                    header = gr.Textbox(interactive=False, show_label=False,
                                        elem_id="study-header")
                    with gr.Row():
                        with gr.Column(scale=3):
                            image = gr.Image(type="pil", format="png", interactive=False,
                                             label="CT", elem_id="ct-image", height=420,
                                             image_mode=None)
                            slider = gr.Slider(0, 1, value=0, step=1, label="Slice",
                                               elem_id="slice")
                            with gr.Row():
                                preset_in = gr.Radio(windows, value="lung", label="Window",
                                                     elem_id="preset")
                                ww_in = gr.Number(PRESETS["lung"][0], label="Width (HU)",
                                                  elem_id="ww")
                                wl_in = gr.Number(PRESETS["lung"][1], label="Level (HU)",
                                                  elem_id="wl")
                                overlay_in = gr.Checkbox(False, label="Evidence overlay",
                                                         elem_id="overlay")
                        with gr.Column(scale=2):
                            weights = gr.Label(label="Modality weights", elem_id="weights",
                                               num_top_classes=2)
                            emr_msg = gr.Textbox(interactive=False, show_label=False,
                                                 elem_id="emr-msg")
                            emr = gr.HighlightedText(label="EMR note (spans the model relied "
                                                     "on are highlighted)", elem_id="emr",
                                                     show_legend=True)
                    f_table = gr.Dataframe(headers=FINDING_HEADERS, interactive=False,
                                           elem_id="findings", datatype="str", wrap=True,
                                           label="Findings (click a row: jump to its slices)")
                    with gr.Row(elem_id="finding-editor"):
                        f_index = gr.Number(label="Finding #", precision=0, elem_id="f-index")
                        f_decision = gr.Radio(list(DECISIONS), value="pending",
                                              label="Decision", elem_id="f-decision")
                        f_side = gr.Dropdown(list(SIDES), value="", label="Side",
                                             elem_id="f-side")
                        f_size = gr.Number(None, label="Size (mm)", elem_id="f-size")
                        f_text = gr.Textbox(label="Finding text", elem_id="f-text", max_lines=3)
                        f_apply = gr.Button("Apply to finding", elem_id="f-apply")
                        f_accept = gr.Button("Accept the undecided findings",
                                             elem_id="f-accept-rest")
                    sec_ind = gr.Textbox(label="Indication", elem_id="sec-indication", lines=2)
                    sec_tech = gr.Textbox(label="Technique", elem_id="sec-technique", lines=2)
                    sec_find = gr.Textbox(label="Findings (narrative)", elem_id="sec-findings",
                                          lines=4)
                    sec_imp = gr.Textbox(label="Impression", elem_id="sec-impression", lines=2)
                    with gr.Row():
                        save_btn = gr.Button("Save draft", variant="primary",
                                             elem_id="save-btn")
                        reload_btn = gr.Button("Reload latest version", elem_id="reload-btn")
                    save_msg = gr.Textbox(interactive=False, show_label=False,
                                          elem_id="save-msg")
                    conflict_box = gr.Textbox(label="Conflict: the version saved by someone "
                                              "else (not overwritten)", interactive=False,
                                              visible=False, elem_id="conflict", lines=8)
                    diff = gr.HighlightedText(label="AI draft vs current", elem_id="diff",
                                              color_map={"+": "green", "-": "red"})
                    with gr.Row(elem_id="sign-row") as sign_row:
                        sign_pw = gr.Textbox(label="Re-enter your password to sign",
                                             type="password", elem_id="sign-password",
                                             max_lines=1)
                        sign_confirm = gr.Checkbox(
                            label="Sign the text as written (I have checked the sentences "
                                  "flagged unverified or against my decisions)",
                            value=False, elem_id="sign-confirm")
                        sign_btn = gr.Button(f"Sign ({SIGN_MEANING})", variant="primary",
                                             elem_id="sign-btn")
                    with gr.Row(elem_id="reject-row") as reject_row:
                        reject_in = gr.Textbox(label="Reason for rejecting the draft",
                                               elem_id="reject-reason", max_lines=3)
                        reject_btn = gr.Button("Reject", variant="stop", elem_id="reject-btn")
                    signature = gr.Textbox(label="Signature", interactive=False,
                                           elem_id="signature", lines=4)
                    amend_btn = gr.Button("Amend signed report", elem_id="amend-btn",
                                          visible=False)
                with gr.Tab("Batch", id="batch", elem_id="tab-batch"):
                    batch_btn = gr.Button("Refresh batch status", elem_id="batch-btn")
                    batch_counts = gr.Textbox(interactive=False, label="Progress",
                                              elem_id="batch-counts")
                    batch_table = gr.Dataframe(headers=BATCH_HEADERS, interactive=False,
                                               elem_id="batch-failures", datatype="str",
                                               wrap=True, label="Failures")
                    sends_table = gr.Dataframe(headers=SEND_HEADERS, interactive=False,
                                               elem_id="batch-sends", datatype="str",
                                               wrap=True, label="Results not yet in the PACS")
                with gr.Tab("Audit", id="audit", elem_id="tab-audit",
                            visible=False) as audit_tab:
                    with gr.Row():
                        audit_in = gr.Textbox(label="StudyInstanceUID or report ID",
                                              elem_id="audit-target", max_lines=1)
                        audit_btn = gr.Button("Show events and verify", elem_id="audit-btn")
                    audit_verify = gr.Textbox(interactive=False, label="audit verify",
                                              elem_id="audit-verify")
                    audit_table = gr.Dataframe(headers=AUDIT_HEADERS, interactive=False,
                                               elem_id="audit-table", datatype="str",
                                               wrap=True)
        # checks (without counting as activity) whether the session was logged off
        timer = gr.Timer(max(1.0, min(15.0, h.s.config.session_idle_s / 3)))

        # ---- callbacks -------------------------------------------------------------------

        @_guard
        def do_login(username: str, password: str, request: gr.Request) -> Any:
            r = h.login(username, password, _client(request))
            auditor = r.role in ("auditor", "admin")
            rows = ([list(_wl_row(x)) for x in h.worklist(r.token)]
                    if r.role == "clinician" else [])
            return (r.token, gr.update(visible=False), gr.update(visible=True),
                    f"{r.display_name} ({r.role})", "", rows, gr.Tab(visible=auditor),
                    gr.Tabs(selected="audit" if auditor else "worklist"), "")

        login_btn.click(do_login, [user_in, pw_in],
                        [token, login_panel, main_panel, who, pw_in, wl_table, audit_tab, tabs,
                         login_msg], api_name="login", **EV)

        def _logged_out() -> tuple[Any, ...]:
            return (None, gr.update(visible=True), gr.update(visible=False))

        def do_logout(tok: str | None) -> Any:
            h.logout(tok)
            return (*_logged_out(), "Logged out.")

        logout_btn.click(do_logout, [token], [token, login_panel, main_panel, login_msg],
                         api_name="logout", **EV)

        def tick(tok: str | None) -> Any:
            if tok is None or h.alive(tok):
                return (tok, gr.update(), gr.update(), gr.update())
            return (*_logged_out(), "You were logged off after inactivity; log in again.")

        timer.tick(tick, [token], [token, login_panel, main_panel, login_msg],
                   api_name="tick", **EV)

        def _wl_row(x: Any) -> list[Any]:
            return [x.report_id, x.pseudo_id, x.accession, x.status, x.priority, x.age,
                    x.findings, "" if x.amends is None else x.amends]

        @_guard
        def do_worklist(tok: str | None, status: str, query: str) -> Any:
            return [_wl_row(x) for x in h.worklist(tok, status, query)]

        refresh_btn.click(do_worklist, [token, status_in, search_in], [wl_table],
                          api_name="worklist", **EV)
        for ev in (status_in.change, search_in.submit):
            ev(do_worklist, [token, status_in, search_in], [wl_table], **EV)

        study_outputs = [rid, version, reviews, ai_text, header, slider, image, weights, emr_msg,
                         emr, f_table, sec_ind, sec_tech, sec_find, sec_imp, diff, signature,
                         sign_row, reject_row, amend_btn, save_btn, f_apply, f_accept,
                         conflict_box, save_msg, tabs, ww_in, wl_in, overlay_in]

        def _study(v: StudyView, tok: str | None, ww: float, wl: float, ov: bool,
                   msg: str = "") -> tuple[Any, ...]:
            ro = v.read_only
            sig = ""
            if v.signature is not None:
                s = v.signature
                sig = signature_text(s.signer_name, s.signed_at, s.meaning, s.content_sha256)
            elif v.rejection_reason:
                sig = f"Rejected. Reason: {v.rejection_reason}"
            amends = f", amends report {v.amends_report_id}" if v.amends_report_id else ""
            head = (f"Report {v.report_id} ({v.status}, version {v.version}{amends}) | "
                    f"patient {v.pseudo_id} | study {v.study_uid} | "
                    f"{v.coverage + ' | ' if v.coverage else ''}{v.disclaimer}")
            img = h.render(tok, v.report_id, v.start_slice, ww, wl, ov)
            ed = gr.update(interactive=not ro)
            if not ro and not msg:
                msg = pending_note(v.reviews, compose(v.sections, v.reviews))
            return (v.report_id, v.version, v.reviews, v.ai_text, head,
                    gr.update(minimum=0, maximum=max(1, v.n_slices - 1), value=v.start_slice),
                    img, v.weights, v.emr.message, v.emr.segments, finding_rows(v.reviews),
                    gr.update(value=v.sections["indication"], interactive=not ro),
                    gr.update(value=v.sections["technique"], interactive=not ro),
                    gr.update(value=findings_narrative(v.sections), interactive=not ro),
                    gr.update(value=v.sections["impression"], interactive=not ro),
                    diff_segments(v.ai_text, v.text), sig, gr.update(visible=not ro),
                    gr.update(visible=not ro), gr.update(visible=v.status == "SIGNED"),
                    ed, ed, ed, gr.update(visible=False, value=""), msg,
                    gr.Tabs(selected="study"), ww, wl, ov)

        @_guard
        def do_open(tok: str | None, report_id: float | None, ww: float, wl: float,
                    ov: bool) -> Any:
            if report_id is None:
                raise MedAssistError("enter or click a report ID first")
            return _study(h.open_study(tok, int(report_id)), tok, ww, wl, ov)

        open_btn.click(do_open, [token, open_in, ww_in, wl_in, overlay_in], study_outputs,
                       api_name="open_study", **EV)

        @_guard
        def do_pick(tok: str | None, ww: float, wl: float, ov: bool, evt: gr.SelectData,
                    ) -> Any:
            row = evt.row_value if evt.row_value else None
            if not row:
                raise MedAssistError("click a worklist row")
            return _study(h.open_study(tok, int(row[0])), tok, ww, wl, ov)

        wl_table.select(do_pick, [token, ww_in, wl_in, overlay_in], study_outputs,
                        **EV)

        @_guard
        def do_render(tok: str | None, report_id: int | None, k: float, ww: float, wl: float,
                      ov: bool) -> Any:
            if report_id is None:
                h.whoami(tok)  # no study open: still refuse a call without a session
                return None
            return h.render(tok, report_id, int(k), ww, wl, ov)

        render_in = [token, rid, slider, ww_in, wl_in, overlay_in]
        # the slider step skips the queue (one POST, no event stream): the fastest round trip
        slider.change(do_render, render_in, [image], api_name="render", **EV,
                      trigger_mode="always_last", queue=False)
        overlay_in.change(do_render, render_in, [image], **EV)
        for num in (ww_in, wl_in):
            num.submit(do_render, render_in, [image], **EV)

        @_guard
        def do_preset(tok: str | None, report_id: int | None, k: float, name: str,
                      ov: bool) -> Any:
            ww, wl = h.preset(name)
            img = h.render(tok, report_id, int(k), ww, wl, ov) if report_id else None
            return ww, wl, img

        preset_in.input(do_preset, [token, rid, slider, preset_in, overlay_in],
                        [ww_in, wl_in, image], **EV)

        @_guard
        def do_pick_finding(tok: str | None, revs: list[FindingReview], k: float,
                            evt: gr.SelectData) -> Any:
            row = evt.row_value
            if not row:
                raise MedAssistError("click a finding row")
            i = int(row[0])
            s = h.finding_slice(tok, revs, i)
            r = revs[i]
            return (i, r.decision, r.side, r.size_mm, r.text,
                    gr.update(value=s) if s is not None else gr.update(value=k),
                    gr.update(value=True) if s is not None else gr.update())

        f_table.select(do_pick_finding, [token, reviews, slider],
                       [f_index, f_decision, f_side, f_size, f_text, slider, overlay_in],
                       **EV)

        @_guard
        def do_apply(tok: str | None, revs: list[FindingReview], i: float | None, dec: str,
                     side: str, size: float | None, text: str, ai: str, ind: str, tech: str,
                     find: str, imp: str) -> Any:
            if i is None:
                raise MedAssistError("pick a finding in the table first")
            new = h.apply_finding(tok, revs, int(i), dec, side, size, text)
            cur = compose({"indication": ind, "technique": tech, "findings": find,
                           "impression": imp}, new)
            return new, finding_rows(new), diff_segments(ai, cur), "Finding updated (not "\
                f"saved yet: press Save draft).{prose_note(cur)}"

        f_apply.click(do_apply, [token, reviews, f_index, f_decision, f_side, f_size, f_text,
                                 ai_text, sec_ind, sec_tech, sec_find, sec_imp],
                      [reviews, f_table, diff, save_msg], api_name="apply_finding",
                      **EV)

        @_guard
        def do_accept_rest(tok: str | None, revs: list[FindingReview], ai: str, ind: str,
                           tech: str, find: str, imp: str) -> Any:
            new = h.accept_undecided(tok, revs)
            n = sum(a.decision != b.decision for a, b in zip(revs, new, strict=True))
            cur = compose({"indication": ind, "technique": tech, "findings": find,
                           "impression": imp}, new)
            return new, finding_rows(new), diff_segments(ai, cur), \
                f"{n} finding(s) accepted as drafted (not saved yet: press Save draft)."

        f_accept.click(do_accept_rest, [token, reviews, ai_text, sec_ind, sec_tech, sec_find,
                                        sec_imp], [reviews, f_table, diff, save_msg],
                       api_name="accept_undecided", **EV)

        @_guard
        def do_save(tok: str | None, report_id: int | None, ver: int | None,
                    revs: list[FindingReview], ai: str, ind: str, tech: str, find: str,
                    imp: str) -> Any:
            if report_id is None or ver is None:
                raise MedAssistError("open a study first")
            r = h.save(tok, report_id, ver, {"indication": ind, "technique": tech,
                                             "findings": find, "impression": imp}, revs)
            if r.conflict is not None:
                c = r.conflict
                return (ver, r.message, gr.update(visible=True,
                                                  value=f"{c.their_text}\n--- diff (your "
                                                        f"edit vs theirs) ---\n{c.their_diff}"),
                        diff_segments(ai, r.text))
            return r.version, r.message, gr.update(visible=False, value=""), \
                diff_segments(ai, r.text)

        save_btn.click(do_save, [token, rid, version, reviews, ai_text, sec_ind, sec_tech,
                                 sec_find, sec_imp],
                       [version, save_msg, conflict_box, diff], api_name="save",
                       **EV)

        @_guard
        def do_reload(tok: str | None, report_id: int | None, ww: float, wl: float,
                      ov: bool) -> Any:
            if report_id is None:
                raise MedAssistError("open a study first")
            return _study(h.open_study(tok, report_id), tok, ww, wl, ov,
                          "Reloaded the latest version.")

        reload_btn.click(do_reload, [token, rid, ww_in, wl_in, overlay_in], study_outputs,
                         **EV)

        @_guard
        def do_sign(tok: str | None, report_id: int | None, ver: int | None, pw: str,
                    confirm: bool, ww: float, wl: float, ov: bool) -> Any:
            if report_id is None or ver is None:
                raise MedAssistError("open a study first")
            r = h.sign(tok, report_id, ver, pw, confirm_text=bool(confirm))
            msg = ("Signed; exported: " + ", ".join(f"{k} {Path(v).name}" for k, v in
                                                    sorted(r.exports.items()))
                   + (f" ({r.export_note})" if r.export_note else "")
                   if not r.export_error else
                   f"Signed, but the export failed ({r.export_error}); export it again with "
                   "`medassist export`.")
            out = list(_study(h.open_study(tok, report_id), tok, ww, wl, ov, msg))
            return (*out, "", False)

        sign_btn.click(do_sign, [token, rid, version, sign_pw, sign_confirm, ww_in, wl_in,
                                 overlay_in],
                       [*study_outputs, sign_pw, sign_confirm], api_name="sign", **EV)

        @_guard
        def do_reject(tok: str | None, report_id: int | None, ver: int | None, reason: str,
                      ww: float, wl: float, ov: bool) -> Any:
            if report_id is None or ver is None:
                raise MedAssistError("open a study first")
            h.reject(tok, report_id, ver, reason)
            return _study(h.open_study(tok, report_id), tok, ww, wl, ov, "Rejected.")

        reject_btn.click(do_reject, [token, rid, version, reject_in, ww_in, wl_in, overlay_in],
                         study_outputs, api_name="reject", **EV)

        @_guard
        def do_amend(tok: str | None, report_id: int | None, ww: float, wl: float,
                     ov: bool) -> Any:
            if report_id is None:
                raise MedAssistError("open a study first")
            new = h.amend(tok, report_id)
            return _study(h.open_study(tok, new), tok, ww, wl, ov,
                          f"Amendment started: report {new} (the signed report {report_id} "
                          "stays unchanged).")

        amend_btn.click(do_amend, [token, rid, ww_in, wl_in, overlay_in], study_outputs,
                        api_name="amend", **EV)

        @_guard
        def do_batch(tok: str | None) -> Any:
            b = h.batch_status(tok)
            jobs = ", ".join(f"{k}: {v}" for k, v in sorted(b.counts.items())) or "none"
            q = ", ".join(f"{k}: {v}" for k, v in sorted(b.queue.items())) or "empty"
            return f"jobs: {jobs} | ingest queue: {q}", b.failures, b.sends

        batch_btn.click(do_batch, [token], [batch_counts, batch_table, sends_table],
                        api_name="batch", **EV)

        @_guard
        def do_audit(tok: str | None, target: str) -> Any:
            a = h.audit_view(tok, target)
            return ("OK: " if a.verify_ok else "BROKEN: ") + a.verify_message, a.rows

        audit_btn.click(do_audit, [token, audit_in], [audit_verify, audit_table],
                        api_name="audit", **EV)
    return cast("gr.Blocks", app)


def serve(db: str | None = None, host: str = "127.0.0.1", port: int = 7860, *,
          config: UIConfig | None = None, export_dir: str | Path | None = None) -> int:
    """Run the app until interrupted (loopback by default; see docs/deploy.md)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from medassist.storage import make_engine, resolve_db_url, session_factory
    from medassist.storage.migrate import require_current
    from ui.config import load_config
    from ui.handlers import make_services

    cfg = config or load_config()
    url = resolve_db_url(db)
    engine = make_engine(url)
    require_current(engine)
    services = make_services(session_factory(engine), cfg,
                             Path(export_dir) if export_dir else None)
    app = build_app(services)
    app.queue(default_concurrency_limit=cfg.concurrency, api_open=False)
    blocked = [str(services.export_dir)]
    if url.startswith("sqlite:///"):
        dbf = Path(url.removeprefix("sqlite:///")).resolve()
        blocked += [str(dbf), f"{dbf}-wal", f"{dbf}-shm"]
    log.info("serving on http://%s:%d", host, port)
    app.launch(server_name=host, server_port=port, share=False, show_error=False,
               max_file_size=cfg.max_upload_bytes, blocked_paths=blocked, ssr_mode=False,
               pwa=False, mcp_server=False, enable_monitoring=False, quiet=True,
               footer_links=["gradio"], favicon_path=None, run_history=False)
    return 0
