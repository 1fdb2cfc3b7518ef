"""Administrative commands: ``db upgrade``, ``user add|disable``, ``audit verify|export`` and
``export REPORT_ID``. Register them with :func:`add_parser` on the main sub-parsers.

Database URL: ``--db``, else ``$MEDASSIST_DB_URL``, else SQLite in the data directory.
Local administrative commands act as the ``system`` actor (the OS user running them);
``export`` acts as a clinician and asks for the password (``--password-stdin`` for scripts).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

# the parser is built from light modules only; storage, audit trail and SQLAlchemy are
# imported by the commands that use them
from medassist.audit.events import DEFAULT_CHAIN
from medassist.errors import MedAssistError, UsageError

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = logging.getLogger("medassist.admin")


def _engine(args: argparse.Namespace, *, migrate: bool = True) -> Engine:
    from medassist.storage import make_engine, resolve_db_url
    from medassist.storage.migrate import require_current, upgrade

    engine = make_engine(resolve_db_url(getattr(args, "db", None)))
    if migrate:  # migrations run on start-up
        upgrade(engine)
        require_current(engine)
    return engine


def _password(args: argparse.Namespace, prompt: str, stdin: TextIO | None = None) -> str:
    if getattr(args, "password_stdin", False):
        pw = (stdin or sys.stdin).readline().rstrip("\n")
    else:
        pw = getpass.getpass(prompt)
    if not pw:
        raise UsageError("no password given")
    return pw


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from medassist import audit
    from medassist.audit import SYSTEM, AuditAction, ObjectType
    from medassist.storage import make_engine, resolve_db_url, session_factory, unit_of_work
    from medassist.storage.migrate import upgrade

    engine = make_engine(resolve_db_url(args.db))
    try:
        rev = upgrade(engine, app_role=args.app_role)
        with unit_of_work(session_factory(engine)) as s:
            audit.record(s, AuditAction.DB_MIGRATE, SYSTEM, ObjectType.DATABASE, rev)
        sys.stdout.write(f"database at revision {rev}\n")
    finally:
        engine.dispose()
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    from medassist.audit import SYSTEM
    from medassist.auth import create_user
    from medassist.storage import session_factory, unit_of_work

    password = _password(args, f"password for {args.username}: ")
    engine = _engine(args)
    try:
        with unit_of_work(session_factory(engine)) as s:
            user = create_user(s, username=args.username, display_name=args.name,
                               role=args.role, password=password, actor=SYSTEM)
            uid = user.id
        sys.stdout.write(f"user {args.username} added (id {uid}, role {args.role})\n")
    finally:
        engine.dispose()
    return 0


def cmd_user_disable(args: argparse.Namespace) -> int:
    from medassist.audit import SYSTEM
    from medassist.auth import disable_user
    from medassist.storage import session_factory, unit_of_work

    engine = _engine(args)
    try:
        with unit_of_work(session_factory(engine)) as s:
            disable_user(s, args.username, SYSTEM)
        sys.stdout.write(f"user {args.username} disabled\n")
    finally:
        engine.dispose()
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Exit 0 when the chain is intact, 1 naming the first broken event."""
    from medassist import audit
    from medassist.audit import SYSTEM, AuditAction, ObjectType
    from medassist.storage import session_factory, unit_of_work

    engine = _engine(args)
    try:
        factory = session_factory(engine)
        with factory() as s:
            res = audit.verify(s, chain=args.chain)
        if res.first_broken is not None:
            sys.stdout.write(res.first_broken.describe() + "\n")
            return 1
        with unit_of_work(factory) as s:
            audit.record(s, AuditAction.AUDIT_VERIFY, SYSTEM, ObjectType.AUDIT_LOG, args.chain,
                         detail=f"intact events={res.checked}")
        sys.stdout.write(f"audit chain {res.chain!r} intact: {res.checked} events, head "
                         f"{res.head_hash}\n")
        return 0
    finally:
        engine.dispose()


