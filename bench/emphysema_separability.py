"""Can emphysema be told from a normal lung by density alone, on the model's grid?  For the
cached validation cases of a generator config: per case, the share of lung voxels below
each HU threshold (whole lung, and its upper half in z, where the generator puts emphysema),
and the share of 2 x 2 x 2 blocks whose darkest lung voxel is below the threshold (what the
model's pre-pool ``min`` statistic sees); then the AUROC of each share for emphysema present
vs absent (all cases) and vs normal cases only.  The real series' shares (default: the
shared Lung-PET-CT-Dx A0001, a lung without emphysema in its report) are printed beside them,
to place a real normal lung among the generated ones.

A texture or density that fills the low-HU range of normal lungs lowers these AUROCs; a
threshold below that range but above what partial volume leaves of the lucencies raises
them.  The lung mask is bench/finding_visibility.py's.

    .venv/bin/python bench/emphysema_separability.py [--synth-config C] [--cases 192]
        [--thresholds -990 -980 -970 -960 -950 -940 -930 -920] [--real DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.finding_visibility import lung_mask  # noqa: E402
from medassist.drafting import load_study  # noqa: E402
from medassist.model_data import cached_synth_records  # noqa: E402
from multimodal.config import load_model_config  # noqa: E402
from multimodal.metrics import auroc  # noqa: E402


def shares(hu: np.ndarray, thresholds: list[float]) -> dict[str, list[float]]:
    """Per threshold: lung share below it (all, upper half) and 2x2x2-block min share."""
    lung = lung_mask(hu)
    zs = np.nonzero(lung.any(axis=(1, 2)))[0]
    upper = np.zeros_like(lung)
    if zs.size:
        upper[(zs.min() + zs.max() + 1) // 2:] = True  # z ascends towards the head
    t = torch.from_numpy(np.where(lung, hu, 1000.0).astype(np.float32))[None, None]
    pad = [(0, (-n) % 2) for n in hu.shape]
    t = F.pad(t, [p for ax in reversed(pad) for p in ax], value=1000.0)
    bmin = -F.max_pool3d(-t, 2)[0, 0].numpy()
    m = torch.from_numpy(lung).float()[None, None]
    m = F.pad(m, [p for ax in reversed(pad) for p in ax])
    blung = F.max_pool3d(m, 2)[0, 0].numpy() > 0
    v, vu, vb = hu[lung], hu[lung & upper], bmin[blung]
    out: dict[str, list[float]] = {"all": [], "upper": [], "block_min": []}
    for thr in thresholds:
        out["all"].append(float((v < thr).mean()) if v.size else 0.0)
        out["upper"].append(float((vu < thr).mean()) if vu.size else 0.0)
        out["block_min"].append(float((vb < thr).mean()) if vb.size else 0.0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synth-config", default=str(REPO / "configs/synth/small_fleischner.yaml"))
    ap.add_argument("--model-config", default=str(REPO / "configs/model/demo_laa.yaml"))
    ap.add_argument("--cache", default=str(REPO / "runs" / "cache"))
    ap.add_argument("--cases", type=int, default=192)
    ap.add_argument("--thresholds", type=float, nargs="+",
                    default=[-990.0, -980.0, -970.0, -960.0, -950.0, -940.0, -930.0, -920.0])
    ap.add_argument("--real", default=str(REPO.parent / "shared/data/ct/lung-pet-ct-dx/"
                                          "Lung_Dx-A0001"))
    args = ap.parse_args(argv)
    cfg = load_model_config(args.model_config)
    thr = list(args.thresholds)
    recs = cached_synth_records(args.cache, args.synth_config, cfg, 7, args.cases, "val")
    rows = []
    for r in recs:
        if r.hu is None:
            continue
        kinds = {f["kind"] for f in r.findings}
        rows.append((("emphysema" in kinds), not kinds, shares(r.hu.astype(np.float32), thr)))
    real = shares(load_study(args.real, cfg).hu.astype(np.float32), thr)
    y = np.asarray([e for e, _, _ in rows], dtype=float)
    normal = np.asarray([n for _, n, _ in rows])
    res: dict[str, Any] = {"synth_config": args.synth_config, "cases": len(rows),
                           "emphysema": int(y.sum()), "normal": int(normal.sum()),
                           "thresholds": thr}
    for key in ("all", "upper", "block_min"):
        x = np.asarray([s[key] for _, _, s in rows])  # (cases, thresholds)
        sel = (y > 0) | normal
        res[key] = {
            "auroc_vs_all": [None if (a := auroc(x[:, i], y)) is None else round(a, 3)
                             for i in range(len(thr))],
            "auroc_vs_normal": [None if (a := auroc(x[sel, i], y[sel])) is None
                                else round(a, 3) for i in range(len(thr))],
            "normal_median": [round(float(np.median(x[normal, i])), 4) for i in range(len(thr))],
            "normal_p90": [round(float(np.percentile(x[normal, i], 90)), 4)
                           for i in range(len(thr))],
            "emphysema_median": [round(float(np.median(x[y > 0, i])), 4)
                                 for i in range(len(thr))],
            "real": [round(v, 4) for v in real[key]]}
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
