"""How visible is each generated finding on the model's grid?  Per finding of the cached
validation cases: the contrast of its labelled voxels against a shell around them, over the
shell's spread (a contrast-to-noise ratio, CNR), and its voxel count; for emphysema also the
share of the lung its labelled voxels take, the classic low-attenuation-area score
(percentage of lung voxels below -950 / -920 / -900 HU) and a regional one (the 99th
percentile, over the lung voxels whose 3 x 9 x 9-voxel window is at least half lung, of
the low-attenuation share of the lung in that window), each with its AUROC against cases
without emphysema.

A finding kind whose CNR is below ~1 in most cases, or whose case-level score is near AUROC
0.5, cannot be learned from the image at this grid, whatever the model: the generator (or the
grid) has to change first.

    .venv/bin/python bench/finding_visibility.py [--cases 192] [--cache runs/cache]
        [--synth-config configs/synth/small.yaml]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medassist.model_data import cached_synth_records  # noqa: E402
from multimodal.config import load_model_config  # noqa: E402
from multimodal.metrics import auroc  # noqa: E402


def _dilate(m: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool3d(m.float()[None, None], 2 * r + 1, 1, r)[0, 0] > 0.5


def _box_mean(t: torch.Tensor, k: tuple[int, int, int]) -> torch.Tensor:
    """(Z, Y, X) mean over a k window around each voxel (separable; edges: the part inside)."""
    a = t.float()[None, None]
    for ax in range(3):
        kk = [1, 1, 1]
        kk[ax] = k[ax]
        a = F.avg_pool3d(a, tuple(kk), 1, tuple(x // 2 for x in kk), count_include_pad=False)
    return a[0, 0]


def regional_laa(hu: np.ndarray, lung: np.ndarray, thr: float,
                 window: tuple[int, int, int] = (3, 9, 9), q: float = 0.99) -> float:
    """The ``q`` quantile, over the lung voxels whose ``window`` is at least half lung, of
    the share of lung voxels below ``thr`` HU in that window (emphysema is a regional density
    drop, mostly in the upper zones; the quantile, not the maximum, so that the airways do not
    decide, and half-lung windows, so that a few edge voxels do not)."""
    lg = torch.from_numpy(lung)
    low = torch.from_numpy(hu < thr) & lg
    frac = _box_mean(lg, window)
    share = _box_mean(low, window) / frac.clamp_min(1e-6)
    v = share[lg & (frac >= 0.5)]
    if v.numel() == 0:
        return 0.0
    return float(torch.kthvalue(v, max(1, int(q * v.numel()))).values)


def lung_mask(hu: np.ndarray) -> np.ndarray:
    """Air-density voxels (< -500 HU) not connected, slice by slice, to the image border,
    eroded by one voxel: the lungs (and airways) without the air around the body."""
    low = torch.from_numpy(hu < -500)
    out = torch.zeros_like(low)
    for sl in ((slice(None), 0, slice(None)), (slice(None), -1, slice(None)),
               (slice(None), slice(None), 0), (slice(None), slice(None), -1)):
        out[sl] = True
    out &= low
    for _ in range(max(hu.shape)):
        grown = (F.max_pool2d(out.float()[:, None], 3, 1, 1)[:, 0] > 0.5) & low
        if torch.equal(grown, out):
            break
        out = grown
    lung = low & ~out
    return np.asarray(~_dilate(~lung, 1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=192)
    ap.add_argument("--cache", default=str(REPO / "runs" / "cache"))
    ap.add_argument("--synth-config", default=str(REPO / "configs/synth/small.yaml"))
    args = ap.parse_args(argv)
    cfg = load_model_config(REPO / "configs/model/demo.yaml")
    recs = cached_synth_records(args.cache, args.synth_config, cfg, 7, args.cases, "val")
    cnr: dict[str, list[float]] = defaultdict(list)
    vox: dict[str, list[int]] = defaultdict(list)
    laa: list[tuple[float, ...]] = []
    emph: list[bool] = []
    share: list[float] = []  # emphysema cases: labelled voxels / lung voxels
    for r in recs:
        if r.hu is None or r.label_map is None:
            continue
        hu = r.hu.astype(np.float32)
        lab = torch.from_numpy(r.label_map.astype(np.int64))
        for f in r.findings:
            inside = lab == int(f["label_value"])
            if not bool(inside.any()):
                cnr[f["kind"]].append(0.0)
                vox[f["kind"]].append(0)
                continue
            shell = _dilate(inside, 2) & (lab == 0)
            a, b = hu[inside.numpy()], hu[shell.numpy()]
            cnr[f["kind"]].append(float(abs(a.mean() - b.mean()) / max(float(b.std()), 1.0))
                                  if b.size else 0.0)
            vox[f["kind"]].append(int(inside.sum()))
        lung = lung_mask(hu)
        v = hu[lung]
        laa.append((float((v < -950).mean()), float((v < -920).mean()),
                    float((v < -900).mean()),
                    *(regional_laa(hu, lung, t) for t in (-950.0, -920.0, -900.0))))
        emph.append(any(f["kind"] == "emphysema" for f in r.findings))
        for f in r.findings:
            if f["kind"] == "emphysema":
                m = lab.numpy() == int(f["label_value"])
                share.append(float(m.sum() / max(int((lung | m).sum()), 1)))
    y = np.asarray(emph, dtype=float)
    s = np.asarray(laa)
    res: dict[str, Any] = {"synth_config": args.synth_config, "cases": len(recs),
                           "grid_mm": list(cfg.ct.spacing_mm), "cnr": {
        k: {"n": len(c), "median": round(float(np.median(c)), 2),
            "share_above_1": round(float(np.mean(np.asarray(c) > 1.0)), 2),
            "share_above_3": round(float(np.mean(np.asarray(c) > 3.0)), 2),
            "median_voxels": int(np.median(vox[k]))}
        for k, c in sorted(cnr.items())}}
    res["emphysema_laa"] = {
        "cases_with": int(y.sum()),
        "labelled_share_of_lung_pct_median": round(100 * float(np.median(share)), 2)
        if share else None,
        "laa950_pct_with": round(100 * float(s[y == 1, 0].mean()), 2) if y.any() else None,
        "laa950_pct_without": round(100 * float(s[y == 0, 0].mean()), 2),
        "auroc_laa950": auroc(s[:, 0], y), "auroc_laa920": auroc(s[:, 1], y),
        "auroc_laa900": auroc(s[:, 2], y),
        "auroc_regional_p99_laa950": auroc(s[:, 3], y),
        "auroc_regional_p99_laa920": auroc(s[:, 4], y),
        "auroc_regional_p99_laa900": auroc(s[:, 5], y)}
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
