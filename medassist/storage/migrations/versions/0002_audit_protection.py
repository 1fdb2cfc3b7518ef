"""Protect the audit trail: triggers refuse UPDATE/DELETE/TRUNCATE of audit_events, chain heads
only move forward, and (PostgreSQL) the application role gets no UPDATE/DELETE/TRUNCATE grant.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

APP_TABLES = ("users", "patients", "studies", "series", "jobs", "reports", "report_versions",
              "signatures", "audit_chain_heads")

PG_UP = """
CREATE OR REPLACE FUNCTION medassist_audit_append_only() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$ LANGUAGE plpgsql;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
  FOR EACH ROW EXECUTE FUNCTION medassist_audit_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
  FOR EACH STATEMENT EXECUTE FUNCTION medassist_audit_append_only();
CREATE OR REPLACE FUNCTION medassist_chain_head_forward() RETURNS trigger AS $$
BEGIN
  IF TG_OP = 'DELETE' OR NEW.chain <> OLD.chain OR NEW.last_seq <= OLD.last_seq THEN
    RAISE EXCEPTION 'audit chain heads only move forward: % refused', TG_OP
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER audit_chain_heads_forward BEFORE UPDATE OR DELETE ON audit_chain_heads
  FOR EACH ROW EXECUTE FUNCTION medassist_chain_head_forward();
CREATE TRIGGER audit_chain_heads_no_truncate BEFORE TRUNCATE ON audit_chain_heads
  FOR EACH STATEMENT EXECUTE FUNCTION medassist_audit_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM PUBLIC;
"""

PG_DOWN = """
DROP TRIGGER IF EXISTS audit_chain_heads_no_truncate ON audit_chain_heads;
DROP TRIGGER IF EXISTS audit_chain_heads_forward ON audit_chain_heads;
DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events;
DROP TRIGGER IF EXISTS audit_events_no_update ON audit_events;
DROP FUNCTION IF EXISTS medassist_chain_head_forward();
DROP FUNCTION IF EXISTS medassist_audit_append_only();
"""

SQLITE_UP = (
    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused'); END",
    "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused'); END",
    "CREATE TRIGGER audit_chain_heads_forward BEFORE UPDATE ON audit_chain_heads "
    "WHEN NEW.last_seq <= OLD.last_seq OR NEW.chain <> OLD.chain "
    "BEGIN SELECT RAISE(ABORT, 'audit chain heads only move forward'); END",
    "CREATE TRIGGER audit_chain_heads_no_delete BEFORE DELETE ON audit_chain_heads "
    "BEGIN SELECT RAISE(ABORT, 'audit chain heads only move forward'); END",
)
SQLITE_DOWN = ("audit_chain_heads_no_delete", "audit_chain_heads_forward",
               "audit_events_no_delete", "audit_events_no_update")


def _ident(role: str) -> str:
    if not role.replace("_", "").isalnum():
        raise ValueError(f"invalid PostgreSQL role name {role!r}: use letters, digits and _")
    return f'"{role}"'


def upgrade(app_role: str | None = None, **_kw: object) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(PG_UP)
        if app_role:
            role = _ident(app_role)
            op.execute(f"GRANT SELECT, INSERT ON audit_events TO {role}")
            op.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM {role}")
            op.execute(f"GRANT SELECT, INSERT, UPDATE ON {', '.join(APP_TABLES)} TO {role}")
            op.execute(f"GRANT SELECT ON alembic_version TO {role}")
            op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}")
    else:
        for stmt in SQLITE_UP:
            op.execute(stmt)


def downgrade(**_kw: object) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(PG_DOWN)
    else:
        for name in SQLITE_DOWN:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
