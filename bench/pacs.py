"""PACS benchmark (issue 7).

1. Receive throughput, instances/s, of the hardened C-STORE listener (`medassist pacs
   listen`: allow-list, PDU cap checked before buffering, UID validation, temp file + rename,
   fsync) against plain pynetdicom storescp behaviour (an AE whose C-STORE handler writes each
   dataset to a file), side by side in the same process, rounds alternated. One association
   per round sends the same N uncompressed 512 x 512 instances.
2. StableStudy to stored draft for a 64-slice study through a real Orthanc (started here on
   loopback, as the tests do): C-STORE, wait until /changes shows StableStudy (Orthanc's
   StableAge, 1 s here), then one `watch` round: QIDO/WADO-RS pull, series selection, volume,
   model, draft stored. The report pipeline runs with --checkpoint (default: models/demo if
   its weights exist, else a tiny model trained here in seconds, which is then reported).

    .venv/bin/python bench/pacs.py [--instances 200] [--rounds 3] [--checkpoint DIR]
                                   [--skip-orthanc]

Series are built from the shared real A0001 slices (bench/_gen_series.py) in a temporary
folder; nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
from pynetdicom import AE, AllStoragePresentationContexts, StoragePresentationContexts, evt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._gen_series import make_tall_series  # noqa: E402
from medassist.pacs.scp import AllowEntry, Listener, ListenerConfig  # noqa: E402

SHARED = Path(os.environ.get("MEDASSIST_SHARED_DATA", REPO.parent / "shared" / "data"))
A0001 = SHARED / "ct" / "lung-pet-ct-dx" / "Lung_Dx-A0001"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _send(port: int, called: str, datasets: Sequence[pydicom.Dataset],
          calling: str = "BENCHSCU") -> float:
    ae = AE(ae_title=calling)
    ae.requested_contexts = StoragePresentationContexts
    t0 = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise RuntimeError("association refused")
    try:
        for ds in datasets:
            st = assoc.send_c_store(ds)
            if int(getattr(st, "Status", -1)) != 0:
                why = str(st) if st else "none: the association was aborted or timed out"
                raise RuntimeError(f"C-STORE to {called} failed (status {why})")
    finally:
        assoc.release()
    return time.perf_counter() - t0


class PlainSCP:
    """pynetdicom storescp behaviour: write each received dataset to <root>/<SOP UID>.dcm."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title="PLAIN")
        for cx in AllStoragePresentationContexts:
            syntax = cx.abstract_syntax
            if syntax is None:
                raise RuntimeError("a storage presentation context without an abstract syntax")
            ae.add_supported_context(syntax)
        self.port = _free_port()

        def handle(event: evt.Event) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            ds.save_as(root / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
            return 0x0000

        server = ae.start_server(("127.0.0.1", self.port), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, handle)])
        if server is None:  # block=False returns the running server
            raise RuntimeError("the plain SCP did not start")
        self.server = server

    def stop(self) -> None:
        self.server.shutdown()


def receive_bench(series: Sequence[pydicom.Dataset], rounds: int, tmp: Path) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"plain": [], "hardened": [], "hardened_no_fsync": []}
    received: list[str] = []
    for r in range(rounds):
        for name in runs:  # alternate, so drift hits all three alike
            root = tmp / f"{name}-{r}"
            if name == "plain":
                scp: Any = PlainSCP(root)
                port, called = scp.port, "PLAIN"
            else:
                port = _free_port()
                cfg = ListenerConfig(ae_title="MEDASSIST", port=port,
                                     allow=(AllowEntry.parse("BENCHSCU@127.0.0.1"),),
                                     storage_root=root, bind="127.0.0.1",
                                     fsync=(name == "hardened"))
                scp = Listener(cfg, lambda uid, folder: received.append(uid))
                called = "MEDASSIST"
            try:
                dt = _send(port, called, series)
            except RuntimeError as exc:
                raise RuntimeError(f"round {r}, {name}: {exc}") from exc
            finally:
                scp.stop()
            n = sum(1 for p in root.rglob("*.dcm") if p.is_file())
            if n != len(series):
                raise RuntimeError(f"{name}: {n} of {len(series)} files written")
            runs[name].append(len(series) / dt)
            shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"instances": len(series), "rounds": rounds,
            "instances_per_s_median": {k: round(v, 1) for k, v in med.items()},
            "hardened_vs_plain": round(med["hardened"] / med["plain"], 3),
            "hardened_no_fsync_vs_plain": round(med["hardened_no_fsync"] / med["plain"], 3),
            "studies_queued": len(received)}


