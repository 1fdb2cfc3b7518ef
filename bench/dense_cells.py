"""Does the dense detector find a finding, or only where it may lie?  Per label, on generated
validation cases: the AUROC of the dense map's cells (the finding's cells against every
other cell of every case) and the AUROC of its maximum per case (cases with the finding
against cases without), beside the presence AUROC.

A high cell AUROC with a case-level maximum at chance means the map learnt the region a
finding can occupy (the mediastinum for lymph nodes, the lungs for nodules) and fires there in
every case.  ``dense_hard_k`` (configs/model/demo_laa_hard.yaml) trains against that.

    .venv/bin/python bench/dense_cells.py CHECKPOINT [--cases 240] [--cache runs/cache]
        [--synth-config configs/synth/small_fleischner_body.yaml]

Prints one JSON object: per label the positive cases and cells and the three AUROCs.  Cases
come from ``medassist.model_data.cached_synth_records`` (seed 7, split val).  Negative cells
are subsampled to 200,000 per label (seed 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medassist.model_data import cached_synth_records, record_sample  # noqa: E402
from multimodal.checkpoint import load_checkpoint  # noqa: E402
from multimodal.metrics import auroc  # noqa: E402
from multimodal.training import predict  # noqa: E402

MAX_NEG_CELLS = 200_000


def r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--cases", type=int, default=240)
    ap.add_argument("--cache", default=str(REPO / "runs" / "cache"))
    ap.add_argument("--synth-config",
                    default=str(REPO / "configs/synth/small_fleischner_body.yaml"))
    a = ap.parse_args(argv)
    model, cfg, _kind, tok, _meta = load_checkpoint(a.checkpoint)
    if not cfg.ct.dense_hidden:
        raise SystemExit(f"{a.checkpoint}: the model has no dense detector (ct.dense_hidden 0)")
    recs = cached_synth_records(a.cache, a.synth_config, cfg, 7, a.cases, "val")
    samples = [record_sample(r, cfg, tok, 512, with_report=False) for r in recs]
    outs = predict(model, samples)
    if any(o.dense_logits is None for o in outs):
        raise SystemExit("the model returned no dense map")
    dense = [o.dense_logits.float() for o in outs if o.dense_logits is not None]
    prob = [o.presence_prob for o in outs]
    cells = [torch.as_tensor(np.stack([s["dense_map"] for s in samples])) > 0]
    d, t, p = torch.cat(dense), torch.cat(cells), torch.cat(prob)
    y = torch.as_tensor(np.stack([s["present"] for s in samples])) > 0.5
    rng = np.random.default_rng(0)
    res: dict[str, dict[str, float | int | None]] = {}
    for f, lab in enumerate(cfg.heads.labels):
        df, tf = d[:, f].flatten().numpy(), t[:, f].flatten().numpy()
        pos = np.flatnonzero(tf)
        yf = y[:, f].numpy()
        if not pos.size or yf.all():
            continue
        neg = np.flatnonzero(~tf)
        neg = rng.choice(neg, min(MAX_NEG_CELLS, neg.size), replace=False)
        cell = auroc(np.concatenate([df[pos], df[neg]]),
                     np.concatenate([np.ones(pos.size, bool), np.zeros(neg.size, bool)]))
        case_max = d[:, f].flatten(1).max(1).values.numpy()
        res[lab] = {"pos_cases": int(yf.sum()), "pos_cells": int(pos.size),
                    "cell_auroc": r3(cell), "case_max_cell_auroc": r3(auroc(case_max, yf)),
                    "presence_auroc": r3(auroc(p[:, f].numpy(), yf))}
    print(json.dumps({"checkpoint": str(a.checkpoint), "cases": len(samples), "labels": res},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
