"""Alembic environment: the engine comes from ``config.attributes`` (see storage.migrate)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from medassist.storage.models import Base

config = context.config
engine = config.attributes.get("engine")
if not isinstance(engine, Engine):  # pragma: no cover - only via storage.migrate
    raise RuntimeError("run migrations through medassist.storage.migrate")

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite",
                      transaction_per_migration=False)
    with context.begin_transaction():
        context.run_migrations(app_role=config.attributes.get("app_role"))
    connection.commit()
