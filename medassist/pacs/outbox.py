"""Send-back outbox: results (the TID 1500 SR, optionally an encapsulated PDF) waiting to go
to the PACS over STOW-RS.  A failed send stays in the table (``retrying``, with the last
error and the next attempt time), is audited, and is retried with backoff: never dropped.

:func:`add` runs in the caller's transaction (e.g. the one that signs the report).
:func:`deliver_pending` commits per item: claim (short lease), send outside any transaction,
record the outcome.  STOW-RS of the same SOP instance twice is harmless, so a crash between
sending and recording at worst sends once more.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from io import BytesIO

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_io.uids import validate_uid
from medassist.audit import SYSTEM, Actor, AuditAction, ObjectType, Outcome, record
from medassist.errors import InputError, PacsError, QueueStateError
from medassist.pacs.models import OutboxItem, OutboxState
from medassist.pacs.queue import Backoff, utcnow
from medassist.storage.engine import backend, unit_of_work

log = logging.getLogger("medassist.pacs")

KINDS = ("sr", "pdf")
SEND_BACKOFF = Backoff(base_s=10.0, cap_s=1800.0, max_attempts=1 << 30)


def add(session: Session, payload: bytes, *, kind: str = "sr", report_id: int | None = None,
        actor: Actor = SYSTEM) -> OutboxItem:
    """Queue a DICOM object (Part 10 bytes) for STOW-RS; idempotent per SOPInstanceUID."""
    import pydicom

    if kind not in KINDS:
        raise InputError(f"unknown outbox kind {kind!r}; one of {', '.join(KINDS)}")
    try:
        ds = pydicom.dcmread(BytesIO(payload), stop_before_pixels=True)
        study = validate_uid(getattr(ds, "StudyInstanceUID", None), what="StudyInstanceUID")
        sop = validate_uid(getattr(ds, "SOPInstanceUID", None), what="SOPInstanceUID")
    except Exception as exc:
        raise InputError(f"outbox payload is not a usable DICOM object: {exc}") from exc
    existing = session.scalars(select(OutboxItem).where(
        OutboxItem.sop_instance_uid == sop)).one_or_none()
    digest = hashlib.sha256(payload).hexdigest()
    if existing is not None:
        if existing.payload_sha256 != digest:
            raise QueueStateError(f"SOP instance {sop} is already in the outbox with other "
                                  "content; a changed object needs a new SOPInstanceUID")
        return existing
    item = OutboxItem(study_uid=study, sop_instance_uid=sop, kind=kind, report_id=report_id,
                      payload=payload, payload_sha256=digest, state=OutboxState.PENDING.value,
                      attempts=0, next_attempt_at=utcnow())
    session.add(item)
    session.flush()
    record(session, AuditAction.EXPORT, actor, ObjectType.STUDY, study,
           after_hash=digest, detail=f"queued {kind} for STOW-RS (outbox {item.id})")
    return item


@dataclass(frozen=True)
class Delivery:
    sent: int
    failed: int


def _claim(session: Session, lease_s: float) -> OutboxItem | None:
    now = utcnow()
    stmt = (select(OutboxItem)
            .where(OutboxItem.state != OutboxState.SENT.value, OutboxItem.next_attempt_at <= now)
            .order_by(OutboxItem.next_attempt_at, OutboxItem.id).limit(1))
    if backend(session) == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    item = session.scalars(stmt).first()
    if item is None:
        return None
    item.state = OutboxState.SENDING.value
    item.attempts += 1
    item.next_attempt_at = now + timedelta(seconds=lease_s)  # a crashed sender's lease
    session.flush()
    return item


def deliver_pending(factory: sessionmaker[Session], send: Callable[[bytes, str], None], *,
                    limit: int = 100, lease_s: float = 300.0,
                    backoff: Backoff = SEND_BACKOFF) -> Delivery:
    """Send every due outbox item with ``send(payload, study_uid)`` (e.g.
    ``PacsClient.store_bytes``); each outcome is committed and audited."""
    sent = failed = 0
    for _ in range(limit):
        with unit_of_work(factory) as s:
            item = _claim(s, lease_s)
            if item is None:
                break
            item_id, payload, study, attempts = (item.id, item.payload, item.study_uid,
                                                 item.attempts)
            kind, digest = item.kind, item.payload_sha256
        error: str | None = None
        try:
            send(payload, study)
        except PacsError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # anything else: keep it queued and visible
            log.exception("outbox %d: unexpected send failure", item_id)
            error = f"{type(exc).__name__}: {exc}"
        with unit_of_work(factory) as s:
            row = s.get(OutboxItem, item_id)
            if row is None:  # pragma: no cover - rows are never deleted
                continue
            now = utcnow()
            if error is None:
                row.state = OutboxState.SENT.value
                row.sent_at = now
                row.last_error = None
                sent += 1
                record(s, AuditAction.EXPORT, SYSTEM, ObjectType.STUDY, study,
                       after_hash=digest, detail=f"{kind} stored to PACS by STOW-RS "
                       f"(outbox {item_id}, attempt {attempts})")
            else:
                row.state = OutboxState.RETRYING.value
                row.last_error = error[:2000]
                row.next_attempt_at = now + backoff.delay(attempts)
                failed += 1
                record(s, AuditAction.EXPORT, SYSTEM, ObjectType.STUDY, study,
                       outcome=Outcome.SERIOUS_FAILURE, after_hash=digest,
                       detail=f"{kind} STOW-RS failed (outbox {item_id}, attempt {attempts}); "
                       "queued for retry")
                log.warning("outbox %d: send failed (attempt %d); retry at %s", item_id,
                            attempts, row.next_attempt_at.isoformat())
    return Delivery(sent, failed)


def pending(session: Session) -> list[OutboxItem]:
    """Items not yet delivered (what the UI shows, with state and last error)."""
    return list(session.scalars(select(OutboxItem).where(
        or_(OutboxItem.state != OutboxState.SENT.value)).order_by(OutboxItem.id)))


def retry_now(session: Session) -> int:
    """Make every undelivered item due now (after the PACS is back); returns how many."""
    now = utcnow()
    rows = pending(session)
    for r in rows:
        if r.state != OutboxState.SENDING.value:
            r.next_attempt_at = now
    session.flush()
    return len(rows)
