"""Does the generated lung look like a real one on the model's grid?  Lung-parenchyma
statistics of a real CT (default: the shared Lung-PET-CT-Dx A0001, read and resampled exactly
as ``medassist report`` does) against generated normal cases (no findings) of the cached
validation split:

- the HU percentiles (5 / 25 / 50 / 75 / 95) of the lung voxels;
- texture: the median, over lung voxels, of the HU standard deviation in a 3 x 3 x 3-voxel
  window (real parenchyma carries sub-resolution vessels and interstitium);
- the gravity-dependent gradient: mean lung HU of the posterior fifth of the lungs' extent
  minus that of the anterior fifth (supine patient);
- the share of lung voxels denser than -700 HU;
- the two standard CT emphysema measures: LAA-950 (share of lung voxels below -950 HU) and
  Perc15 (the 15th percentile of lung HU); for generated cases also by emphysema severity
  (cases whose only finding is emphysema), so a normal lung that already reads as
  emphysematous shows;
- how much of the chest the lungs fill: per axial slice, lung voxels over the lungs plus
  every voxel above -500 HU (body and table); the 90th percentile over slices (a thick
  generated chest wall or small lungs show here);
- the boundary profile: mean HU (and share above -700 HU) of the lung voxels 1, 2, ... 6
  voxels in from the lung mask's edge (in-plane erosions) and deeper; real lungs are denser
  at the pleura than in the core (subpleural and dependent density); and the mean HU of the
  1st, 2nd and 3rd voxel ring outside the mask (in-plane dilations; what the lung touches)
  with the share of fat (-200 to -30 HU) in each, and the share of bone (above 200 HU) in
  each of the first six rings (ribs against the pleura show in the second and third on real
  CT).

The lung mask is bench/finding_visibility.py's (air below -500 HU not connected to the image
border, eroded by one voxel).  A model trained only on generated lungs reads whatever departs
from them as disease, so a gap here predicts false findings on real CT.  One real series is
a check, not a target: the generator is not fitted to it.

With ``--checkpoint CK`` it also drafts the real CT after Gaussian smoothing of the
resampled volume (SD ``--smooth`` voxels, 0 = as read) and prints each draft's called findings
with probability and side: if a false call survives smoothing that brings the lung texture
down to the generated level, the texture is not what causes it.  For the unsmoothed volume
it also says where the dense detector (``ct.dense_hidden``) fires for each called finding: of
its cells with probability above 0.5 that touch the lung, the share on the lung boundary
(cells less than 95 % lung) and in the top fifth of the lungs' z extent (the
apices), against the same shares over all cells that touch the lung.

    .venv/bin/python bench/lung_realism.py [--real DIR] [--cases 24] [--cache runs/cache]
        [--synth-config configs/synth/small.yaml] [--model-config configs/model/demo.yaml]
        [--checkpoint models/demo --smooth 0 1 2]
"""

from __future__ import annotations

import argparse
import dataclasses
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


def lung_stats(hu: np.ndarray) -> dict[str, Any]:
    """The statistics above for one volume on the model grid (z, y, x; y anterior->posterior)."""
    lung = lung_mask(hu)
    v = hu[lung]
    if v.size == 0:
        return {"lung_voxels": 0}
    t = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None, None]
    mu = F.avg_pool3d(t, 3, 1, 1)
    sq = F.avg_pool3d(t * t, 3, 1, 1)
    sd = (sq - mu * mu).clamp_min(0).sqrt()[0, 0].numpy()
    ys = np.nonzero(lung.any(axis=(0, 2)))[0]
    edges = np.linspace(ys.min(), ys.max() + 1, 6).astype(int)
    ant = hu[:, edges[0]:edges[1]][lung[:, edges[0]:edges[1]]]
    post = hu[:, edges[4]:edges[5]][lung[:, edges[4]:edges[5]]]
    body = (hu > -500) | lung
    per_slice = lung.sum(axis=(1, 2)) / np.maximum(body.sum(axis=(1, 2)), 1)
    return {"lung_voxels": int(v.size),
            "hu_percentiles": [round(float(x)) for x in np.percentile(v, [5, 25, 50, 75, 95])],
            "local_sd_hu": round(float(np.median(sd[lung])), 1),
            "ap_gradient_hu": round(float(post.mean() - ant.mean()), 1)
            if ant.size and post.size else None,
            "share_above_-700": round(float((v > -700).mean()), 4),
            "laa_950": round(float((v < -950).mean()), 4),
            "perc15_hu": round(float(np.percentile(v, 15)), 1),
            "lung_share_of_body_p90": round(float(np.percentile(per_slice, 90)), 3),
            "boundary_profile": boundary_profile(hu, lung)}


