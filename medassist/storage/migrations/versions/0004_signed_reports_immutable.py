"""Signed reports are immutable in the database too (not only in the ORM): triggers refuse any
change to a signed report's content or status, deleting a signed report, and any UPDATE or
DELETE of signatures and report versions (21 CFR 11.10(e), 11.70). A correction is an
amendment: a new report linked to the signed one.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

#: the columns that make up a report's content; a signed report keeps them for ever
CONTENT = ("text", "status", "ai_text", "draft_json", "draft_sha256", "study_id", "series_id",
           "job_id", "model_name", "model_version", "checkpoint_sha256", "dicom_sha256",
           "emr_sha256", "rejection_reason", "amends_report_id", "created_by")

_PG_CHANGED = " OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in CONTENT)
PG_UP = f"""
CREATE OR REPLACE FUNCTION medassist_signed_report_guard() RETURNS trigger AS $$
BEGIN
  IF OLD.status = 'SIGNED' THEN
    IF TG_OP = 'DELETE' OR {_PG_CHANGED} THEN
      RAISE EXCEPTION 'report % is signed and immutable: % refused (amend it instead)',
        OLD.id, TG_OP USING ERRCODE = 'insufficient_privilege';
    END IF;
  END IF;
  IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER reports_signed_immutable BEFORE UPDATE OR DELETE ON reports
  FOR EACH ROW EXECUTE FUNCTION medassist_signed_report_guard();
CREATE OR REPLACE FUNCTION medassist_record_immutable() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION '% rows are immutable: % refused', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$ LANGUAGE plpgsql;
CREATE TRIGGER signatures_immutable BEFORE UPDATE OR DELETE ON signatures
  FOR EACH ROW EXECUTE FUNCTION medassist_record_immutable();
CREATE TRIGGER report_versions_immutable BEFORE UPDATE OR DELETE ON report_versions
  FOR EACH ROW EXECUTE FUNCTION medassist_record_immutable();
CREATE TRIGGER reports_no_truncate BEFORE TRUNCATE ON reports
  FOR EACH STATEMENT EXECUTE FUNCTION medassist_record_immutable();
CREATE TRIGGER signatures_no_truncate BEFORE TRUNCATE ON signatures
  FOR EACH STATEMENT EXECUTE FUNCTION medassist_record_immutable();
CREATE TRIGGER report_versions_no_truncate BEFORE TRUNCATE ON report_versions
  FOR EACH STATEMENT EXECUTE FUNCTION medassist_record_immutable();
"""

PG_TRIGGERS = (("reports", "reports_signed_immutable"), ("signatures", "signatures_immutable"),
               ("report_versions", "report_versions_immutable"),
               ("reports", "reports_no_truncate"), ("signatures", "signatures_no_truncate"),
               ("report_versions", "report_versions_no_truncate"))

_SQLITE_CHANGED = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in CONTENT)
SQLITE_UP = (
    "CREATE TRIGGER reports_signed_immutable BEFORE UPDATE ON reports "
    f"WHEN OLD.status = 'SIGNED' AND ({_SQLITE_CHANGED}) "
    "BEGIN SELECT RAISE(ABORT, 'report is signed and immutable: UPDATE refused (amend it "
    "instead)'); END",
    "CREATE TRIGGER reports_signed_no_delete BEFORE DELETE ON reports "
    "WHEN OLD.status = 'SIGNED' "
    "BEGIN SELECT RAISE(ABORT, 'report is signed and immutable: DELETE refused'); END",
    "CREATE TRIGGER signatures_no_update BEFORE UPDATE ON signatures "
    "BEGIN SELECT RAISE(ABORT, 'signatures rows are immutable: UPDATE refused'); END",
    "CREATE TRIGGER signatures_no_delete BEFORE DELETE ON signatures "
    "BEGIN SELECT RAISE(ABORT, 'signatures rows are immutable: DELETE refused'); END",
    "CREATE TRIGGER report_versions_no_update BEFORE UPDATE ON report_versions "
    "BEGIN SELECT RAISE(ABORT, 'report_versions rows are immutable: UPDATE refused'); END",
    "CREATE TRIGGER report_versions_no_delete BEFORE DELETE ON report_versions "
    "BEGIN SELECT RAISE(ABORT, 'report_versions rows are immutable: DELETE refused'); END",
)
SQLITE_TRIGGERS = ("reports_signed_immutable", "reports_signed_no_delete",
                   "signatures_no_update", "signatures_no_delete", "report_versions_no_update",
                   "report_versions_no_delete")


def upgrade(app_role: str | None = None, **_kw: object) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_UP)
    else:
        for stmt in SQLITE_UP:
            op.execute(stmt)


def downgrade(**_kw: object) -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, name in PG_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        op.execute("DROP FUNCTION IF EXISTS medassist_record_immutable()")
        op.execute("DROP FUNCTION IF EXISTS medassist_signed_report_guard()")
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
