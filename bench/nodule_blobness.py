"""Does a Hessian blob filter find generated nodules on the model grid where the model can't?

The demo model's nodule detector is at chance at case level (``bench/dense_cells.py``: its
per-case maximum has AUROC 0.47) although a crop probe recognises a nodule it is pointed at
(``bench/nodule_crop_probe.py``): the search fails, among vessel cross-sections as bright as
the nodules (``bench/nodule_peaks.py``). Computer-aided detection separates the two by shape:
a nodule is a blob (all three Hessian eigenvalues strongly negative), a vessel a tube (one
near zero). This bench computes the multi-scale "dot" enhancement of Li, Sone and Doi (Med.
Phys. 2003), ``|l3|^2 / |l1|`` where all eigenvalues are negative (|l1| >= |l2| >= |l3|),
scale-normalised, and the negated Laplacian of Gaussian (which a blob attached to a vessel
or the pleura still lights), on each case's HU volume on the demo model grid (anisotropic
spacing honoured), and reports, per case, their maximum inside the lungs (a smoothed-HU
mask) against the maximum HU there, as AUROC for "the case has a nodule", overall and on
the cases without a mass or consolidation (other bright blobs), plus the rank of each
nodule's own response among its case's local maxima.

    .venv/bin/python bench/nodule_blobness.py [--cases 240] [--split val]
        [--synth-config configs/synth/small_fleischner_body.yaml] [--cache runs/cache]
        [--scales 2.5 3.5 5]

Cases come from the case cache (``medassist.model_data.iter_cached_chunks``, seed 7).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medassist.model_data import iter_cached_chunks  # noqa: E402
from multimodal.config import load_model_config  # noqa: E402
from multimodal.metrics import auroc  # noqa: E402

F32 = npt.NDArray[np.float32]


def gaussian(vol: F32, sigma_vox: list[float]) -> F32:
    """Separable Gaussian smoothing (edge-replicated), one axis at a time."""
    t = torch.from_numpy(np.ascontiguousarray(vol, np.float32))[None, None]
    for ax, sg in enumerate(sigma_vox):
        r = max(1, int(np.ceil(3 * sg)))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sg) ** 2)
        k = (k / k.sum()).reshape([1, 1] + [-1 if i == ax else 1 for i in range(3)])
        pad = [0] * 6
        pad[2 * (2 - ax)] = pad[2 * (2 - ax) + 1] = r
        t = F.conv3d(F.pad(t, pad, mode="replicate"), k)
    return t[0, 0].numpy()


def blob_filters(hu: F32, spacing: tuple[float, float, float], scales_mm: tuple[float, ...]
                 ) -> tuple[F32, F32]:
    """Maximum over scales of the scale-normalised dot enhancement and of the negated
    Laplacian of Gaussian (z, y, x) of ``hu``."""
    best = np.zeros(hu.shape, np.float32)
    best_log = np.zeros(hu.shape, np.float32)
    for s in scales_mm:
        g = gaussian(hu, [s / d for d in spacing])
        grad = np.gradient(g, *spacing)  # per mm
        h = np.empty((*hu.shape, 3, 3), np.float32)
        for i in range(3):
            second = np.gradient(grad[i], *spacing)
            for j in range(i, 3):
                h[..., i, j] = h[..., j, i] = second[j] * s * s  # scale-normalised
        ev = np.linalg.eigvalsh(h.reshape(-1, 3, 3))  # ascending: l_min (most negative) first
        big, small = np.abs(ev[:, 0]), np.abs(ev[:, 2])
        blob = (ev[:, 2] < 0) & (big > 0)
        dot = np.where(blob, small * small / np.maximum(big, 1e-6), 0.0)
        best = np.maximum(best, dot.reshape(hu.shape).astype(np.float32))
        log = -(h[..., 0, 0] + h[..., 1, 1] + h[..., 2, 2])
        best_log = np.maximum(best_log, log.astype(np.float32))
    return best, best_log


def lung_mask(hu: F32, spacing: tuple[float, float, float]) -> npt.NDArray[np.bool_]:
    """Voxels whose 8 mm neighbourhood is mostly air-filled lung (nodules inside included)."""
    smooth = gaussian(hu, [8.0 / d for d in spacing])
    return np.asarray((smooth < -500) & (smooth > -990))


def case_scores(hu: F32, spacing: tuple[float, float, float], scales: tuple[float, ...],
                nodule_masks: list[npt.NDArray[np.bool_]]) -> dict[str, Any]:
    lung = lung_mask(hu, spacing)
    out: dict[str, Any] = {"hu_max": float(hu[lung].max()) if lung.any() else -1000.0}
    for name, resp in zip(("dot", "log"), blob_filters(hu, spacing, scales), strict=True):
        resp = resp * lung
        t = torch.from_numpy(resp)[None, None]
        peaks = (resp == F.max_pool3d(t, 3, 1, 1)[0, 0].numpy()) & (resp > 0)
        vals = resp[peaks]
        out[f"{name}_max"] = float(resp.max())
        out[f"{name}_n_peaks"] = int(peaks.sum())
        out[f"{name}_ranks"] = [int((vals > float(resp[m].max())).sum()) + 1 if m.any()
                                else len(vals) + 1 for m in nodule_masks]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=240)
    ap.add_argument("--split", default="val")
    ap.add_argument("--synth-config", default="configs/synth/small_fleischner_body.yaml")
    ap.add_argument("--cache", default=str(REPO / "runs" / "cache"))
    ap.add_argument("--scales", type=float, nargs="+", default=[2.5, 3.5, 5.0])
    a = ap.parse_args(argv)
    cfg = load_model_config(REPO / "configs/model/demo_laa.yaml")
    spacing = tuple(float(s) for s in cfg.ct.spacing_mm)
    if len(spacing) != 3:
        raise ValueError("ct.spacing_mm must have 3 values")
    sp = (spacing[0], spacing[1], spacing[2])
    t0 = time.perf_counter()
    rows = []
    for chunk in iter_cached_chunks(a.cache, a.synth_config, cfg, 7, a.cases, a.split):
        for r in chunk:
            if r.hu is None or r.label_map is None:
                continue
            kinds = [f["kind"] for f in r.findings]
            masks = [np.asarray(r.label_map == i + 1) for i, k in enumerate(kinds)
                     if k == "lung_nodule"]
            s = case_scores(np.asarray(r.hu, np.float32), sp, tuple(a.scales), masks)
            s.update(nodule="lung_nodule" in kinds,
                     other_blob=bool({"lung_mass", "consolidation"} & set(kinds)),
                     nodule_sizes=[round(float(f["size_mm"]), 1) for f in r.findings
                                   if f["kind"] == "lung_nodule"])
            rows.append(s)
    y = np.array([r["nodule"] for r in rows])
    clean = np.array([not r["other_blob"] for r in rows])
    res: dict[str, Any] = {"cases": len(rows), "with_nodule": int(y.sum()),
                           "split": a.split, "synth_config": a.synth_config,
                           "scales_mm": a.scales, "seconds": round(time.perf_counter() - t0, 1)}
    for key in ("dot_max", "log_max", "hu_max"):
        v = np.array([r[key] for r in rows])
        for suffix, sel in (("", np.ones_like(y)), ("_no_mass_or_consolidation", clean)):
            a_ = auroc(v[sel], y[sel])
            res[f"auroc_{key}{suffix}"] = None if a_ is None else round(a_, 3)
    sizes = np.array([s for r in rows for s in r["nodule_sizes"]])
    for name in ("dot", "log"):
        rk = np.array([k for r in rows for k in r[f"{name}_ranks"]])
        if not len(rk):
            continue
        rep = {"n": len(rk), "median": float(np.median(rk)),
               "top1": round(float((rk == 1).mean()), 3),
               "top5": round(float((rk <= 5).mean()), 3),
               "top20": round(float((rk <= 20).mean()), 3),
               "median_peaks_per_case": float(np.median([r[f"{name}_n_peaks"] for r in rows]))}
        if (sizes >= 8).any():
            rep["top5_size_ge_8mm"] = round(float((rk[sizes >= 8] <= 5).mean()), 3)
        res[f"nodule_rank_among_{name}_peaks"] = rep
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
