"""PACS integration: ingest queue (one row per StudyInstanceUID), /changes cursors, and the
send-back outbox.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

TABLES = ("pacs_ingest", "pacs_cursors", "pacs_outbox")
INGEST_STATES = "'queued', 'processing', 'done', 'failed', 'no_diagnostic_ct'"
OUTBOX_STATES = "'pending', 'retrying', 'sending', 'sent'"


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"invalid role name {name!r}")
    return f'"{name}"'


def upgrade(app_role: str | None = None, **_kw: object) -> None:
    tz = sa.DateTime(timezone=True)
    op.create_table(
        "pacs_ingest",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("location", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", tz, nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claim_token", sa.String(length=32), nullable=True),
        sa.Column("lease_until", tz, nullable=True),
        sa.Column("result_json", sa.Text(), nullable=True),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("updated_at", tz, nullable=False),
        sa.CheckConstraint(f"state IN ({INGEST_STATES})", name="ck_pacs_ingest_state"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_uid"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_pacs_ingest_state", "pacs_ingest", ["state"])
    op.create_table(
        "pacs_cursors",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", tz, nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "pacs_outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("report_id", sa.Integer(), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("payload_sha256", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", tz, nullable=False),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("sent_at", tz, nullable=True),
        sa.CheckConstraint(f"state IN ({OUTBOX_STATES})", name="ck_pacs_outbox_state"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sop_instance_uid"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_pacs_outbox_state", "pacs_outbox", ["state"])
    op.create_index("ix_pacs_outbox_study_uid", "pacs_outbox", ["study_uid"])
    if op.get_bind().dialect.name == "postgresql" and app_role:
        role = _ident(app_role)
        op.execute(f"GRANT SELECT, INSERT, UPDATE ON {', '.join(TABLES)} TO {role}")
        op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}")


def downgrade(**_kw: object) -> None:
    op.drop_index("ix_pacs_outbox_study_uid", table_name="pacs_outbox")
    op.drop_index("ix_pacs_outbox_state", table_name="pacs_outbox")
    op.drop_table("pacs_outbox")
    op.drop_table("pacs_cursors")
    op.drop_index("ix_pacs_ingest_state", table_name="pacs_ingest")
    op.drop_table("pacs_ingest")
