"""Audit trail benchmark: append rate (events/s) and verify time for N events, on SQLite and
on a throwaway PostgreSQL 15 (started here on a free loopback port, as the tests do).

    .venv/bin/python bench/audit.py [--events 100000] [--single 2000] [--pg-url URL]

Append is measured two ways: one event per committed transaction (the application's pattern)
and in batches of 1,000 per transaction. Target: verify >= 50,000 events/s.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from medassist import audit
from medassist.audit import SYSTEM, AuditAction, EventSpec, ObjectType
from medassist.storage import make_engine, session_factory, upgrade

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    tmp = Path(tempfile.mkdtemp(prefix="medassist-bench-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp / "data"
    subprocess.run([*run_as, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U",
                    "bench", "--no-sync"], check=True, capture_output=True)
    # durable settings (fsync on): the figures are what a real server would do
    subprocess.run([*run_as, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(tmp / "log"),
                    "-w", "-o", f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="bench", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        yield f"postgresql+psycopg://bench@127.0.0.1:{port}/bench"
    finally:
        subprocess.run([*run_as, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                        "stop"], capture_output=True, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def _spec(i: int) -> EventSpec:
    return EventSpec(AuditAction.PHI_READ, SYSTEM, ObjectType.REPORT, str(i),
                     model_version="medassist-fusion:0.1.0",
                     input_hashes={"dicom_sha256": "d" * 64, "emr_sha256": "e" * 64},
                     after_hash="a" * 64)


def bench(url: str, n_events: int, n_single: int) -> dict[str, float]:
    engine = make_engine(url)
    upgrade(engine)
    factory = session_factory(engine)
    t = time.perf_counter()
    for i in range(n_single):
        with factory.begin() as s:
            audit.append(s, _spec(i))
    single = n_single / (time.perf_counter() - t)
    t = time.perf_counter()
    remaining = n_events - n_single
    while remaining > 0:
        k = min(1000, remaining)
        with factory.begin() as s:
            audit.append_many(s, [_spec(i) for i in range(k)])
        remaining -= k
    batched = (n_events - n_single) / (time.perf_counter() - t)
    t = time.perf_counter()
    with factory() as s:
        res = audit.verify(s)
    verify_s = time.perf_counter() - t
    engine.dispose()
    if not res.ok or res.checked != n_events:
        raise SystemExit(f"verify failed: {res}")
    return {"events": n_events, "append_single_tx_events_per_s": round(single, 1),
            "append_batched_events_per_s": round(batched, 1),
            "verify_seconds": round(verify_s, 3),
            "verify_events_per_s": round(n_events / verify_s, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--single", type=int, default=2000,
                    help="events appended one per transaction (the rest in batches)")
    ap.add_argument("--pg-url", help="use this PostgreSQL database instead of a throwaway one")
    args = ap.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        results["sqlite"] = bench(f"sqlite:///{d}/bench.db", args.events, args.single)
    print(json.dumps({"sqlite": results["sqlite"]}), flush=True)
    if args.pg_url:
        results["postgresql"] = bench(args.pg_url, args.events, args.single)
    else:
        with throwaway_postgres() as url:
            results["postgresql"] = bench(url, args.events, args.single)
    print(json.dumps({"postgresql": results["postgresql"]}), flush=True)
    ok = all(r["verify_events_per_s"] >= 50_000 for r in results.values())
    print(f"verify target (>= 50000 events/s): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
