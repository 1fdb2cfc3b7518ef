"""Peak memory of building the training samples from the case cache: all records loaded at
once (the trainer before stop 12) against one chunk of volumes at a time (the trainer now),
each in its own process, side by side.

    .venv/bin/python bench/train_data_memory.py [--config configs/train/demo_stop15.yaml]
                                                [--cases N] [--cache DIR]

Prints JSON: per mode the peak RSS (MiB, the child process's own ru_maxrss), seconds and the
number of samples, and the ratio chunked / whole.  The cache must already hold the cases (a training
run fills it), else the first mode generates them.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(config: str, cases: int, cache: str, mode: str) -> None:
    import dataclasses

    sys.path.insert(0, str(REPO))
    from medassist.model_cli import load_records, load_train_config, training_samples
    from medassist.model_data import build_tokenizer, cached_synth_records
    from multimodal.config import load_model_config

    tc = dataclasses.replace(load_train_config(config), train_cases=cases, cache_dir=cache)
    cfg = load_model_config(tc.model_config)
    if mode == "whole":
        records = load_records(tc, cfg)
        tok = build_tokenizer(records, cfg.emr.vocab_size)
        samples = training_samples(tc, cfg, tok, records)
    else:
        texts = cached_synth_records(tc.cache_dir, tc.synth_config, cfg, tc.data_seed,
                                     tc.train_cases, images=False)
        tok = build_tokenizer(texts, cfg.emr.vocab_size)
        samples = training_samples(tc, cfg, tok, None)
    print(len(samples), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs/train/demo_stop15.yaml"))
    ap.add_argument("--cases", type=int, default=None)
    ap.add_argument("--cache", default=str(REPO / "runs" / "cache"))
    ap.add_argument("--child", choices=("whole", "chunked"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.cases is None:
        sys.path.insert(0, str(REPO))
        from medassist.model_cli import load_train_config

        a.cases = load_train_config(a.config).train_cases
    if a.child:
        child(a.config, a.cases, a.cache, a.child)
        return 0
    res: dict[str, object] = {"cases": a.cases}
    for mode in ("whole", "chunked"):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--config", a.config, "--cases",
                              str(a.cases), "--cache", a.cache, "--child", mode],
                             check=True, capture_output=True, text=True)
        n, peak_kib = out.stdout.strip().splitlines()[-1].split()
        res[mode] = {"peak_rss_mib": round(int(peak_kib) / 1024, 1),
                     "seconds": round(time.perf_counter() - t0, 1), "samples": int(n)}
    w, c = res["whole"], res["chunked"]
    res["rss_ratio_chunked_vs_whole"] = round(
        c["peak_rss_mib"] / w["peak_rss_mib"], 3)  # type: ignore[index]
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