def boundary_profile(hu: np.ndarray, lung: np.ndarray, bands: int = 6) -> dict[str, Any]:
    """Mean HU and share above -700 HU of the lung voxels by in-plane depth from the lung
    boundary: band k holds the voxels that the k-th 3 x 3 in-plane erosion of the lung mask
    removes (k voxels deep), the last band everything deeper.  A real subpleural band denser
    than the generated one shows as a profile that falls with depth."""
    cur = torch.from_numpy(lung)
    mean, dense = [], []
    for k in range(bands + 1):
        if k < bands:
            inner = F.max_pool2d((~cur).float()[:, None], 3, 1, 1)[:, 0] < 0.5
            band = cur & ~inner
        else:
            band, inner = cur, cur
        vals = hu[band.numpy()]
        mean.append(round(float(vals.mean())) if vals.size else None)
        dense.append(round(float((vals > -700).mean()), 3) if vals.size else None)
        cur = inner
    # outwards: the voxels that each 3 x 3 in-plane dilation of the mask adds (what the lung
    # touches: pleura, fat, muscle, rib, mediastinum)
    out_mean, out_bone, out_fat = [], [], []
    grown = torch.from_numpy(lung)
    for k in range(bands):
        nxt = F.max_pool2d(grown.float()[:, None], 3, 1, 1)[:, 0] > 0.5
        ring = nxt & ~grown
        vals = hu[ring.numpy()]
        if k < 3:
            out_mean.append(round(float(vals.mean())) if vals.size else None)
            out_fat.append(round(float(((vals > -200) & (vals < -30)).mean()), 3)
                           if vals.size else None)
        out_bone.append(round(float((vals > 200).mean()), 4) if vals.size else None)
        grown = nxt
    return {"depth_voxels": [*range(1, bands + 1), f">{bands}"], "mean_hu": mean,
            "share_above_-700": dense, "outside_1_2_3_mean_hu": out_mean,
            "outside_1_2_3_fat_share": out_fat, "outside_bone_share": out_bone}


