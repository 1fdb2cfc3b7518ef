"""Database URL resolution, engines and the unit-of-work helper.

SQLite engines run in WAL mode with foreign keys on, and start every transaction with
``BEGIN IMMEDIATE``: writers queue on the database lock (``busy_timeout``) instead of failing
later on a stale snapshot, which is what keeps the audit chain linear on SQLite.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from medassist.errors import RefusalError, StorageError

ENV_DB_URL = "MEDASSIST_DB_URL"
ENV_DATA_DIR = "MEDASSIST_DATA_DIR"


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$MEDASSIST_DATA_DIR``, else ``$XDG_DATA_HOME/medassist``, else ``~/.local/share/...``."""
    env = os.environ if environ is None else environ
    if env.get(ENV_DATA_DIR):
        return Path(env[ENV_DATA_DIR])
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "medassist"


def resolve_db_url(cli_url: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The database URL: the CLI's ``--db``, then ``$MEDASSIST_DB_URL``, then SQLite default."""
    env = os.environ if environ is None else environ
    if cli_url:
        return cli_url
    if env.get(ENV_DB_URL):
        return env[ENV_DB_URL]
    return f"sqlite:///{default_data_dir(env) / 'medassist.db'}"


def _normalise(url: str) -> str:
    try:
        u = make_url(url)
    except ArgumentError as exc:
        raise StorageError(f"cannot parse database URL: {exc}; use sqlite:///PATH or "
                           "postgresql+psycopg://USER@HOST:PORT/DB") from exc
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    if u.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        raise StorageError(f"unsupported database {u.drivername!r}; use SQLite or PostgreSQL "
                           "(postgresql+psycopg://...)")
    return u.render_as_string(hide_password=False)


def make_engine(url: str, *, echo: bool = False, pool_size: int = 10) -> Engine:
    """An engine for ``url`` (SQLite or PostgreSQL via psycopg 3), configured for medassist."""
    url = _normalise(url)
    if url.startswith("sqlite"):
        u = make_url(url)
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo,
                               connect_args={"isolation_level": None, "timeout": 60,
                                             "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, echo=echo, pool_size=pool_size, max_overflow=pool_size,
                         pool_pre_ping=True)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session in one transaction: commit on success, roll back on error.

    On a :class:`RefusalError` the operation made no change but wrote its refusal to the audit
    trail; that is committed before the error propagates.
    """
    session = factory()
    try:
        yield session
        session.commit()
    except RefusalError:
        session.commit()
        raise
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def backend(session_or_engine: Session | Engine) -> str:
    """``"sqlite"`` or ``"postgresql"``."""
    bind = session_or_engine.get_bind() if isinstance(session_or_engine, Session) \
        else session_or_engine
    return bind.dialect.name
