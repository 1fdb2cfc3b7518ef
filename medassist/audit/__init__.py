"""Tamper-evident audit trail (hash chain) with PS3.15 A.5 / ATNA vocabulary and export."""

from medassist.audit.chain import (
    DEFAULT_CHAIN,
    GENESIS,
    AuditRecord,
    BrokenLink,
    EventSpec,
    VerifyResult,
    append,
    append_many,
    events_since,
    record,
    verify,
)
from medassist.audit.events import SYSTEM, Actor, AuditAction, ObjectType, Outcome

__all__ = [
    "DEFAULT_CHAIN", "GENESIS", "SYSTEM", "Actor", "AuditAction", "AuditRecord", "BrokenLink",
    "EventSpec", "ObjectType", "Outcome", "VerifyResult", "append", "append_many",
    "events_since", "record", "verify",
]
