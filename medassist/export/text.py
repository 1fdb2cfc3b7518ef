"""Plain-text and PDF renderings for people: DRAFT watermark until signed, and the signature
manifestation (signer's name, UTC time, meaning; 21 CFR 11.50) once signed."""

from __future__ import annotations

from pathlib import Path

from fpdf import FPDF

from medassist.reports import ReportView

DRAFT_BANNER = "*** DRAFT - AI-generated, not reviewed or signed; not for clinical use ***"


def _manifestation(view: ReportView) -> list[str]:
    sig = view.signature
    if view.status != "SIGNED" or sig is None:
        return []
    return ["Electronically signed", f"  Signer:  {sig.signer_name}",
            f"  Time:    {sig.signed_at} (UTC)", f"  Meaning: {sig.meaning}",
            f"  Content SHA-256: {sig.content_sha256}"]


def render_text(view: ReportView) -> str:
    signed = view.status == "SIGNED" and view.signature is not None
    lines = []
    if not signed:
        lines += [DRAFT_BANNER, f"Status: {view.status}", ""]
    lines += [f"CT REPORT {view.report_id}   Study {view.study_uid}",
              f"Patient (pseudonymous): {view.patient_pseudo_id}"]
    if view.amends_report_id is not None:
        lines.append(f"Amends report {view.amends_report_id}")
    lines += ["", view.text.rstrip(), ""]
    if view.rejection_reason:
        lines += [f"REJECTED: {view.rejection_reason}", ""]
    if signed:
        lines += _manifestation(view)
    else:
        lines += [view.draft.disclaimer, DRAFT_BANNER]
    d = view.draft
    lines += ["", f"Model: {d.model.name} {d.model.version}"]
    return "\n".join(lines) + "\n"


class _ReportPDF(FPDF):
    def __init__(self, watermark: bool) -> None:
        super().__init__()
        self.watermark = watermark

    def header(self) -> None:
        if not self.watermark:
            return
        with self.local_context(text_color=(215, 215, 215)):
            self.set_font("Helvetica", "B", 110)
            with self.rotation(45, x=self.w / 2, y=self.h / 2):
                self.text(self.w / 2 - 75, self.h / 2 + 15, "DRAFT")
        self.set_font("Helvetica", "B", 9)
        self.set_text_color(180, 0, 0)
        self.cell(0, 6, DRAFT_BANNER, align="C", new_x="LMARGIN", new_y="NEXT")
        self.set_text_color(0, 0, 0)


def _latin1(text: str) -> str:
    return text.encode("latin-1", "replace").decode("latin-1")


def render_pdf(view: ReportView, out: str | Path, *, compress: bool = True) -> Path:
    signed = view.status == "SIGNED" and view.signature is not None
    pdf = _ReportPDF(watermark=not signed)
    pdf.set_compression(compress)
    pdf.set_title(f"CT report {view.report_id}" + ("" if signed else " (DRAFT)"))
    pdf.set_creator("medassist")
    pdf.add_page()
    pdf.set_font("Helvetica", "", 10)
    for line in render_text(view).splitlines():
        pdf.multi_cell(0, 5, _latin1(line) or " ", new_x="LMARGIN", new_y="NEXT")
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(p))
    return p
