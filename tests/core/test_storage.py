"""Storage: migrations from empty and from the previous revision, SQLite pragmas, IDs."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text

from medassist.errors import MigrationError, StorageError
from medassist.storage import (
    Patient,
    Role,
    User,
    current_revision,
    head_revision,
    make_engine,
    resolve_db_url,
    session_factory,
    upgrade,
)
from medassist.storage.migrate import downgrade, require_current

from .conftest import Db

TABLES = {"users", "patients", "studies", "series", "jobs", "reports", "report_versions",
          "signatures", "audit_events", "audit_chain_heads", "alembic_version"}


def test_upgrade_from_empty_creates_all_tables(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        assert current_revision(engine) is None
        with pytest.raises(MigrationError, match="medassist db upgrade"):
            require_current(engine)
        assert upgrade(engine) == head_revision() == "0004"
        assert set(inspect(engine).get_table_names()) >= TABLES
        require_current(engine)
        assert upgrade(engine) == "0004"  # idempotent
    finally:
        engine.dispose()


def test_upgrade_from_previous_revision_keeps_data(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        assert upgrade(engine, "0001") == "0001"
        f = session_factory(engine)
        with f.begin() as s:
            s.add(Patient(pseudo_id="P-0001"))
        assert upgrade(engine) == "0004"
        with f() as s:
            assert s.scalars(select(Patient.pseudo_id)).all() == ["P-0001"]
        # 0002 added the append-only trigger: a raw UPDATE of an audit event is refused
        with f.begin() as s:
            s.execute(text("INSERT INTO audit_events (chain, seq, event_time, event_id, "
                           "event_id_meaning, event_type, action, outcome, username, role, "
                           "object_type, object_id, input_hashes, detail, prev_hash, row_hash) "
                           "VALUES ('t', 1, 'x', '1', 'm', 'T', 'E', 0, 'u', 'r', 'system', "
                           "'1', '{}', '', 'p', 'h')"))
        with pytest.raises(Exception, match="append-only"), f.begin() as s:
            s.execute(text("UPDATE audit_events SET detail = 'x'"))
        assert downgrade(engine, "0001") == "0001"
        with f.begin() as s:  # trigger gone after downgrade
            s.execute(text("UPDATE audit_events SET detail = 'x'"))
        assert downgrade(engine, "base") == "base"
        assert "users" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


REVISIONS = ["0001", "0002", "0003", "0004"]


@pytest.mark.parametrize("rev", REVISIONS[1:])
def test_each_migration_from_its_previous_revision(empty_url: str, rev: str) -> None:
    """Every revision upgrades from the one before it with data in place, and downgrades
    back to it (and the chain ends at the head)."""
    assert REVISIONS[-1] == head_revision()
    prev = REVISIONS[REVISIONS.index(rev) - 1]
    engine = make_engine(empty_url)
    try:
        assert upgrade(engine, prev) == prev
        f = session_factory(engine)
        with f.begin() as s:
            s.add(Patient(pseudo_id=f"P-{prev}"))
        tables_before = set(inspect(engine).get_table_names())
        assert upgrade(engine, rev) == rev
        with f() as s:
            assert s.scalars(select(Patient.pseudo_id)).all() == [f"P-{prev}"]
        assert tables_before <= set(inspect(engine).get_table_names())
        assert downgrade(engine, prev) == prev
        assert set(inspect(engine).get_table_names()) == tables_before
        with f() as s:
            assert s.scalars(select(Patient.pseudo_id)).all() == [f"P-{prev}"]
    finally:
        engine.dispose()


def test_sqlite_wal_and_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x' / 'm.db'}")
    try:
        upgrade(engine)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_foreign_keys_enforced(db: Db) -> None:
    from medassist.storage import Study

    with pytest.raises(Exception, match=r"(?i)foreign key"), db.factory.begin() as s:
        s.add(Study(patient_id=999, study_uid="1.2.3"))


def test_user_ids_never_reused(db: Db) -> None:
    """Deleting the newest user (as the owner) does not free its ID for the next one."""
    f = db.factory
    with f.begin() as s:
        for name in ("a", "b"):
            s.add(User(username=name, display_name=name, role=Role.CLINICIAN.value,
                       password_hash="x"))
    admin = db.admin_engine()
    with admin.begin() as conn:
        conn.execute(text("DELETE FROM users WHERE username = 'b'"))
    with f.begin() as s:
        u = User(username="c", display_name="c", role=Role.ADMIN.value, password_hash="x")
        s.add(u)
        s.flush()
        assert u.id == 3
    if admin is not db.engine:
        admin.dispose()


def test_role_constraint(db: Db) -> None:
    with pytest.raises(Exception, match=r"(?i)check|constraint"), db.factory.begin() as s:
        s.add(User(username="z", display_name="z", role="root", password_hash="x"))


def test_db_url_precedence(tmp_path: Path) -> None:
    env = {"MEDASSIST_DB_URL": "sqlite:///env.db", "MEDASSIST_DATA_DIR": str(tmp_path)}
    assert resolve_db_url("sqlite:///cli.db", env) == "sqlite:///cli.db"
    assert resolve_db_url(None, env) == "sqlite:///env.db"
    assert resolve_db_url(None, {"MEDASSIST_DATA_DIR": str(tmp_path)}) == \
        f"sqlite:///{tmp_path / 'medassist.db'}"
    with pytest.raises(StorageError, match="unsupported database"):
        make_engine("mysql://u@h/db")
