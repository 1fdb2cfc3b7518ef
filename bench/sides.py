"""Which side does a study's finding land on, and by how much?

A sided finding's side in a draft is read from its evidence (``heads.side_from_evidence``):
the multiple-instance presence of the patches on each side of the body midline
(``multimodal.heads.side_probs``), not from the laterality head.  For one study (``STUDY``, a
DICOM folder or zip, read as ``medassist report`` reads it, no note) and each checkpoint
(``--checkpoint``, repeatable) this prints, per finding (``--labels``), the presence
probability and threshold, the laterality head's probabilities, and the per-side scores
with their margin (left − right) and odds ratio (the stronger side's odds over the other's):
a margin near 0 is a side that a small change of the weights or of the scan can flip.  A
called finding's draft flags such a side ``side_uncertain`` (``side_uncertain`` here: the
same rule, ``multimodal.heads.side_is_uncertain`` with ``heads.min_side_odds_ratio``, on the
side the per-side scores give; for a finding not called it says what a call would get).

    .venv/bin/python bench/sides.py ../shared/data/ct/lung-pet-ct-dx/Lung_Dx-A0001 \\
        --checkpoint models/demo [--checkpoint runs/demo_shift] [--labels lung_mass ...]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("study", help="a DICOM folder or zip")
    ap.add_argument("--checkpoint", action="append", default=None,
                    help="a checkpoint folder (repeatable; default models/demo)")
    ap.add_argument("--labels", nargs="*",
                    default=["lung_mass", "consolidation", "pleural_effusion"])
    args = ap.parse_args()

    import torch

    from medassist.drafting import load_model, prepare
    from multimodal.batching import collate
    from multimodal.config import LATERALITY
    from multimodal.heads import side_from_probs, side_is_uncertain, side_odds_ratio, side_probs
    from multimodal.training import make_sample

    res: dict[str, Any] = {"study": args.study, "checkpoints": {}}
    for ck in args.checkpoint or [str(REPO / "models/demo")]:
        lm = load_model(ck)
        cfg = lm.cfg
        unknown = sorted(set(args.labels) - set(cfg.heads.labels))
        if unknown:
            raise SystemExit(f"{ck}: no finding {unknown}; it has {list(cfg.heads.labels)}")
        prep = prepare(args.study, None, cfg)
        x, _ = collate([make_sample(cfg, lm.tok, hu=prep.study.hu, emr=None,
                                    noise=prep.study.noise_index)])
        with torch.no_grad():
            out = lm.model(x)
        if out.ct_midline is None or out.mil_affine is None or out.patch_logits is None:
            raise SystemExit(f"{ck}: the model has no per-side evidence (heads.mil off)")
        mid = float(out.ct_midline[0])
        left, right, _ = side_probs(out.patch_logits[0].float().reshape(-1, *cfg.ct.patch_grid),
                                    out.mil_affine[0].detach().float(),
                                    out.mil_affine[1].detach().float(), mid,
                                    cfg.ct.patch[2])
        thr = out.thresholds
        bmin = out.bilateral_min
        rows: dict[str, Any] = {}
        for name in args.labels:
            f = cfg.heads.labels.index(name)
            lat = torch.softmax(out.laterality_logits[0, f].float(), -1)
            lp, rp = float(left[f]), float(right[f])
            cut = cfg.heads.bilateral_min_prob if bmin is None or float(bmin[f]) < 0 \
                else float(bmin[f])
            side = side_from_probs(lp, rp, cut)
            rows[name] = {
                "probability": round(float(out.presence_prob[0, f]), 3),
                "threshold": None if thr is None else round(float(thr[f]), 3),
                "laterality_head": {LATERALITY[i]: round(float(v), 3)
                                    for i, v in enumerate(lat)},
                "side_left": round(float(left[f]), 3),
                "side_right": round(float(right[f]), 3),
                "margin_left_minus_right": round(lp - rp, 3),
                # the stronger side's odds over the other's
                "odds_ratio": round(side_odds_ratio("left" if lp >= rp else "right", lp, rp),
                                    3),
                "side": side,
                "side_uncertain": side_is_uncertain(side, lp, rp,
                                                    cfg.heads.min_side_odds_ratio),
            }
        res["checkpoints"][ck] = {"midline_column": round(mid, 1), "findings": rows}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
