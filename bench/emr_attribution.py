"""How faithful are a finding's EMR evidence spans?  A deletion test on a checkpoint.

    .venv/bin/python bench/emr_attribution.py [CHECKPOINT] --data DIR [--data DIR ...]
                                             [--k 3 10] [--cases N] [--seed 0]

For every finding the checkpoint calls (its fitted thresholds) in a case with a note, the
note's tokens are ranked three ways: by the findings head's own EMR attention
(``ModelOutput.emr_attr``, what the drafts showed before stop 49), by gradient x input
(:func:`multimodal.attribution.emr_attribution`, positive part), and at random (seeded).
The first ``k`` tokens of each ranking are masked (as padding: the model does not read
them) and the finding's presence logit is computed again.  Prints, per ranking and ``k``,
the mean fall of the logit (``mean_drop``; a ranking that finds what the finding rests on
makes it fall most), the share of findings whose logit falls, and how many calls change;
also each finding's total positive gradient x input (``total_positive``: the first-order
estimate of what the note adds to its logit), the findings with none, how much the note
raises each call's logit against the same case without it (``note_gain``; the drafts show
note evidence only where that reaches ``heads.emr_evidence_min_logit``) and the cost of the
attribution (seconds per case, the second forward pass and one backward per called
finding), as JSON.  The cases come from ``medassist synth`` folders (``--data``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medassist.defaults import DEFAULT_CHECKPOINT  # noqa: E402
from medassist.model_data import folder_records, record_sample  # noqa: E402
from multimodal.attribution import emr_attribution  # noqa: E402
from multimodal.batching import collate  # noqa: E402
from multimodal.checkpoint import load_checkpoint  # noqa: E402
from multimodal.image_pass import without_note  # noqa: E402
from multimodal.outputs import ModelInput  # noqa: E402


def masked(x: ModelInput, tokens: list[int]) -> ModelInput:
    """``x`` (one case) with ``tokens`` of its note masked as padding."""
    if x.emr_mask is None:
        raise ValueError("no note")
    mask = x.emr_mask.clone()
    mask[0, tokens] = False
    return replace(x, emr_mask=mask)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", nargs="?", default=str(REPO / DEFAULT_CHECKPOINT))
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--k", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--cases", type=int, default=0, help="at most this many per folder")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, cfg, _kind, tok, _meta = load_checkpoint(a.checkpoint)
    model.eval()
    thresholds = model.get_submodule("findings").get_buffer("thresholds")
    rng = np.random.default_rng(a.seed)
    methods = ("attention", "gradient", "random")
    drops: dict[str, dict[int, list[float]]] = {m: {k: [] for k in a.k} for m in methods}
    flips: dict[str, dict[int, int]] = {m: {k: 0 for k in a.k} for m in methods}
    totals: list[float] = []
    gains: list[float] = []  # each call's logit with the note minus without it
    cost: list[float] = []
    n_cases = 0
    for folder in a.data:
        recs = list(folder_records(folder, cfg))
        if a.cases:
            recs = recs[: a.cases]
        for r in recs:
            if not (r.emr and r.emr.strip()):
                continue
            x, _ = collate([record_sample(r, cfg, tok, with_report=False)])
            if x.emr_mask is None:
                continue
            with torch.no_grad():
                out = model(x)
                plain = model(without_note(x)).presence_logits[0]
            logit = out.presence_logits[0]
            called = [f for f in range(len(cfg.heads.labels))
                      if float(torch.sigmoid(logit[f])) >= float(thresholds[f])]
            if not called:
                continue
            n_cases += 1
            t0 = time.perf_counter()
            grad = emr_attribution(model, x, called)[0]  # (F, T)
            cost.append(time.perf_counter() - t0)
            n_tok = int(x.emr_mask[0].sum())
            for f in called:
                totals.append(float(grad[f].sum()))
                gains.append(float(logit[f] - plain[f]))
                ranks = {
                    "attention": [] if out.emr_attr is None else
                    out.emr_attr[0, f, :n_tok].argsort(descending=True).tolist(),
                    "gradient": [i for i in grad[f, :n_tok].argsort(descending=True).tolist()
                                 if grad[f, i] > 0],
                    "random": rng.permutation(n_tok).tolist()}
                for m in methods:
                    for k in a.k:
                        top = ranks[m][:k]
                        if not top:
                            drops[m][k].append(0.0)
                            continue
                        with torch.no_grad():
                            after = model(masked(x, top)).presence_logits[0, f]
                        drops[m][k].append(float(logit[f] - after))
                        flips[m][k] += int(float(torch.sigmoid(after)) < float(thresholds[f]))
    res: dict[str, Any] = {
        "checkpoint": a.checkpoint, "data": a.data, "cases_with_calls": n_cases,
        "findings": len(totals),
        "total_positive": {"median": float(np.median(totals)) if totals else None,
                           "mean": float(np.mean(totals)) if totals else None,
                           "none": int(sum(t <= 0 for t in totals))},
        "note_gain": {"median": float(np.median(gains)) if gains else None,
                      "max": float(np.max(gains)) if gains else None,
                      "min": float(np.min(gains)) if gains else None,
                      "at_least_min_logit": int(sum(
                          g >= cfg.heads.emr_evidence_min_logit for g in gains)),
                      "min_logit": cfg.heads.emr_evidence_min_logit},
        "seconds_per_case": float(np.median(cost)) if cost else None,
        "deletion": {m: {str(k): {"mean_drop": float(np.mean(v)) if v else None,
                                  "share_falls": float(np.mean([d > 0 for d in v]))
                                  if v else None,
                                  "calls_lost": flips[m][k]}
                         for k, v in drops[m].items()} for m in methods}}
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