def smooth(hu: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur along z, y and x (SD ``sigma`` voxels), edges replicated."""
    if sigma <= 0:
        return hu
    r = int(3 * sigma) + 1
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    t = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None, None]
    t = F.conv3d(F.pad(t, (r, r, 0, 0, 0, 0), mode="replicate"), k.view(1, 1, 1, 1, -1))
    t = F.conv3d(F.pad(t, (0, 0, r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1, 1))
    t = F.conv3d(F.pad(t, (0, 0, 0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1, 1))
    return np.asarray(t[0, 0].numpy(), dtype=np.float32)


def dense_hot_cells(lm: Any, hu: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Where the dense detector fires on ``hu`` for each of ``labels`` (see the module doc)."""
    from multimodal.batching import collate
    from multimodal.training import make_sample

    x, _ = collate([make_sample(lm.cfg, lm.tok, hu=hu, emr=None)])
    with torch.no_grad():
        out = lm.model(x)
    if out.dense_logits is None:
        return {"note": "this checkpoint has no dense detector"}
    dense = torch.sigmoid(out.dense_logits[0])  # (F, z, y, x) on the dense grid
    lung = torch.from_numpy(lung_mask(hu)).float()[None, None]
    gz, gy, gx = (int(n) for n in dense.shape[1:])
    share = F.adaptive_avg_pool3d(lung, (gz, gy, gx))[0, 0]  # lung share per cell
    touch = share > 0
    boundary = touch & (share < 0.95)
    zs = torch.nonzero(touch.any(dim=2).any(dim=1))[:, 0]
    top = torch.zeros_like(touch)
    top[int(zs.max()) - max(1, (int(zs.max()) - int(zs.min()) + 1) // 5) + 1:] = True
    n = int(touch.sum())
    res: dict[str, Any] = {"cells_touching_lung": n,
                           "boundary_share_all": round(float(boundary.sum()) / n, 3),
                           "apex_share_all": round(float((top & touch).sum()) / n, 3)}
    names = list(lm.cfg.heads.labels)
    for lab in labels:
        hot = (dense[names.index(lab)] > 0.5) & touch
        k = int(hot.sum())
        res[lab] = {"hot_cells": k,
                    "boundary_share": round(float((hot & boundary).sum()) / k, 3) if k else None,
                    "apex_share": round(float((hot & top).sum()) / k, 3) if k else None}
    return res


def _summary(rows: list[dict[str, Any]], key: str, nd: int = 1) -> dict[str, float]:
    x = np.asarray([r[key] for r in rows if r.get(key) is not None], dtype=float)
    return {"median": round(float(np.median(x)), nd), "min": round(float(x.min()), nd),
            "max": round(float(x.max()), nd)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", default=str(REPO.parent / "shared/data/ct/lung-pet-ct-dx/"
                                          "Lung_Dx-A0001"))
    ap.add_argument("--cases", type=int, default=24, help="generated normal cases to measure")
    ap.add_argument("--pool", type=int, default=192, help="validation cases to draw them from")
    ap.add_argument("--cache", default=str(REPO / "runs" / "cache"))
    ap.add_argument("--synth-config", default=str(REPO / "configs/synth/small.yaml"))
    ap.add_argument("--model-config", default=str(REPO / "configs/model/demo.yaml"))
    ap.add_argument("--checkpoint", default="", help="also draft the real CT, smoothed")
    ap.add_argument("--smooth", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    args = ap.parse_args(argv)
    cfg = load_model_config(args.model_config)
    study = load_study(args.real, cfg)
    real = lung_stats(study.hu.astype(np.float32))
    recs = cached_synth_records(args.cache, args.synth_config, cfg, 7, args.pool, "val")
    gen = [lung_stats(r.hu.astype(np.float32)) for r in recs
           if r.hu is not None and not r.findings][: args.cases]
    p = np.asarray([g["hu_percentiles"] for g in gen], dtype=float)
    out = {"real": {"series": Path(args.real).name, **real},
           "generated": {"synth_config": args.synth_config, "cases": len(gen),
                         "hu_percentiles_median": [round(float(x)) for x in np.median(p, 0)],
                         "iqr_hu": _summary([{"v": g["hu_percentiles"][3] - g["hu_percentiles"][1]}
                                             for g in gen], "v"),
                         "local_sd_hu": _summary(gen, "local_sd_hu"),
                         "ap_gradient_hu": _summary(gen, "ap_gradient_hu"),
                         "share_above_-700": _summary(gen, "share_above_-700", 4),
                         "laa_950": _summary(gen, "laa_950", 4),
                         "perc15_hu": _summary(gen, "perc15_hu"),
                         "lung_share_of_body_p90": _summary(gen, "lung_share_of_body_p90", 3),
                         "boundary_profile_median": {
                             key: [None if any(g["boundary_profile"][key][i] is None for g in gen)
                                   else round(float(np.median([g["boundary_profile"][key][i]
                                                               for g in gen])), 3)
                                   for i in range(len(gen[0]["boundary_profile"][key]))]
                             for key in ("mean_hu", "share_above_-700",
                                         "outside_1_2_3_mean_hu", "outside_1_2_3_fat_share",
                                         "outside_bone_share")}}}
    emph: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        if r.hu is not None and r.findings and all(f["kind"] == "emphysema" for f in r.findings):
            sev = str(r.findings[0]["attributes"].get("severity", "mild"))
            emph.setdefault(sev, []).append(lung_stats(r.hu.astype(np.float32)))
    out["generated_emphysema_only"] = {
        sev: {"cases": len(rows), "laa_950": _summary(rows, "laa_950", 4),
              "perc15_hu": _summary(rows, "perc15_hu")} for sev, rows in sorted(emph.items())}
    real_iqr = real["hu_percentiles"][3] - real["hu_percentiles"][1]
    out["real"]["iqr_hu"] = real_iqr
    if args.checkpoint:
        from medassist.drafting import Prepared, infer, load_model

        lm = load_model(args.checkpoint)
        drafts = {}
        for sg in args.smooth:
            hu = smooth(study.hu.astype(np.float32), sg)
            st = dataclasses.replace(study, hu=hu)
            d = infer(lm, [Prepared(study=st, emr=None)])[0]
            drafts[str(sg)] = {"local_sd_hu": lung_stats(hu)["local_sd_hu"], "called": [
                [f["label"], round(f["probability"], 3), f["laterality"]]
                for f in d["findings"] if f["present"]],
                "lung_mass_p": next(round(f["probability"], 3) for f in d["findings"]
                                    if f["label"] == "lung_mass")}
        out["real_drafts_smoothed"] = {"checkpoint": args.checkpoint, **drafts}
        out["real_dense_hot_cells"] = dense_hot_cells(lm, study.hu.astype(np.float32), [
            c[0] for c in drafts[str(args.smooth[0])]["called"]] if args.smooth else [])
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
