"""Backends for the core tests: a SQLite file per test and a throwaway PostgreSQL 15 server.

The PostgreSQL server (``make services`` installs it) is started once per session on a free
loopback port, in a temporary directory owned by the ``postgres`` user; each test gets its own
database cloned from a migrated template. Missing binaries FAIL the tests (never skip).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from medassist.storage import make_engine, session_factory, upgrade

REPO_ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("MEDASSIST_PG_BIN", "/usr/lib/postgresql/15/bin"))
OWNER = "medassist_owner"
APP_ROLE = "medassist_app"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    port: int
    datadir: Path
    run_as: list[str]

    def url(self, db: str, user: str = OWNER) -> str:
        return f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/{db}"

    def admin(self, sql: str, db: str = "postgres") -> None:
        with psycopg.connect(host="127.0.0.1", port=self.port, user=OWNER, dbname=db,
                             autocommit=True) as conn:
            conn.execute(sql)

    def new_db(self, template: str | None = None) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self.admin(f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else ""))
        return name


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        pytest.fail(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n"
                    f"{proc.stderr}")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    initdb, pg_ctl = PG_BIN / "initdb", PG_BIN / "pg_ctl"
    if not initdb.is_file() or not pg_ctl.is_file():
        pytest.fail(f"PostgreSQL 15 binaries not found in {PG_BIN}: run `make services` "
                    "(apt-get install postgresql) or set MEDASSIST_PG_BIN")
    tmp = Path(tempfile.mkdtemp(prefix="medassist-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root but there is no 'postgres' user: install the Debian "
                        "package postgresql (make services)")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        tmp.chmod(0o700)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = tmp / "data", _free_port()
    _run([*run_as, str(initdb), "-D", str(data), "-A", "trust", "-U", OWNER, "-E", "UTF8",
          "--no-sync", "--locale=C"])
    opts = (f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60")
    _run([*run_as, str(pg_ctl), "-D", str(data), "-l", str(tmp / "log"), "-w", "-t", "60",
          "-o", opts, "start"])
    server = PgServer(port=port, datadir=data, run_as=run_as)
    try:
        server.admin(f"CREATE ROLE {APP_ROLE} LOGIN")
        yield server
    finally:
        subprocess.run([*run_as, str(pg_ctl), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=60, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_template(pg_server: PgServer) -> str:
    """A database migrated to head (with the application role's grants), cloned per test."""
    name = "medassist_tpl"
    pg_server.admin(f"CREATE DATABASE {name}")
    engine = make_engine(pg_server.url(name))
    upgrade(engine, app_role=APP_ROLE)
    engine.dispose()
    return name


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()  # closing the last connection checkpoints and removes the WAL
    if Path(f"{path}-wal").exists():
        pytest.fail("SQLite template still has a WAL file after closing")
    return path


@dataclass
class Db:
    """A migrated database: ``url`` as the application, ``admin_url`` as the owner."""

    backend: str
    url: str
    admin_url: str
    engine: Engine
    factory: sessionmaker[Session]

    def admin_engine(self) -> Engine:
        return make_engine(self.admin_url) if self.backend == "postgresql" else self.engine


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    """A fresh migrated database on each backend (parametrised: sqlite, postgresql)."""
    if request.param == "sqlite":
        tpl: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "medassist.db"
        shutil.copyfile(tpl, path)
        url = admin = f"sqlite:///{path}"
    else:
        server: PgServer = request.getfixturevalue("pg_server")
        name = server.new_db(template=request.getfixturevalue("pg_template"))
        url, admin = server.url(name, APP_ROLE), server.url(name)
    engine = make_engine(url)
    try:
        yield Db(request.param, url, admin, engine, session_factory(engine))
    finally:
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database URL (owner rights) on each backend, for migration tests."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    server: PgServer = request.getfixturevalue("pg_server")
    return server.url(server.new_db())

