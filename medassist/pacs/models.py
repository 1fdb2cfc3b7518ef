"""Tables of the PACS integration (migration 0003), on the storage ``Base``.

``pacs_ingest``: one row per StudyInstanceUID, whatever brought it (watch, listen, batch).
``pacs_cursors``: the last Orthanc ``/changes`` sequence number consumed, per source.
``pacs_outbox``: results waiting to go back to the PACS (STOW-RS), never dropped.
No column holds PHI: studies are known by their UID, files by a local path.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from medassist.storage.models import Base, utcnow


class IngestState(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    NO_DIAGNOSTIC_CT = "no_diagnostic_ct"


class OutboxState(enum.StrEnum):
    PENDING = "pending"      # never tried
    RETRYING = "retrying"    # at least one failed attempt; last_error says why
    SENDING = "sending"      # claimed by a deliverer (lease in next_attempt_at)
    SENT = "sent"


def _in(col: str, values: type[enum.StrEnum]) -> str:
    return f"{col} IN ({', '.join(repr(v.value) for v in values)})"


class IngestItem(Base):
    __tablename__ = "pacs_ingest"
    __table_args__ = (CheckConstraint(_in("state", IngestState), name="ck_pacs_ingest_state"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(String(16))
    location: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(20), default=IngestState.QUEUED.value, index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claim_token: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result_json: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PacsCursor(Base):
    __tablename__ = "pacs_cursors"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OutboxItem(Base):
    __tablename__ = "pacs_outbox"
    __table_args__ = (CheckConstraint(_in("state", OutboxState), name="ck_pacs_outbox_state"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(8))
    report_id: Mapped[int | None] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    payload_sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=OutboxState.PENDING.value, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
