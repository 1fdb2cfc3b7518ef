"""Results back to the PACS: a signed report's SR (TID 1500) goes to the outbox on sign-off.

* :func:`sign_and_queue` signs (the e-signature of :func:`medassist.reports.sign_report`) and
  queues the SR in the same transaction. Building the SR needs the source CT headers; if they
  cannot be had right now (the PACS is down and the study's files are gone), the signature
  still stands, the failure is audited, and :func:`reconcile` queues the SR later: a signed
  report whose SR is not in the outbox is *pending*, never dropped (:func:`unsent_signed`).
* :func:`reconcile` + :func:`medassist.pacs.outbox.deliver_pending` are what
  ``medassist pacs send`` runs, once or in a loop.

Source headers come from a :class:`SourceResolver`: the study folder recorded in the ingest
queue (batch, listener) first, then the PACS over WADO-RS metadata (``pacs watch`` deletes
its download after drafting).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from medassist.audit import SYSTEM, Actor, AuditAction, ObjectType, Outcome, record
from medassist.errors import MedAssistError, SourcesUnavailableError
from medassist.pacs import outbox
from medassist.pacs.models import IngestItem, OutboxItem
from medassist.reports import get_report, report_view, sign_report
from medassist.storage.engine import unit_of_work
from medassist.storage.models import Report, ReportStatus, Signature

log = logging.getLogger("medassist.pacs")


class SourceResolver(Protocol):
    def __call__(self, session: Session, study_uid: str, series_uid: str) -> list[Dataset]: ...


def local_sources(session: Session, study_uid: str, series_uid: str) -> list[Dataset]:
    """Headers of the series from the study folder, or the zip file (``medassist batch``),
    the ingest queue recorded; a zip's members are read in place."""
    from dicom_io.index import scan
    from dicom_io.uids import validate_uid
    from medassist.errors import ExportError
    from medassist.export.sr import read_source_dataset

    validate_uid(study_uid, what="StudyInstanceUID")
    item = session.scalars(select(IngestItem).where(IngestItem.study_uid == study_uid)
                           ).one_or_none()
    where = Path(item.location) if item is not None and item.location else None
    if where is None or not (where.is_dir() or where.is_file()):
        raise SourcesUnavailableError(f"study {study_uid}: no local folder or zip file "
                                      "recorded")
    series = scan(where).series(series_uid)
    if series is None:
        raise SourcesUnavailableError(f"study {study_uid}: series {series_uid} is not in the "
                                      "recorded folder or zip file any more")
    try:
        return [read_source_dataset(src) for src in sorted({h.source for h in series.instances})]
    except ExportError as exc:
        raise SourcesUnavailableError(f"study {study_uid}: {exc}") from exc


@dataclass
class PacsSources:
    """Headers of the series from the PACS (WADO-RS metadata, no pixel data)."""

    client: Any  # medassist.pacs.dicomweb.PacsClient

    def __call__(self, session: Session, study_uid: str, series_uid: str) -> list[Dataset]:
        from medassist.errors import PacsError

        try:
            found = list(self.client.series_metadata(study_uid, series_uid))
        except PacsError as exc:
            raise SourcesUnavailableError(f"study {study_uid}: {type(exc).__name__}: {exc}"
                                          ) from exc
        if not found:
            raise SourcesUnavailableError(f"study {study_uid}: the PACS has no instance of "
                                          f"series {series_uid}")
        return found


def chain(*resolvers: SourceResolver) -> SourceResolver:
    """The first resolver that finds the headers."""

    def resolve(session: Session, study_uid: str, series_uid: str) -> list[Dataset]:
        reasons = []
        for r in resolvers:
            try:
                return r(session, study_uid, series_uid)
            except SourcesUnavailableError as exc:
                reasons.append(str(exc))
        raise SourcesUnavailableError("; ".join(reasons) or "no source resolver")

    return resolve


