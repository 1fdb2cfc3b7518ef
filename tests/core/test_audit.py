"""Audit chain: append, verify, tamper detection (edit/delete/insert/reorder/truncate),
PostgreSQL privileges and trigger, concurrent writers, 10,000-event chain."""

from __future__ import annotations

import threading

import psycopg
import pytest
from sqlalchemy import func, select, text

from medassist import audit
from medassist.audit import SYSTEM, AuditAction, EventSpec, ObjectType, Outcome
from medassist.audit.export import render
from medassist.storage import AuditEvent, make_engine, session_factory

from .conftest import Db


def _spec(i: int) -> EventSpec:
    return EventSpec(AuditAction.PHI_READ, SYSTEM, ObjectType.REPORT, str(i),
                     input_hashes={"dicom_sha256": "a" * 64})


def _fill(db: Db, n: int) -> None:
    with db.factory.begin() as s:
        audit.append_many(s, [_spec(i) for i in range(n)])


def _raw(db: Db, *sql: str) -> None:
    """Tamper as a privileged attacker: the owner, with the protective triggers removed."""
    admin = db.admin_engine()
    with admin.begin() as conn:
        if db.backend == "postgresql":
            conn.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
            conn.execute(text("ALTER TABLE audit_chain_heads DISABLE TRIGGER USER"))
        else:
            for t in ("audit_events_no_update", "audit_events_no_delete",
                      "audit_chain_heads_forward", "audit_chain_heads_no_delete"):
                conn.execute(text(f"DROP TRIGGER IF EXISTS {t}"))
        for stmt in sql:
            conn.execute(text(stmt))
    if admin is not db.engine:
        admin.dispose()


def _verify(db: Db) -> audit.VerifyResult:
    with db.factory() as s:
        return audit.verify(s)


def test_append_and_verify(db: Db) -> None:
    assert _verify(db).ok and _verify(db).checked == 0
    with db.factory.begin() as s:
        r1 = audit.append(s, _spec(1))
        r2 = audit.record(s, AuditAction.LOGIN, SYSTEM, ObjectType.USER, "alice",
                          outcome=Outcome.MINOR_FAILURE)
    assert (r1.seq, r2.seq) == (1, 2)
    assert r2.values["prev_hash"] == r1.row_hash
    res = _verify(db)
    assert res.ok and res.checked == 2 and res.head_hash == r2.row_hash


@pytest.mark.parametrize("kind", ["edit", "delete", "insert", "reorder", "truncate",
                                  "truncate_all", "edit_hash"])
def test_tamper_detected(db: Db, kind: str) -> None:
    _fill(db, 10)
    assert _verify(db).ok
    with db.factory() as s:
        ids = dict(s.execute(select(AuditEvent.seq, AuditEvent.id)).all())
    cols = ("chain, seq, event_time, event_id, event_id_meaning, event_type, action, outcome, "
            "user_id, username, role, object_type, object_id, model_version, input_hashes, "
            "before_hash, after_hash, detail, prev_hash, row_hash")
    expected_seq = {"edit": 4, "delete": 4, "insert": 4, "reorder": 4, "truncate": 8,
                    "truncate_all": 1, "edit_hash": 4}[kind]
    if kind == "edit":
        _raw(db, "UPDATE audit_events SET object_id = '999' WHERE seq = 4")
    elif kind == "edit_hash":
        _raw(db, "UPDATE audit_events SET row_hash = prev_hash WHERE seq = 4")
    elif kind == "delete":
        _raw(db, "DELETE FROM audit_events WHERE seq = 4")
    elif kind == "insert":
        # shift seq 4.. up by one and insert a forged event at seq 4 (a real event's links)
        forged = cols.replace("seq,", "4,", 1).replace("object_id,", "'forged',", 1)
        _raw(db, "UPDATE audit_events SET seq = seq + 1000 WHERE seq >= 4",
             "UPDATE audit_events SET seq = seq - 999 WHERE seq >= 1000",
             f"INSERT INTO audit_events ({cols}) SELECT {forged} "
             "FROM audit_events WHERE seq = 5")
    elif kind == "reorder":
        _raw(db, "UPDATE audit_events SET seq = 1000 WHERE seq = 4",
             "UPDATE audit_events SET seq = 4 WHERE seq = 5",
             "UPDATE audit_events SET seq = 5 WHERE seq = 1000")
    elif kind == "truncate":
        _raw(db, "DELETE FROM audit_events WHERE seq >= 8")
    elif kind == "truncate_all":
        _raw(db, "DELETE FROM audit_events")
    res = _verify(db)
    assert not res.ok and res.first_broken is not None
    assert res.first_broken.seq == expected_seq, res.first_broken.describe()
    if kind in ("edit", "edit_hash"):
        assert res.first_broken.event_pk == ids[4]
        assert "edited" in res.first_broken.reason
    if kind.startswith("truncate"):
        assert "truncated" in res.first_broken.reason


