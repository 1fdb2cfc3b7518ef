"""The ingest queue under concurrent claimers, on both backends (PostgreSQL: FOR UPDATE SKIP
LOCKED; SQLite: BEGIN IMMEDIATE): 8 workers drain 40 studies, each claimed exactly once, and
the same study enqueued concurrently from several sources gives one row."""

from __future__ import annotations

import threading
from collections import Counter

from pydicom.uid import generate_uid
from sqlalchemy import func, select

from medassist.pacs import queue
from medassist.pacs.models import IngestItem
from medassist.storage.engine import unit_of_work
from tests.core.conftest import Db

WORKERS = 8
STUDIES = 40


def _run(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)


def test_concurrent_claims_hand_out_each_study_once(db: Db) -> None:
    uids = [generate_uid() for _ in range(STUDIES)]
    with unit_of_work(db.factory) as s:
        for u in uids:
            queue.enqueue(s, u, source="batch")
    claimed: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(WORKERS)

    def worker(name: str) -> None:
        try:
            start.wait()
            while True:
                with unit_of_work(db.factory) as s:
                    c = queue.claim(s, worker=name)
                if c is None:
                    return
                with lock:
                    claimed.append((name, c.study_uid))
                with unit_of_work(db.factory) as s:
                    queue.finish(s, c, result={"by": name})
        except BaseException as exc:  # reported below, with the worker's name
            errors.append(exc)

    _run([threading.Thread(target=worker, args=(f"w{i}",)) for i in range(WORKERS)])
    assert not errors, errors
    per_study = Counter(u for _, u in claimed)
    assert sorted(per_study) == sorted(uids) and set(per_study.values()) == {1}
    assert len({w for w, _ in claimed}) > 1  # the work was actually shared
    with unit_of_work(db.factory) as s:
        assert queue.counts(s).get("done") == STUDIES
        assert all(r.attempts == 1 for r in s.scalars(select(IngestItem)))


def test_concurrent_enqueue_of_one_study_gives_one_row(db: Db) -> None:
    uid = generate_uid()
    created: list[bool] = []
    errors: list[BaseException] = []
    start = threading.Barrier(WORKERS)

    def worker(source: str) -> None:
        try:
            start.wait()
            with unit_of_work(db.factory) as s:
                created.append(queue.enqueue(s, uid, source=source)[1])
        except BaseException as exc:
            errors.append(exc)

    _run([threading.Thread(target=worker, args=(("watch", "listen", "batch")[i % 3],))
          for i in range(WORKERS)])
    assert not errors, errors
    assert created.count(True) == 1 and len(created) == WORKERS
    with unit_of_work(db.factory) as s:
        assert s.scalar(select(func.count()).select_from(IngestItem)) == 1
