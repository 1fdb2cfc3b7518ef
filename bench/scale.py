"""Scale-out benchmark (issue 8): batch throughput in studies/minute, in-process vs Ray with 1
and 2 actors, on this machine; Ray's fixed start-up overhead reported separately; the
decode / inference split; and a projection to N GPU workers (a projection, not a measurement).

    .venv/bin/python bench/scale.py [--studies 24] [--checkpoint models/demo]
        [--batch-size 4] [--cpus 2] [--json FILE]

Every engine runs on the same generated studies (``configs/synth/small.yaml``, seed 11) into
a fresh SQLite database, side by side in one invocation, so the ratios are comparable even
when the machine is shared.  Measured:

* ``inprocess``: ``medassist batch`` with one worker (the default engine), wall time from the
  first claim to the summary (the model load included);
* ``ray-1`` / ``ray-2``: ``--engine ray --actors 1|2`` on a private local Ray with ``--cpus``
  CPUs: ``startup_s`` (``ray.init``) apart from ``process_s`` (actors started and the model
  loaded in them included) and studies/minute over ``process_s``; ``first_result_s`` (the
  actors started, the model loaded, the first batch decoded and drafted); and the per-actor
  rate while busy (studies / seconds the actors spent in infer + store, timed in the actor);
* the split, in this process: ``prepare_study`` (DICOM decode + resample + hashes) per study,
  and ``infer`` per study at batch 1 and at ``--batch-size``.

Projection to N GPU workers (printed under that name): each worker node runs one actor and
decodes with ``decode_cpus`` CPUs; the rate is ``N * min(actor rate, decode_cpus / decode s)``.
The actor rate is the measured busy 1-actor CPU rate unless ``--gpu-speedup`` says how much
faster a GPU runs ``infer`` (not measured here: this machine has no GPU).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.batch import generate  # noqa: E402  (the same generated studies as bench/batch.py)


def split(studies: Path, checkpoint: Path, batch: int, n: int) -> dict[str, float]:
    """Seconds per study: decode (prepare_study), infer at batch 1 and at ``batch``."""
    from medassist.drafting import infer, load_model
    from medassist.scale.stages import prepare_study

    lm = load_model(checkpoint)
    dirs = sorted(p / "dicom" for p in studies.iterdir())[:n]
    t = time.perf_counter()
    prepared = [prepare_study(d, None, lm.cfg, lm.checkpoint_sha256) for d in dirs]
    decode = (time.perf_counter() - t) / len(prepared)
    infer(lm, [prepared[0].prepared])  # warm-up
    t = time.perf_counter()
    for p in prepared[:batch]:
        infer(lm, [p.prepared])
    one = (time.perf_counter() - t) / min(batch, len(prepared))
    t = time.perf_counter()
    infer(lm, [p.prepared for p in prepared[:batch]])
    many = (time.perf_counter() - t) / min(batch, len(prepared))
    return {"decode_s": decode, "infer_s_batch1": one, f"infer_s_batch{batch}": many}


def run_engine(studies: Path, checkpoint: Path, db: Path, engine: str,
               ray_cfg: Any = None) -> dict[str, Any]:
    from medassist.batch_cli import run_batch

    t = time.perf_counter()
    s = run_batch(studies, db=f"sqlite:///{db}", checkpoint=str(checkpoint), engine=engine,
                  ray_config=ray_cfg, err=io.StringIO(), out=io.StringIO())
    wall = time.perf_counter() - t
    res: dict[str, Any] = {"done": s["done"], "failed": s["failed"], "wall_s": wall}
    if engine == "ray":
        r = s["ray"]
        res["startup_s"] = r["startup_s"]  # ray.init
        res["process_s"] = r["process_s"]
        res["first_result_s"] = r["first_row_s"]  # actors up, model loaded, first batch
        res["studies_per_min"] = 60 * s["done"] / r["process_s"]
        res["studies_per_min_incl_startup"] = 60 * s["done"] / wall
        # what one actor drafts per minute while it has work (infer + store, timed in it)
        res["actor_busy_s"] = r["actor_busy_s"]
        # (actor_busy_s is summed over the actors: this is the rate of one actor)
        res["per_actor_studies_per_min"] = (60 * s["done"] / r["actor_busy_s"]
                                            if r["actor_busy_s"] else None)
    else:
        res["studies_per_min"] = 60 * s["done"] / wall
    return res


def projection(actor_rate_min: float, decode_s: float, decode_cpus: int, speedup: float,
               workers: tuple[int, ...] = (1, 2, 4, 8, 16, 32)) -> list[dict[str, Any]]:
    """studies/min for N worker nodes (one GPU actor + ``decode_cpus`` decode CPUs each)."""
    actor = actor_rate_min * speedup
    decode = 60.0 * decode_cpus / decode_s
    return [{"workers": n, "studies_per_min": n * min(actor, decode),
             "bound": "inference" if actor < decode else "decode"} for n in workers]


def main(argv: list[str] | None = None) -> int:
    from medassist.scale.ray_engine import RayConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=24)
    ap.add_argument("--checkpoint", default=str(ROOT / "models/demo"))
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    ap.add_argument("--decode-cpus", type=int, default=8,
                    help="projection: decode CPUs per GPU worker node")
    ap.add_argument("--gpu-speedup", type=float, default=1.0,
                    help="projection: how much faster infer runs on the GPU than here "
                         "(not measured; 1 = as fast as this CPU actor)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    ck = Path(args.checkpoint)
    from multimodal.checkpoint import WEIGHTS, sha256_file

    ck_sha = sha256_file(ck / WEIGHTS)
    out: dict[str, Any] = {"studies": args.studies, "checkpoint": str(ck),
                           "checkpoint_sha256": ck_sha,
                           "batch_size": args.batch_size, "ray_cpus": args.cpus}
    with tempfile.TemporaryDirectory(prefix="medassist-bench-scale-") as tmp:
        t = time.perf_counter()
        studies = generate(Path(tmp) / "studies", args.studies)
        out["generate_s"] = time.perf_counter() - t
        out["split"] = split(studies, ck, args.batch_size, args.studies)
        print("split (s/study):", json.dumps(out["split"]), flush=True)
        out["inprocess"] = run_engine(studies, ck, Path(tmp) / "a.db", "inprocess")
        print("inprocess:", json.dumps(out["inprocess"]), flush=True)
        per_actor = max(0.5, (args.cpus - 1) / 2)  # leave one CPU's worth to decode
        for n in (1, 2):
            cfg = RayConfig(actors=n, batch_size=args.batch_size, num_cpus=args.cpus,
                            cpus_per_actor=min(1.0, per_actor),
                            cpus_per_task=0.5 if args.cpus <= 2 else 1.0)
            key = f"ray-{n}"
            out[key] = run_engine(studies, ck, Path(tmp) / f"r{n}.db", "ray", cfg)
            out[key]["ratio_vs_inprocess"] = (out[key]["studies_per_min"]
                                              / out["inprocess"]["studies_per_min"])
            print(f"{key}:", json.dumps(out[key]), flush=True)
    # a long run is dominated by the actors' busy rate (their start is paid once)
    actor_rate = out["ray-1"]["per_actor_studies_per_min"] or out["ray-1"]["studies_per_min"]
    out["projection"] = {
        "note": "PROJECTION, not measured: N worker nodes, one actor each, at the measured "
                "busy 1-actor rate x gpu_speedup, capped by decode_cpus / decode_s per "
                "node; ignores database write contention and network transfer",
        "actor_rate_per_min": actor_rate,
        "gpu_speedup": args.gpu_speedup, "decode_cpus": args.decode_cpus,
        "rows": projection(actor_rate, out["split"]["decode_s"], args.decode_cpus,
                           args.gpu_speedup)}
    print("projection:", json.dumps(out["projection"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
