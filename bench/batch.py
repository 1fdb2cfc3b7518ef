"""In-process batch throughput (issue 5): ``medassist batch`` in studies/minute with
``--workers 1`` vs ``--workers 2`` on generated studies, side by side in one invocation.

    .venv/bin/python bench/batch.py [--studies 16] [--checkpoint models/demo] [--json FILE]

Studies: ``configs/synth/small.yaml``, seed 11 (as bench/scale.py).  Each run drafts every
study into a fresh SQLite database; wall time from the start of ``run_batch`` to its summary
(each worker's model load included: once per worker process).  The ratio workers 2 / workers 1
is the figure to compare across machines; the absolute rates depend on the CPUs free.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def generate(out: Path, n: int) -> Path:
    from medassist.synth.case import make_case
    from medassist.synth.config import load_config
    from medassist.synth.findings import load_vocabulary
    from medassist.synth.writer import write_case

    cfg = load_config(ROOT / "configs/synth/small.yaml")
    vocab = load_vocabulary(cfg.findings.vocabulary_path())
    for i in range(n):
        write_case(make_case(cfg, vocab, 11, i, "test"), cfg, out / f"case_{i:05d}")
    return out


def run(studies: Path, checkpoint: Path, db: Path, workers: int) -> dict[str, Any]:
    from medassist.batch_cli import run_batch

    t = time.perf_counter()
    s = run_batch(studies, db=f"sqlite:///{db}", checkpoint=str(checkpoint), workers=workers,
                  err=io.StringIO(), out=io.StringIO())
    wall = time.perf_counter() - t
    return {"workers": workers, "done": s["done"], "failed": s["failed"], "wall_s": wall,
            "studies_per_min": 60 * s["done"] / wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=16)
    ap.add_argument("--checkpoint", default=str(ROOT / "models/demo"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    ck = Path(args.checkpoint)
    from multimodal.checkpoint import WEIGHTS, sha256_file

    ck_sha = sha256_file(ck / WEIGHTS)
    out: dict[str, Any] = {"studies": args.studies, "checkpoint": str(ck),
                           "checkpoint_sha256": ck_sha,
                           "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="medassist-bench-batch-") as tmp:
        studies = generate(Path(tmp) / "studies", args.studies)
        for w in (1, 2):
            out[f"workers_{w}"] = run(studies, ck, Path(tmp) / f"w{w}.db", w)
            print(json.dumps(out[f"workers_{w}"]), flush=True)
    out["ratio_2_vs_1"] = (out["workers_2"]["studies_per_min"]
                           / out["workers_1"]["studies_per_min"])
    print(f"workers 2 / workers 1: {out['ratio_2_vs_1']:.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
