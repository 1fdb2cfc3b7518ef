"""Alembic migrations, run programmatically (``medassist db upgrade`` and on start-up)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from medassist.errors import MigrationError

log = logging.getLogger("medassist.storage")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _config(engine: Engine, app_role: str | None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    cfg.attributes["app_role"] = app_role
    return cfg


def head_revision() -> str:
    script = ScriptDirectory.from_config(_config_for_script())
    head = script.get_current_head()
    if head is None:
        raise MigrationError("no migration scripts found; the installation is broken")
    return head


def _config_for_script() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        rev = MigrationContext.configure(conn).get_current_revision()
        conn.rollback()
        return rev


def upgrade(engine: Engine, revision: str = "head", *, app_role: str | None = None) -> str:
    """Migrate the database to ``revision``; returns the revision reached.

    ``app_role`` (PostgreSQL): the role the application connects as; it is granted what it
    needs, and never UPDATE/DELETE/TRUNCATE on ``audit_events``.
    """
    try:
        command.upgrade(_config(engine, app_role), revision)
    except SQLAlchemyError as exc:
        raise MigrationError(f"migration to {revision} failed: {exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0]}; check the database URL and that "
                             "the user may create tables") from exc
    rev = current_revision(engine)
    log.info("database at revision %s", rev)
    return rev or ""


def downgrade(engine: Engine, revision: str) -> str:
    try:
        command.downgrade(_config(engine, None), revision)
    except SQLAlchemyError as exc:
        raise MigrationError(f"downgrade to {revision} failed: {exc}") from exc
    return current_revision(engine) or "base"


def require_current(engine: Engine) -> None:
    """Raise unless the database is at the head revision (run ``medassist db upgrade``)."""
    cur, head = current_revision(engine), head_revision()
    if cur != head:
        raise MigrationError(f"database is at revision {cur or 'empty'}, code expects {head}; "
                             "run `medassist db upgrade`")