def cmd_audit_export(args: argparse.Namespace) -> int:
    from medassist import audit
    from medassist.audit import SYSTEM, AuditAction, ObjectType
    from medassist.audit.export import render
    from medassist.storage import session_factory, unit_of_work

    engine = _engine(args)
    try:
        with unit_of_work(session_factory(engine)) as s:
            events = audit.events_since(s, args.since, chain=args.chain)
            text = render(events, args.format)
            audit.record(s, AuditAction.AUDIT_EXPORT, SYSTEM, ObjectType.AUDIT_LOG, args.chain,
                         detail=f"format={args.format} since={args.since or '-'} "
                                f"events={len(events)}")
    finally:
        engine.dispose()
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from medassist.auth import actor_of, authenticate
    from medassist.export import export_report
    from medassist.storage import session_factory, unit_of_work

    password = _password(args, f"password for {args.user}: ")
    sources: list[str | Path] = []
    if args.dicom:
        src = Path(args.dicom)
        if src.is_file():
            # a study in a zip file: the diagnostic series' members (archive.zip!member)
            from dicom_io.errors import DicomIOError
            from medassist.errors import ExportError
            from medassist.pipeline import select_series, series_sources

            try:
                sources = list(series_sources(select_series(src)))
            except (DicomIOError, MedAssistError) as exc:
                raise ExportError(f"--dicom {src}: no CT series to cite in the SR "
                                  f"({type(exc).__name__}: {exc})") from exc
        else:
            sources = sorted(p for p in src.rglob("*") if p.is_file())
    engine = _engine(args)
    try:
        factory = session_factory(engine)
        with unit_of_work(factory) as s:
            actor = actor_of(authenticate(s, args.user, password))
        with unit_of_work(factory) as s:
            out = export_report(s, args.report_id, actor, args.format, args.out,
                                sources=sources)
    finally:
        engine.dispose()
    sys.stdout.write(f"report {args.report_id} exported as {args.format} to {out}\n")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``db``, ``user``, ``audit`` and ``export`` on the main sub-parsers."""

    def db_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", help="database URL (default: $MEDASSIST_DB_URL, else SQLite in "
                                    "the data directory)")

    db = sub.add_parser("db", help="database administration")
    dbs = db.add_subparsers(dest="db_command", required=True)
    p = dbs.add_parser("upgrade", help="migrate the database to the current schema")
    db_opt(p)
    p.add_argument("--app-role", help="PostgreSQL: role the application connects as (gets no "
                                      "UPDATE/DELETE/TRUNCATE on audit_events)")
    p.set_defaults(func=cmd_db_upgrade)

    user = sub.add_parser("user", help="user administration")
    us = user.add_subparsers(dest="user_command", required=True)
    p = us.add_parser("add", help="add a user (asks for the password)")
    p.add_argument("username")
    p.add_argument("--name", required=True, help="display name printed on signatures")
    p.add_argument("--role", required=True, choices=["clinician", "admin", "auditor"])
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    db_opt(p)
    p.set_defaults(func=cmd_user_add)
    p = us.add_parser("disable", help="disable a user (users are never deleted)")
    p.add_argument("username")
    db_opt(p)
    p.set_defaults(func=cmd_user_disable)

    au = sub.add_parser("audit", help="audit trail")
    aus = au.add_subparsers(dest="audit_command", required=True)
    p = aus.add_parser("verify", help="verify the hash chain (exit 1 names the first broken "
                                      "event)")
    db_opt(p)
    p.add_argument("--chain", default=DEFAULT_CHAIN, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_audit_verify)
    p = aus.add_parser("export", help="export audit events")
    p.add_argument("--since", help="ISO 8601 UTC date or time (e.g. 2026-01-31)")
    p.add_argument("--format", choices=["json", "atna-xml"], default="json")
    p.add_argument("--out", help="output file (default: standard output)")
    p.add_argument("--chain", default=DEFAULT_CHAIN, help=argparse.SUPPRESS)
    db_opt(p)
    p.set_defaults(func=cmd_audit_export)

    p = sub.add_parser("export", help="export a stored report")
    p.add_argument("report_id", type=int)
    p.add_argument("--format", required=True, choices=["sr", "fhir", "pdf", "txt"])
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--user", required=True, help="clinician user name (asks for the password)")
    p.add_argument("--password-stdin", action="store_true")
    p.add_argument("--dicom", help="folder of the source CT series, or the study's zip file "
                                   "(required for sr)")
    db_opt(p)
    p.set_defaults(func=cmd_export)


def run(argv: list[str]) -> int:
    """Parse and run one admin command (for tests and scripts); errors as exit codes."""
    parser = argparse.ArgumentParser(prog="medassist")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except MedAssistError as exc:
        sys.stderr.write(f"medassist: error: {exc}\n")
        return exc.exit_code
