"""Findings metrics of a checkpoint on the generated validation cases (the ones its thresholds
were fitted on), without text generation: used to choose between checkpoints or
post-processing rules before the held-out test splits are scored.

    .venv/bin/python bench/val_eval.py CHECKPOINT [--val 192] [--cache runs/cache]

Prints micro-F1 and laterality on true positives (the stated side, the laterality head's, and
the side read off the image) as JSON.  The cases come from
``medassist.model_data.cached_synth_records`` (configs/synth/small.yaml, seed 7, split val).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medassist.model_data import cached_synth_records, record_sample  # noqa: E402
from medassist.model_eval import evaluate  # noqa: E402
from multimodal.checkpoint import load_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--val", type=int, default=192)
    ap.add_argument("--cache", default=str(REPO / "runs" / "cache"))
    a = ap.parse_args(argv)
    model, cfg, _kind, tok, _meta = load_checkpoint(a.checkpoint)
    recs = cached_synth_records(a.cache, str(REPO / "configs/synth/small.yaml"), cfg, 7, a.val,
                                "val")
    samples = [record_sample(r, cfg, tok, with_report=False) for r in recs]
    with torch.no_grad():
        full = evaluate(model, cfg, samples)["full"]
    keys = ("micro_f1", "macro_auroc", "laterality_acc_tp", "laterality_acc_tp_head",
            "laterality_acc_tp_evidence")
    print(json.dumps({"checkpoint": a.checkpoint, "n_cases": len(samples),
                      **{k: full[k] for k in keys}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