def test_app_cannot_modify_audit_events(db: Db) -> None:
    """UPDATE/DELETE (and TRUNCATE on PostgreSQL) are refused for the application."""
    _fill(db, 3)
    stmts = ["UPDATE audit_events SET detail = 'x'", "DELETE FROM audit_events",
             "UPDATE audit_chain_heads SET last_seq = 0", "DELETE FROM audit_chain_heads"]
    if db.backend == "postgresql":
        stmts.append("TRUNCATE audit_events")
    for stmt in stmts:
        with pytest.raises(Exception, match=r"(?i)permission denied|append-only|forward"), \
                db.engine.begin() as conn:
            conn.execute(text(stmt))
    assert _verify(db).ok and _verify(db).checked == 3


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_postgres_grants_and_trigger(db: Db) -> None:
    _fill(db, 2)
    url = db.admin_url.replace("postgresql+psycopg://", "postgresql://")
    app_url = db.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(app_url) as conn:
        for priv in ("UPDATE", "DELETE", "TRUNCATE"):
            row = conn.execute("SELECT has_table_privilege(current_user, 'audit_events', %s)",
                               (priv,)).fetchone()
            assert row is not None and row[0] is False, priv
        row = conn.execute("SELECT has_table_privilege(current_user, 'audit_events', "
                           "'INSERT')").fetchone()
        assert row is not None and row[0] is True
        for stmt in ("UPDATE audit_events SET detail='x'", "DELETE FROM audit_events",
                     "TRUNCATE audit_events"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(stmt)
            conn.rollback()
    # even the owner (a superuser here) is stopped by the trigger
    with psycopg.connect(url) as conn:
        for stmt in ("UPDATE audit_events SET detail='x'", "DELETE FROM audit_events",
                     "TRUNCATE audit_events"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(stmt)
            conn.rollback()


def test_concurrent_writers_never_fork(db: Db) -> None:
    """8 threads, each with its own connection, append 25 events in small transactions."""
    n_threads, per = 8, 25
    engine = make_engine(db.url, pool_size=n_threads)
    factory = session_factory(engine)
    barrier = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            barrier.wait()
            for i in range(per):
                with factory.begin() as s:
                    audit.append(s, EventSpec(AuditAction.PHI_READ, SYSTEM, ObjectType.REPORT,
                                              f"{k}-{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    engine.dispose()
    assert not errors, errors
    res = _verify(db)
    assert res.ok, res.first_broken
    assert res.checked == n_threads * per
    with db.factory() as s:
        assert s.scalar(select(func.count(func.distinct(AuditEvent.prev_hash)))) == \
            n_threads * per


def test_chain_of_10000_events(db: Db) -> None:
    with db.factory.begin() as s:
        for start in range(0, 10_000, 1000):
            audit.append_many(s, [_spec(i) for i in range(start, start + 1000)])
    res = _verify(db)
    assert res.ok and res.checked == 10_000
    _raw(db, "UPDATE audit_events SET outcome = 4 WHERE seq = 9876")
    res = _verify(db)
    assert res.first_broken is not None and res.first_broken.seq == 9876


def test_export_formats(db: Db) -> None:
    import json
    import xml.etree.ElementTree as ET

    with db.factory.begin() as s:
        audit.record(s, AuditAction.EXPORT, SYSTEM, ObjectType.STUDY, "1.2.840.1")
        audit.record(s, AuditAction.LOGIN, SYSTEM, ObjectType.USER, "bob",
                     outcome=Outcome.MINOR_FAILURE)
    with db.factory() as s:
        events = audit.events_since(s, "2000-01-01")
        assert audit.events_since(s, "2999-01-01") == []
    data = json.loads(render(events, "json"))
    assert [e["seq"] for e in data] == [1, 2]
    root = ET.fromstring(render(events, "atna-xml"))
    msgs = root.findall("AuditMessage")
    assert len(msgs) == 2
    eid = msgs[0].find("EventIdentification/EventID")
    assert eid is not None and eid.get("csd-code") == "110106"
    ev = msgs[1].find("EventIdentification")
    assert ev is not None and ev.get("EventOutcomeIndicator") == "4"
    obj = msgs[0].find("ParticipantObjectIdentification")
    assert obj is not None and obj.get("ParticipantObjectID") == "1.2.840.1"


def test_fast_canonical_encoder_matches_json_dumps() -> None:
    import json

    from medassist.audit.chain import _canonical_encoder, row_hash

    enc = _canonical_encoder()
    values = ["main", 7, "2026-01-01T00:00:00.000001Z", None, 'q"uote\\back\nline', "é漢字\u2028",
              0, -12, "\x00ctl"]
    assert enc(values) == json.dumps(values, separators=(",", ":"), ensure_ascii=False,
                                     allow_nan=False)
    assert row_hash(values) == __import__("hashlib").sha256(enc(values).encode()).hexdigest()