def build_sr_bytes(session: Session, report_id: int, resolver: SourceResolver) -> bytes:
    """The Part 10 bytes of the SR of ``report_id`` (highdicom TID 1500)."""
    from medassist.export.sr import build_sr

    report = get_report(session, report_id)
    view = report_view(session, report)
    sources = resolver(session, view.study_uid, view.draft.inputs.series_uid)
    buf = BytesIO()
    build_sr(view, sources).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def queue_sr(session: Session, report_id: int, resolver: SourceResolver, *,
             actor: Actor = SYSTEM) -> OutboxItem:
    """Build the SR of a signed report and put it in the outbox (idempotent per report)."""
    report = get_report(session, report_id)
    if report.status != ReportStatus.SIGNED.value:
        raise SourcesUnavailableError(f"report {report_id} is {report.status}; only signed "
                                      "reports go back to the PACS")
    return outbox.add(session, build_sr_bytes(session, report_id, resolver), kind="sr",
                      report_id=report_id, actor=actor)


def sign_and_queue(session: Session, report_id: int, actor: Actor, password: str,
                   expected_version: int, resolver: SourceResolver, *,
                   confirm_text: bool = False) -> tuple[Signature, OutboxItem | None]:
    """Sign (``confirm_text`` as :func:`medassist.reports.sign_report` takes it), then queue
    the SR; an SR that cannot be built now is left to :func:`reconcile` (the signature
    stands; the failure is audited)."""
    sig = sign_report(session, report_id, actor, password, expected_version,
                      confirm_text=confirm_text)
    try:
        with session.begin_nested():
            item = queue_sr(session, report_id, resolver, actor=actor)
    except MedAssistError as exc:
        record(session, AuditAction.EXPORT, actor, ObjectType.REPORT, report_id,
               outcome=Outcome.MINOR_FAILURE,
               detail=f"SR send-back pending: {type(exc).__name__}")
        log.warning("report %d: SR not queued yet (%s); reconcile will retry", report_id,
                    type(exc).__name__)
        return sig, None
    return sig, item


def unsent_signed(session: Session) -> list[int]:
    """Signed reports whose SR is not in the outbox yet (pending send-back)."""
    queued = select(OutboxItem.report_id).where(OutboxItem.kind == "sr",
                                                OutboxItem.report_id.is_not(None))
    return list(session.scalars(select(Report.id).where(
        Report.status == ReportStatus.SIGNED.value, Report.id.not_in(queued)
    ).order_by(Report.id)))


@dataclass(frozen=True)
class Reconciled:
    queued: int
    pending: int


def reconcile(factory: sessionmaker[Session], resolver: SourceResolver) -> Reconciled:
    """Queue the SR of every signed report not yet in the outbox, one transaction each."""
    with unit_of_work(factory) as s:
        ids = unsent_signed(s)
    queued = 0
    for rid in ids:
        try:
            with unit_of_work(factory) as s:
                queue_sr(s, rid, resolver)
            queued += 1
        except MedAssistError as exc:
            with unit_of_work(factory) as s:
                record(s, AuditAction.EXPORT, SYSTEM, ObjectType.REPORT, rid,
                       outcome=Outcome.MINOR_FAILURE,
                       detail=f"SR send-back still pending: {type(exc).__name__}")
            log.warning("report %d: SR still pending (%s)", rid, type(exc).__name__)
    return Reconciled(queued=queued, pending=len(ids) - queued)


def send_round(factory: sessionmaker[Session], resolver: SourceResolver,
               send: Callable[[bytes, str], None]) -> tuple[Reconciled, outbox.Delivery]:
    """One round of ``medassist pacs send``: reconcile, then deliver what is due."""
    return reconcile(factory, resolver), outbox.deliver_pending(factory, send)


__all__: Sequence[str] = ["PacsSources", "Reconciled", "SourceResolver",
                          "SourcesUnavailableError", "build_sr_bytes", "chain", "local_sources",
                          "queue_sr", "reconcile", "send_round", "sign_and_queue",
                          "unsent_signed"]
