"""Which part of a finding's presence score tells it from another finding.

    .venv/bin/python bench/presence_parts.py [--checkpoint models/demo] --data DIR
                                             [--label lung_mass] [--confuser consolidation]

With MIL (``heads.mil``) a finding's presence logit is the sum of two parts: the finding
query's own score (fused tokens) and the logsumexp-pooled per-patch logits (scaled, plus a
bias).  For the cases of a ``medassist synth`` folder (e.g. a held-out test split) this
prints, for ``--label``, the mean and SD of each part and how many cases are called among
the label's cases, the confuser's cases without the label, and the rest; and the AUROC of
each part and of the whole score for the label against all other cases and against the
confuser's cases only.  An AUROC near 0.5 against the confuser says that part cannot tell
the two findings apart (docs/model.md, "Seventeenth round").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medassist.model_data import folder_records, record_sample  # noqa: E402
from multimodal.checkpoint import load_checkpoint  # noqa: E402
from multimodal.heads import pool_mil  # noqa: E402
from multimodal.metrics import auroc  # noqa: E402
from multimodal.training import predict  # noqa: E402


def parts(model: Any, samples: list[dict[str, Any]], f: int) -> tuple[np.ndarray, np.ndarray]:
    """(query part, MIL part) of label ``f``'s presence logit per case, before the
    temperature (their sum is the calibrated logit times the temperature)."""
    head = model.get_submodule("findings")
    temp = float(head.get_buffer("temperature"))
    q, m = [], []
    for o in predict(model, samples):
        if o.patch_logits is None or o.mil_affine is None:
            raise SystemExit("the checkpoint has no MIL path (heads.mil: false)")
        pooled = pool_mil(o.patch_logits, *o.mil_affine, o.ct_used)
        q.append((o.presence_logits * temp - pooled)[:, f])
        m.append(pooled[:, f])
    return torch.cat(q).numpy(), torch.cat(m).numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(REPO / "models" / "demo"))
    ap.add_argument("--data", required=True, help="a medassist synth folder (truth.json)")
    ap.add_argument("--label", default="lung_mass")
    ap.add_argument("--confuser", default="consolidation")
    a = ap.parse_args(argv)
    model, cfg, _kind, tok, _meta = load_checkpoint(a.checkpoint)
    labels = list(cfg.heads.labels)
    for lab in (a.label, a.confuser):
        if lab not in labels:
            raise SystemExit(f"{lab!r} is not a label of the checkpoint ({labels})")
    f, c = labels.index(a.label), labels.index(a.confuser)
    samples = [record_sample(r, cfg, tok, with_report=False)
               for r in folder_records(a.data, cfg)]
    y = np.array([np.asarray(s["present"])[f] > 0.5 for s in samples])
    yc = np.array([np.asarray(s["present"])[c] > 0.5 for s in samples])
    with torch.no_grad():
        q, m = parts(model, samples, f)
    head = model.get_submodule("findings")
    total = q + m
    thr = float(head.get_buffer("thresholds")[f])
    temp = float(head.get_buffer("temperature"))
    called = 1 / (1 + np.exp(-total / temp)) >= thr
    groups = {a.label: y, f"{a.confuser} without {a.label}": ~y & yc,
              "the rest": ~y & ~yc}
    res: dict[str, Any] = {"checkpoint": a.checkpoint, "data": a.data, "label": a.label,
                           "confuser": a.confuser, "threshold": round(thr, 3), "groups": {}}
    for name, sel in groups.items():
        res["groups"][name] = {
            "cases": int(sel.sum()), "called": int(called[sel].sum()),
            "query_mean": round(float(q[sel].mean()), 3) if sel.any() else None,
            "query_sd": round(float(q[sel].std()), 3) if sel.any() else None,
            "mil_mean": round(float(m[sel].mean()), 3) if sel.any() else None,
            "mil_sd": round(float(m[sel].std()), 3) if sel.any() else None}
    vs_conf = y | (~y & yc)
    res["auroc"] = {
        name: {"vs_rest": auroc(v, y), "vs_confuser": auroc(v[vs_conf], y[vs_conf])}
        for name, v in (("query", q), ("mil", m), ("total", total))}
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
