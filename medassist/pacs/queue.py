"""The ingest queue shared by ``pacs watch``, ``pacs listen`` and the batch CLI.

One row per StudyInstanceUID (validated): enqueuing twice is a no-op, so each study is
processed once whatever brought it.  States: ``queued`` → ``processing`` → ``done`` |
``failed`` | ``no_diagnostic_ct`` (reason kept); transient failures go back to ``queued``
with an exponential backoff, and nothing is ever deleted.

Exactly-once processing: :func:`claim` hands a row out under a lease with a fresh
``claim_token`` (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite every transaction is
``BEGIN IMMEDIATE``, so claimers queue on the database lock).  The processor's writes and
:func:`finish` go in one transaction, and :func:`finish` only succeeds while the token still
holds; a worker that died mid-study left nothing committed, and its row is claimed again when
its lease runs out (or at once, when its process is known to be gone).

Every function takes a Session and never commits: the caller owns the transaction.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from dicom_io.errors import InvalidUIDError
from dicom_io.uids import validate_uid
from medassist.errors import InputError, QueueStateError
from medassist.pacs.models import IngestItem, IngestState
from medassist.storage.engine import backend

SOURCES = ("watch", "listen", "batch")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(t: datetime | None) -> datetime | None:
    """SQLite gives naive datetimes back; they were stored as UTC."""
    if t is None or t.tzinfo is not None:
        return t
    return t.replace(tzinfo=UTC)


def worker_id() -> str:
    """``host:pid``: lets a restarted worker reclaim what a dead one on this host held."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}"


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt ``n + 1`` after ``n`` failures: ``base * 2**(n-1)``, capped."""

    base_s: float = 5.0
    cap_s: float = 3600.0
    max_attempts: int = 8

    def delay(self, attempts: int) -> timedelta:
        return timedelta(seconds=min(self.cap_s, self.base_s * 2 ** max(0, attempts - 1)))


@dataclass(frozen=True)
class Claim:
    """A row handed to one worker; :func:`finish` and :func:`fail` need the token back."""

    item_id: int
    study_uid: str
    location: str | None
    source: str
    token: str
    attempts: int


def _check_uid(study_uid: str) -> str:
    try:
        return validate_uid(study_uid, what="StudyInstanceUID")
    except InvalidUIDError as exc:
        raise InputError(str(exc), kind="InvalidUIDError") from exc


def enqueue(session: Session, study_uid: str, *, source: str,
            location: str | None = None) -> tuple[IngestItem, bool]:
    """Queue ``study_uid`` unless it is already known; returns (row, created).

    Race-free: ``INSERT ... ON CONFLICT (study_uid) DO NOTHING``.  An existing row keeps its
    state (a ``done`` study is not processed again; use :func:`requeue` on purpose).
    """
    uid = _check_uid(study_uid)
    if source not in SOURCES:
        raise InputError(f"unknown ingest source {source!r}; one of {', '.join(SOURCES)}")
    now = utcnow()
    values: dict[str, Any] = {"study_uid": uid, "source": source, "location": location,
                              "state": IngestState.QUEUED.value, "attempts": 0,
                              "next_attempt_at": now, "created_at": now, "updated_at": now}
    ins = (pg_insert(IngestItem) if backend(session) == "postgresql"
           else sqlite_insert(IngestItem))
    # RETURNING tells whether this statement inserted the row (rowcount is not reliable for
    # ON CONFLICT DO NOTHING on every driver: psycopg 3 reported 1 for a skipped insert)
    result = session.execute(ins.values(**values).on_conflict_do_nothing(
        index_elements=["study_uid"]).returning(IngestItem.id))
    created = result.first() is not None
    row = session.scalars(select(IngestItem).where(IngestItem.study_uid == uid)
                          .execution_options(populate_existing=True)).one()
    if not created and row.location is None and location is not None:
        row.location = location
    return row, created


def get(session: Session, study_uid: str) -> IngestItem | None:
    return session.scalars(select(IngestItem).where(
        IngestItem.study_uid == _check_uid(study_uid))).one_or_none()


def _owner_gone(claimed_by: str | None) -> bool:
    """True when the claim was made on this host by a process that no longer exists."""
    if not claimed_by or ":" not in claimed_by:
        return False
    host, _, pid = claimed_by.rpartition(":")
    if host != socket.gethostname()[:100] or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover(session: Session, *, now: datetime | None = None) -> int:
    """Put back to ``queued`` the ``processing`` rows whose lease ran out or whose local owner
    process is gone; returns how many.  :func:`claim` calls it."""
    now = now or utcnow()
    stmt = select(IngestItem).where(IngestItem.state == IngestState.PROCESSING.value)
    if backend(session) == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    rows = session.scalars(stmt).all()
    n = 0
    for row in rows:
        lease = _aware(row.lease_until)
        if (lease is not None and lease <= now) or _owner_gone(row.claimed_by):
            row.state = IngestState.QUEUED.value
            row.reason = f"worker {row.claimed_by} stopped during attempt {row.attempts}"
            row.claimed_by = None
            row.claim_token = None
            row.lease_until = None
            row.next_attempt_at = now
            row.updated_at = now
            n += 1
    if n:
        session.flush()
    return n


def claim(session: Session, *, worker: str | None = None, lease_s: float = 1800.0,
          sources: tuple[str, ...] = SOURCES, now: datetime | None = None) -> Claim | None:
    """Hand the oldest due ``queued`` row to ``worker`` (``processing``, attempts + 1).

    Commit right after, then process; the lease must outlast the processing.
    """
    now = now or utcnow()
    recover(session, now=now)
    stmt = (select(IngestItem)
            .where(IngestItem.state == IngestState.QUEUED.value,
                   IngestItem.next_attempt_at <= now,
                   IngestItem.source.in_(sources))
            .order_by(IngestItem.next_attempt_at, IngestItem.id).limit(1))
    if backend(session) == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    row = session.scalars(stmt).first()
    if row is None:
        return None
    token = uuid.uuid4().hex
    row.state = IngestState.PROCESSING.value
    row.attempts += 1
    row.claimed_by = (worker or worker_id())[:128]
    row.claim_token = token
    row.lease_until = now + timedelta(seconds=lease_s)
    row.updated_at = now
    session.flush()
    return Claim(row.id, row.study_uid, row.location, row.source, token, row.attempts)


def _held(session: Session, claim_: Claim) -> IngestItem:
    stmt = select(IngestItem).where(IngestItem.id == claim_.item_id)
    if backend(session) == "postgresql":
        stmt = stmt.with_for_update()
    row = session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()
    if (row is None or row.state != IngestState.PROCESSING.value
            or row.claim_token != claim_.token):
        raise QueueStateError(f"study {claim_.study_uid}: the claim was lost (lease expired and "
                              "another worker took it); this attempt's results are discarded")
    return row


def _end(row: IngestItem, state: IngestState, reason: str | None, now: datetime) -> None:
    row.state = state.value
    row.reason = reason
    row.claim_token = None
    row.lease_until = None
    row.updated_at = now


def finish(session: Session, claim_: Claim, *, result: Mapping[str, Any] | None = None,
           state: IngestState = IngestState.DONE, reason: str | None = None) -> IngestItem:
    """Close a claim as ``done`` (or ``no_diagnostic_ct`` / ``failed`` with a reason).

    Raises :class:`QueueStateError` when the claim no longer holds: roll back then, so the
    processor's writes in the same transaction are discarded too.
    """
    if state in (IngestState.QUEUED, IngestState.PROCESSING):
        raise QueueStateError(f"finish() cannot leave a study {state.value}")
    row = _held(session, claim_)
    _end(row, state, reason, utcnow())
    if result is not None:
        row.result_json = json.dumps(dict(result), sort_keys=True, allow_nan=False)
    session.flush()
    return row


def fail(session: Session, claim_: Claim, reason: str, *, transient: bool,
         backoff: Backoff | None = None) -> IngestItem:
    """Record a failed attempt: transient ones go back to ``queued`` after a backoff until
    ``max_attempts``; then (or for a permanent error) the row is ``failed``, reason kept."""
    b = backoff or Backoff()
    row = _held(session, claim_)
    now = utcnow()
    if transient and row.attempts < b.max_attempts:
        _end(row, IngestState.QUEUED, reason, now)
        row.next_attempt_at = now + b.delay(row.attempts)
    else:
        _end(row, IngestState.FAILED, reason, now)
    session.flush()
    return row


def requeue(session: Session, study_uid: str) -> IngestItem:
    """Queue a ``failed`` (or finished) study again on purpose, e.g. after a fix."""
    row = get(session, study_uid)
    if row is None:
        raise QueueStateError(f"study {study_uid} is not in the ingest queue")
    if row.state == IngestState.PROCESSING.value:
        raise QueueStateError(f"study {study_uid} is being processed; wait for it")
    now = utcnow()
    _end(row, IngestState.QUEUED, row.reason, now)
    row.next_attempt_at = now
    session.flush()
    return row


def counts(session: Session) -> dict[str, int]:
    """Rows per state (for status displays)."""
    out = {s.value: 0 for s in IngestState}
    for state in session.scalars(select(IngestItem.state)):
        out[state] = out.get(state, 0) + 1
    return out


__all__ = ["SOURCES", "Backoff", "Claim", "claim", "counts", "enqueue", "fail", "finish",
           "get", "recover", "requeue", "worker_id"]