def _tiny_checkpoint(out: Path) -> Path:
    from tests.tiny_model import train_tiny_checkpoint  # the tests' tiny model

    return train_tiny_checkpoint(out)


def stable_to_draft(files: list[Path], checkpoint: Path, tmp: Path) -> dict[str, Any]:
    import pytest

    from medassist.pacs import queue
    from medassist.pacs.dicomweb import PacsClient
    from medassist.pacs.watch import Watcher, start_from_now
    from medassist.pipeline import PipelineProcessor
    from medassist.storage import make_engine, session_factory, upgrade
    from tests.pacs.conftest import OrthancServer

    try:
        (tmp / "orthanc").mkdir()
        orthanc = OrthancServer(tmp / "orthanc")
    except pytest.fail.Exception as exc:  # Orthanc not installed
        return {"skipped": str(exc)}
    orthanc.start()
    try:
        engine = make_engine(f"sqlite:///{tmp / 'bench.db'}")
        upgrade(engine)
        factory = session_factory(engine)
        client = PacsClient(orthanc.url, timeout_s=60)
        start_from_now(factory, client)
        datasets = [pydicom.dcmread(p) for p in files]
        study = str(datasets[0].StudyInstanceUID)
        emr = tmp / "emr"
        emr.mkdir()
        (emr / f"{study}.txt").write_text("Indication: cough and weight loss.\n",
                                          encoding="utf-8")
        proc = PipelineProcessor(checkpoint, emr_dir=emr)
        proc.model()  # load the weights before timing (a running watcher has them loaded)
        watcher = Watcher(factory=factory, client=client, processor=proc,
                          backoff=queue.Backoff(base_s=0.05, cap_s=0.2))
        t0 = time.perf_counter()
        _send_orthanc(orthanc.dicom_port, datasets)
        t_sent = time.perf_counter()
        while True:  # wait for StableStudy in /changes
            page = client.changes(client.last_seq() - 50 if client.last_seq() > 50 else 0, 100)
            if any(c.change_type == "StableStudy" for c in page.changes):
                break
            if time.perf_counter() - t_sent > 120:
                raise RuntimeError("no StableStudy within 120 s")
            time.sleep(0.05)
        t_stable = time.perf_counter()
        outcomes = watcher.run_once()
        t_done = time.perf_counter()
        if [o.state for o in outcomes] != ["done"]:
            raise RuntimeError(f"watch outcome {outcomes}")
        return {"slices": len(files), "c_store_s": round(t_sent - t0, 2),
                "stable_wait_s": round(t_stable - t_sent, 2),
                "stable_to_stored_draft_s": round(t_done - t_stable, 2),
                "checkpoint": str(checkpoint)}
    finally:
        orthanc.stop()


def _send_orthanc(port: int, datasets: Sequence[pydicom.Dataset]) -> None:
    from tests.pacs.conftest import ORTHANC_AET, OUR_AET  # the AE Orthanc accepts stores from

    _send(port, ORTHANC_AET, datasets, calling=OUR_AET)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--skip-orthanc", action="store_true")
    args = ap.parse_args(argv)
    if not A0001.is_dir():
        print(f"shared data not found at {A0001} (set MEDASSIST_SHARED_DATA)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="medassist-bench-pacs-") as d:
        tmp = Path(d)
        files = make_tall_series(A0001, tmp / "series", n_slices=args.instances)
        series = [pydicom.dcmread(p) for p in files]
        out: dict[str, Any] = {"receive": receive_bench(series, args.rounds, tmp)}
        if not args.skip_orthanc:
            ck = Path(args.checkpoint) if args.checkpoint else REPO / "models" / "demo"
            if not (ck / "model.safetensors").is_file():
                ck = _tiny_checkpoint(tmp / "tiny-ck")
            study64 = make_tall_series(A0001, tmp / "s64", n_slices=64, spacing_mm=5.0)
            out["stable_to_draft"] = stable_to_draft(study64, ck, tmp)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
