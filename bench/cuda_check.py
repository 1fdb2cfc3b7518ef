"""GPU checks of issue 4 ("bf16 autocast on CUDA only", "training throughput on CUDA when a
GPU is lent"); JSON on stdout.  Run where CUDA is present (CI has none):

    python bench/cuda_check.py [--out DIR] [--cases 128] [--gpu-steps 100] [--cpu-steps 10]
                               [--studies 8] [--only PART]

1. ``throughput``: bench/model.py's train_throughput with ``--cuda`` (CPU fp32 at batch 8
   is the baseline, in the same process; the GPU in fp32 and bf16 autocast, batch 8 and 64).
2. ``tiny_resume``: ``medassist train --device cuda`` (bf16 autocast) on
   configs/train/tiny.yaml, 20 steps straight and 10 + ``--resume`` 10; the largest
   parameter difference between the two checkpoints (CUDA atomics need not be bitwise).
3. ``demo_real``: the shipped demo config on ``--cases`` generated cases (dense targets,
   600-token notes, collation and host-to-device copies included): ``--gpu-steps`` steps on
   CUDA and ``--cpu-steps`` on the CPU (2 threads, like the reference machine), cases/s of
   each, and the losses of both after ``--cpu-steps`` steps (same seed and batches: CUDA
   bf16 autocast vs CPU fp32).
4. ``inference``: drafts of ``--studies`` generated DICOM studies in one batch with the
   shipped checkpoint, CPU (2 threads) vs CUDA: time, and how many finding decisions, Findings
   / Impression texts and modality weights agree (``medassist report --device cuda``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _bench_model() -> Any:
    spec = importlib.util.spec_from_file_location("bench_model", ROOT / "bench/model.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("cannot load bench/model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _train(config: Path, out: Path, device: str, **over: Any) -> dict[str, Any]:
    from medassist.model_cli import load_train_config, train

    tc = load_train_config(config)
    stop = over.pop("stop_after", None)
    resume = over.pop("resume", False)
    tc = dataclasses.replace(tc, out=str(out), **over)
    t0 = time.perf_counter()
    res = train(tc, device=device, resume=resume, stop_after=stop, log=None)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    return res


def _max_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    if set(x) != set(y):
        raise RuntimeError(f"{a} and {b} hold different tensors")
    return max(float((x[k].float() - y[k].float()).abs().max()) for k in x if x[k].numel())


def tiny_resume(out: Path) -> dict[str, Any]:
    cfg = ROOT / "configs/train/tiny.yaml"
    straight = _train(cfg, out / "tiny_straight", "cuda")
    part = _train(cfg, out / "tiny_resumed", "cuda", stop_after=10)
    rest = _train(cfg, out / "tiny_resumed", "cuda", resume=True)
    return {"straight_final_total": straight["final"]["total"],
            "stopped_at": part["final"]["step"],
            "resumed_final_total": rest["final"]["total"],
            "max_param_diff": _max_diff(out / "tiny_straight", out / "tiny_resumed"),
            "cases_per_s": straight["cases_per_s"]}


def demo_real(out: Path, cases: int, gpu_steps: int, cpu_steps: int) -> dict[str, Any]:
    cfg = ROOT / "configs/train/demo_stop15.yaml"
    common = {"train_cases": cases, "val_cases": 0, "cache_dir": ""}
    same = _train(cfg, out / "demo_gpu_short", "cuda", stop_after=cpu_steps, **common)
    gpu = _train(cfg, out / "demo_gpu", "cuda", stop_after=gpu_steps, **common)
    torch.set_num_threads(2)
    cpu = _train(cfg, out / "demo_cpu", "cpu", stop_after=cpu_steps, **common)
    return {"cases": cases, "batch": 8,
            "gpu": {"steps": gpu_steps, "cases_per_s": gpu["cases_per_s"],
                    "train_s": gpu["train_seconds"], "data_s": gpu["data_seconds"]},
            "cpu": {"steps": cpu_steps, "threads": 2, "cases_per_s": cpu["cases_per_s"],
                    "train_s": cpu["train_seconds"]},
            "gpu_x_cpu": round(gpu["cases_per_s"] / cpu["cases_per_s"], 1),
            "losses_at_cpu_steps": {"cuda_bf16": same["final"], "cpu_fp32": cpu["final"]},
            "gpu_final": gpu["final"]}


def inference(out: Path, n: int, checkpoint: Path) -> dict[str, Any]:
    """Drafts of ``n`` generated DICOM studies (with notes) in one batch: the shipped
    checkpoint on the CPU (2 threads) and on CUDA (fp32), decisions and text compared."""
    from medassist.drafting import infer, load_model, prepare
    from medassist.synth.case import make_case
    from medassist.synth.config import load_config
    from medassist.synth.findings import load_vocabulary
    from medassist.synth.writer import write_case

    scfg = load_config(ROOT / "configs/synth/small.yaml")
    vocab = load_vocabulary(scfg.findings.vocabulary_path())
    cases = []
    for i in range(n):
        d = out / "cases" / f"case_{i:05d}"
        write_case(make_case(scfg, vocab, 11, i, "test"), scfg, d)
        cases.append(d)
    res: dict[str, Any] = {"studies": n}
    drafts = {}
    for dev in ("cpu", "cuda"):
        lm = load_model(checkpoint, device=dev)
        preps = [prepare(c / "dicom", c / "emr.txt", lm.cfg) for c in cases]
        infer(lm, preps[:1])  # warm-up
        t0 = time.perf_counter()
        drafts[dev] = infer(lm, preps)
        res[f"{dev}_s"] = round(time.perf_counter() - t0, 3)
    a, b = drafts["cpu"], drafts["cuda"]
    pairs = [(f, g) for x, y in zip(a, b, strict=True)
             for f, g in zip(x["findings"], y["findings"], strict=True)]
    res.update(
        cuda_x_cpu=round(res["cpu_s"] / res["cuda_s"], 1),
        same_decisions=sum(f["present"] == g["present"] for f, g in pairs),
        decisions=len(pairs),
        max_probability_diff=max(abs(f["probability"] - g["probability"]) for f, g in pairs),
        same_text=sum(x["sections"] == y["sections"] for x, y in zip(a, b, strict=True)),
        same_weights=sum(x["modality_weights"] == y["modality_weights"]
                         for x, y in zip(a, b, strict=True)))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/cuda_check")
    ap.add_argument("--cases", type=int, default=128)
    ap.add_argument("--gpu-steps", type=int, default=100)
    ap.add_argument("--cpu-steps", type=int, default=10)
    ap.add_argument("--studies", type=int, default=8, help="generated studies drafted")
    ap.add_argument("--only", choices=("throughput", "tiny_resume", "demo_real", "inference"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"cuda": "not available: run this where a GPU is present"}))
        sys.exit(1)
    out = Path(args.out)
    res: dict[str, Any] = {"torch": torch.__version__,
                           "gpu": torch.cuda.get_device_name(0)}
    bm = _bench_model()
    cfg = bm._model(None)[1]
    torch.set_num_threads(2)
    for name, fn in (("throughput", lambda: bm.throughput(cfg, 4, True)),
                     ("tiny_resume", lambda: tiny_resume(out)),
                     ("demo_real", lambda: demo_real(out, args.cases, args.gpu_steps,
                                                     args.cpu_steps)),
                     ("inference", lambda: inference(out, args.studies,
                                                     ROOT / "models/demo"))):
        if args.only not in (None, name):
            continue
        try:
            res[name] = fn()
        except Exception as exc:  # report each part; one failing does not hide the others
            res[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps({name: res[name]}), file=sys.stderr, flush=True)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
