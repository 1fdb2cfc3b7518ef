"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels: str | None = None
depends_on: str | None = None


def upgrade(**_kw: object) -> None:
    ${upgrades if upgrades else "pass"}


def downgrade(**_kw: object) -> None:
    ${downgrades if downgrades else "pass"}
