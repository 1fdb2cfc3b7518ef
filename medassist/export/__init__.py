"""Exports of a stored report: DICOM SR (TID 1500), FHIR DiagnosticReport, text and PDF."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy.orm import Session

from medassist.audit import Actor, AuditAction
from medassist.errors import ExportError
from medassist.reports import ReportView, read_report

FORMATS = ("sr", "fhir", "pdf", "txt")


def export_report(session: Session, report_id: int, actor: Actor, fmt: str, out: str | Path,
                  *, sources: Sequence[Dataset | str | Path] = ()) -> Path:
    """Write report ``report_id`` as ``fmt`` to ``out``; the export is audited (Export)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {list(FORMATS)}")
    if fmt == "sr" and not sources:
        raise ExportError("the SR export needs the source CT instances (--dicom DIR)")
    view: ReportView = read_report(session, report_id, actor, action=AuditAction.EXPORT,
                                   detail=f"format={fmt}")
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "txt":
        from medassist.export.text import render_text

        p.write_text(render_text(view), encoding="utf-8")
    elif fmt == "pdf":
        from medassist.export.text import render_pdf

        render_pdf(view, p)
    elif fmt == "fhir":
        from medassist.export.fhir import to_json

        p.write_text(to_json(view), encoding="utf-8")
    else:
        from medassist.export.sr import build_sr, write_sr

        write_sr(build_sr(view, sources), p)
    return p


__all__ = ["FORMATS", "export_report"]
