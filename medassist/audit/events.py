"""Audit vocabulary: DICOM PS3.15 A.5 / IHE ATNA EventID, EventActionCode, EventOutcome."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from medassist.errors import AuditError

#: The audit chain events go to unless told otherwise.
DEFAULT_CHAIN = "main"


class Outcome(enum.IntEnum):
    """EventOutcomeIndicator (PS3.15 A.5.3)."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


class ObjectType(enum.StrEnum):
    """What the participant object is; its ID is never PHI."""

    STUDY = "study"          # StudyInstanceUID
    REPORT = "report"        # medassist report ID
    USER = "user"            # medassist user name (staff, not patient)
    AUDIT_LOG = "audit_log"  # the audit chain name
    DATABASE = "database"    # schema revision
    SYSTEM = "system"


@dataclass(frozen=True)
class EventCode:
    """EventID (code, meaning: DCM), EventActionCode (C/R/U/D/E) and a medassist type code."""

    event_id: str
    meaning: str
    action: str
    type_code: str  # distinct per member (equal values would make enum aliases)


class AuditAction(enum.Enum):
    """Every event medassist records, mapped onto the PS3.15 A.5 vocabulary (DCM codes)."""

    LOGIN = EventCode("110114", "User Authentication", "E", "login")
    LOGOUT = EventCode("110114", "User Authentication", "E", "logout")
    PHI_READ = EventCode("110110", "Patient Record", "R", "phi_read")
    DRAFT_CREATE = EventCode("110110", "Patient Record", "C", "draft_create")
    REPORT_EDIT = EventCode("110110", "Patient Record", "U", "report_edit")
    REPORT_SUBMIT = EventCode("110110", "Patient Record", "U", "report_submit")
    REPORT_SIGN = EventCode("110110", "Patient Record", "U", "report_sign")
    REPORT_REJECT = EventCode("110110", "Patient Record", "U", "report_reject")
    REPORT_AMEND = EventCode("110110", "Patient Record", "C", "report_amend")
    EXPORT = EventCode("110106", "Export", "R", "export")
    USER_ADD = EventCode("110137", "User Security Attributes Changed", "C", "user_add")
    USER_DISABLE = EventCode("110137", "User Security Attributes Changed", "U", "user_disable")
    REFUSAL = EventCode("110113", "Security Alert", "E", "refusal")
    AUDIT_VERIFY = EventCode("110101", "Audit Log Used", "R", "audit_verify")
    AUDIT_EXPORT = EventCode("110101", "Audit Log Used", "R", "audit_export")
    DB_MIGRATE = EventCode("110100", "Application Activity", "E", "db_migrate")

    def __init__(self, code: EventCode) -> None:
        if code.type_code != self.name.lower():  # pragma: no cover - definition check
            raise AuditError(f"audit action {self.name}: type code must be its name")

    @property
    def code(self) -> EventCode:
        value = self.value
        if not isinstance(value, EventCode):  # pragma: no cover - enum definition above
            raise AuditError(f"audit action {self.name} has no event code")
        return value


@dataclass(frozen=True)
class Actor:
    """Who acts: a medassist user, or ``SYSTEM`` (local command line, pipeline)."""

    user_id: int | None
    username: str
    role: str

    def __post_init__(self) -> None:
        if not self.username or len(self.username) > 64:
            raise AuditError("actor user name must be 1..64 characters")
        if not self.role or len(self.role) > 16:
            raise AuditError("actor role must be 1..16 characters")


SYSTEM = Actor(user_id=None, username="system", role="system")
