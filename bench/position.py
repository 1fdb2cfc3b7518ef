"""How much do the findings head's decisions depend on where the body lies in-plane?

The generated chests lie within about 5 voxels of the model grid's centre (the generator
renders them there, and the DICOM path keeps the grid centred in-plane); a real patient lies
where the table puts them (the shared A0001's body is 12.5 voxels, 34 mm, behind the grid's
centre). For each case of a ``medassist synth`` folder (``--data``) this reads the volume on
the model grid as ``medassist eval`` does, then moves its content by whole voxels along y
(``--dy``, + towards the back) or x (``--dx``), filling with the grid's padding, and scores
the findings head's decisions (fitted thresholds, no CT measurement or rule after the head)
against the references: micro-F1, true / false positives and misses, and per label the false
calls, for the unmoved grid and each move.

    .venv/bin/python bench/position.py --data /tmp/runs/test_id_body/test \\
        [--checkpoint models/demo] [--dy -12 -6 6 12] [--dx -12 12] [--cases N]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a medassist synth folder (its cases)")
    ap.add_argument("--checkpoint", default=str(REPO / "models/demo"))
    ap.add_argument("--dy", type=int, nargs="*", default=[-12, -6, 6, 12])
    ap.add_argument("--dx", type=int, nargs="*", default=[-12, 12])
    ap.add_argument("--cases", type=int, default=0, help="at most this many cases (0: all)")
    args = ap.parse_args()

    import torch

    from medassist.model_data import folder_records, label_targets, record_sample
    from multimodal.augment import shift_volume
    from multimodal.checkpoint import load_checkpoint
    from multimodal.heads import predict_findings
    from multimodal.training import predict

    model, cfg, _k, tok, _m = load_checkpoint(args.checkpoint)
    labels = cfg.heads.labels
    moves = [(0, 0)] + [(d, 0) for d in args.dy if d] + [(0, d) for d in args.dx if d]
    counts = {m: np.zeros((len(labels), 3), np.int64) for m in moves}  # tp, fp, fn
    n = 0
    for r in folder_records(args.data, cfg):
        truth = label_targets(r.findings, labels, cfg.heads.locations)["present"] > 0
        hu = np.asarray(r.hu, np.float32)
        for dy, dx in moves:
            moved, _ = shift_volume(hu, dy, dx, pad=cfg.ct.pad_hu)
            rec = dataclasses.replace(r, hu=moved, label_map=None)
            with torch.no_grad():
                out = predict(model, [record_sample(rec, cfg, tok, with_report=False)], 1)[0]
            called = np.array([p.present for p in predict_findings(out, cfg.heads, cfg.ct)[0]])
            c = counts[(dy, dx)]
            c[:, 0] += called & truth
            c[:, 1] += called & ~truth
            c[:, 2] += ~called & truth
        n += 1
        if args.cases and n >= args.cases:
            break
    res: dict[str, Any] = {"data": args.data, "checkpoint": args.checkpoint, "cases": n,
                           "voxel_mm": list(cfg.ct.spacing_mm)}
    for (dy, dx), c in counts.items():
        tp, fp, fn = (int(v) for v in c.sum(0))
        res[f"dy={dy},dx={dx}"] = {
            "micro_f1": round(2 * tp / max(2 * tp + fp + fn, 1), 3), "tp": tp, "fp": fp,
            "fn": fn, "false_calls": {lab: int(c[i, 1]) for i, lab in enumerate(labels)
                                      if c[i, 1]}}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
