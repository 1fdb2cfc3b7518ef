"""Storage: SQLAlchemy 2.0 models, engines (SQLite WAL / PostgreSQL), Alembic migrations."""

from medassist.storage.engine import (
    backend,
    make_engine,
    resolve_db_url,
    session_factory,
    unit_of_work,
)
from medassist.storage.migrate import current_revision, head_revision, upgrade
from medassist.storage.models import (
    AuditChainHead,
    AuditEvent,
    Base,
    Job,
    JobStatus,
    Patient,
    Report,
    ReportStatus,
    ReportVersion,
    Role,
    Series,
    Signature,
    Study,
    User,
)

__all__ = [
    "AuditChainHead", "AuditEvent", "Base", "Job", "JobStatus", "Patient", "Report",
    "ReportStatus", "ReportVersion", "Role", "Series", "Signature", "Study", "User", "backend",
    "current_revision", "head_revision", "make_engine", "resolve_db_url", "session_factory",
    "unit_of_work", "upgrade",
]
