"""The hardened C-STORE SCP (``python -m medassist.pacs listen``, a separate process so its
memory can be measured): stores and queues; abuse cases refused."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID
from pynetdicom import AE, StoragePresentationContexts
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from medassist.pacs.models import IngestItem
from medassist.pacs.watch import process_one, volume_summary_processor
from medassist.storage.engine import make_engine, session_factory, unit_of_work
from tests.pacs.conftest import REPO, case_dirs, free_port, read_series
from tests.pacs.helpers import restamp

CAP = 4
MEMORY_CAP = 256 << 20  # the listener process's peak RSS must stay below this


class ListenerProc:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.storage = root / "store"
        self.db = f"sqlite:///{root / 'listen.db'}"
        self.port = free_port()
        self.log = root / "listener.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "medassist.pacs", "listen", "--aet", "MEDASSIST",
             "--port", str(self.port), "--allow", "MODALITY@127.0.0.1", "--storage",
             str(self.storage), "--db", self.db, "--max-associations", str(CAP),
             "--max-pdu", "65536"],
            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while "listening" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "listener did not start"
            time.sleep(0.1)

    def peak_rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def factory(self) -> sessionmaker[Session]:
        return session_factory(make_engine(self.db))


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ListenerProc]:
    lp = ListenerProc(tmp_path_factory.mktemp("listener"))
    try:
        yield lp
    finally:
        lp.proc.terminate()
        try:
            lp.proc.wait(15)
        except subprocess.TimeoutExpired:
            lp.proc.kill()


def _ae(aet: str = "MODALITY") -> AE:
    ae = AE(ae_title=aet)
    ae.requested_contexts = StoragePresentationContexts
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    return ae


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_store_writes_atomically_and_queues_the_study(listener: ListenerProc,
                                                      synth_case: Path) -> None:
    ct = restamp(read_series(case_dirs(synth_case)[0]))
    uid = ct[0].StudyInstanceUID
    assoc = _ae().associate("127.0.0.1", listener.port, ae_title="MEDASSIST")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in ct]
    assoc.release()
    assert set(statuses) == {0}
    folder = listener.storage / uid / ct[0].SeriesInstanceUID
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"{d.SOPInstanceUID}.dcm" for d in ct)  # no temp files left
    assert pydicom.dcmread(folder / names[0]).StudyInstanceUID == uid

    factory = listener.factory()
    deadline = time.monotonic() + 10
    while True:
        with unit_of_work(factory) as s:
            row = s.scalars(select(IngestItem).where(IngestItem.study_uid == uid)).one_or_none()
            if row is not None:
                assert (row.state, row.source, row.location) == (
                    "queued", "listen", str(listener.storage / uid))
                break
        assert time.monotonic() < deadline, "study not queued after release"
        time.sleep(0.1)
    # the shared queue: the same worker code processes a listened study from its folder
    out = process_one(factory, None, volume_summary_processor, sources=("listen",))
    assert out is not None and (out.study_uid, out.state) == (uid, "done")


def test_unknown_calling_ae_is_rejected(listener: ListenerProc) -> None:
    assoc = _ae("INTRUDER").associate("127.0.0.1", listener.port, ae_title="MEDASSIST")
    assert assoc.is_rejected and not assoc.is_established
    # and the right AE title must be called
    assoc = _ae().associate("127.0.0.1", listener.port, ae_title="SOMEONE")
    assert assoc.is_rejected


def test_path_traversal_uid_is_refused(listener: ListenerProc, synth_case: Path) -> None:
    from pynetdicom import _config

    before = _files(listener.root)
    ds = restamp(read_series(case_dirs(synth_case)[0])[:1])[0]
    ds.SOPInstanceUID = "../../x"
    ds.file_meta.MediaStorageSOPInstanceUID = UID("../../x")
    old = _config.ENFORCE_UID_CONFORMANCE
    _config.ENFORCE_UID_CONFORMANCE = False
    try:
        assoc = _ae().associate("127.0.0.1", listener.port, ae_title="MEDASSIST")
        assert assoc.is_established
        status = assoc.send_c_store(ds)
        assoc.release()
    finally:
        _config.ENFORCE_UID_CONFORMANCE = old
    assert int(status.Status) == 0xC000
    after = _files(listener.root)
    new = {p for p in after - before if p.name != "listener.log" and "-wal" not in p.name
           and "-shm" not in p.name}
    assert new == set()
    assert not (listener.root.parent / "x").exists() and not (listener.storage / "x").exists()


def test_declared_huge_pdu_is_aborted_before_buffering(listener: ListenerProc) -> None:
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as s:
        s.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0))
        junk = b"\0" * (1 << 20)
        sent = 0
        s.settimeout(2)
        try:
            for _ in range(128):  # try to push 128 MiB
                s.sendall(junk)
                sent += len(junk)
        except OSError:
            pass
        try:
            reply = s.recv(10)
        except OSError:
            reply = b""
    # the peer got an A-ABORT (0x07) or a closed connection, and could not push the 128 MiB
    assert reply[:1] in (b"\x07", b""), reply
    assert sent < 64 << 20, f"listener accepted {sent} bytes of a bogus PDU"
    assert listener.peak_rss() < MEMORY_CAP
    assert "declared PDU length 4294967280" in listener.log.read_text()


def test_associations_beyond_the_cap_are_refused_while_the_others_finish(
        listener: ListenerProc, synth_case: Path) -> None:
    ct = restamp(read_series(case_dirs(synth_case)[1])[:CAP * 2])
    deadline = time.monotonic() + 15  # earlier tests' associations may still be closing
    while True:
        probe = _ae().associate("127.0.0.1", listener.port, ae_title="MEDASSIST")
        if probe.is_established:
            probe.release()
            time.sleep(1.0)  # let the probe's association thread end
            break
        assert time.monotonic() < deadline, "listener never accepted an association"
        time.sleep(0.5)
    held = [_ae().associate("127.0.0.1", listener.port, ae_title="MEDASSIST")
            for _ in range(CAP)]
    assert all(a.is_established for a in held)
    results: list[bool] = []
    lock = threading.Lock()

    def extra() -> None:
        a = _ae().associate("127.0.0.1", listener.port, ae_title="MEDASSIST")
        with lock:
            results.append(a.is_established)
        if a.is_established:
            a.release()

    threads = [threading.Thread(target=extra) for _ in range(11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [False] * 11
    for i, a in enumerate(held):
        assert int(a.send_c_store(ct[2 * i]).Status) == 0
        assert int(a.send_c_store(ct[2 * i + 1]).Status) == 0
        a.release()
    folder = listener.storage / ct[0].StudyInstanceUID / ct[0].SeriesInstanceUID
    assert len(list(folder.iterdir())) == CAP * 2
