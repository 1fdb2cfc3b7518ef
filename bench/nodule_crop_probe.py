"""Is a generated nodule recognisable when you already know where to look?  A crop probe.

The whole-volume probes (``bench/probe_cnn.py``, ``bench/nodule_visibility.py``) and the demo
model score nodules near chance. This probe removes the search: a small stride-1 3D CNN
classifies 6 x 24 x 24-voxel crops (30 x 66 x 66 mm on the demo grid) centred (+-1 slice,
+-3 pixels) on a generated nodule, against crops centred on the brightest lung voxels of
nodule-free cases (vessel cross-sections, the hard negatives) and on random lung voxels.
It is trained twice, on the full demo grid and on the 2 x 2 x 2 mean/max/min pre-pool the
demo stem sees, and prints held-out AUROC overall, against each kind of negative, and by
nodule composition and size. High AUROC here with chance in the whole-volume model means
the nodule information survives the input grid and the pre-pool, and the search (many
vessel-like candidates per case, one weak positive) is what fails.

    .venv/bin/python bench/nodule_crop_probe.py [--cases 1200] [--val 192] [--epochs 8]
                                                [--cache runs/cache]

Cases come from ``medassist.model_data.iter_cached_chunks`` (configs/synth/small.yaml,
seed 7, splits train and val): the first run generates and caches them.
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
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medassist.model_data import iter_cached_chunks  # noqa: E402
from multimodal.config import load_model_config  # noqa: E402
from multimodal.metrics import auroc  # noqa: E402

CROP = (6, 24, 24)
SIZES = ((0.0, 6.0), (6.0, 10.0), (10.0, 31.0))


def lung_mask(hu: npt.NDArray[np.float32]) -> npt.NDArray[np.bool_]:
    """Air-like voxels, closed in-plane (vessels inside the lung count as lung), eroded."""
    air = torch.as_tensor(hu < -400, dtype=torch.float32)[None, None]
    k, p = (3, 11, 11), (1, 5, 5)
    closed = -F.max_pool3d(-F.max_pool3d(air, k, 1, p), k, 1, p)
    eroded = -F.max_pool3d(-closed, (1, 5, 5), 1, (0, 2, 2))
    out: npt.NDArray[np.bool_] = eroded[0, 0].numpy() > 0.5
    return out


def crop(hu: npt.NDArray[np.float32], c: Any) -> npt.NDArray[np.float32]:
    out = np.full(CROP, -1000.0, np.float32)
    lo = [int(c[i]) - CROP[i] // 2 for i in range(3)]
    src = tuple(slice(max(lo[i], 0), min(lo[i] + CROP[i], hu.shape[i])) for i in range(3))
    dst = tuple(slice(s.start - lo[i], s.stop - lo[i]) for i, s in enumerate(src))
    out[dst] = hu[src]
    return out


def collect(cache: str, cfg: Any, split: str, n: int, rng: np.random.Generator
            ) -> tuple[Tensor, Tensor, list[tuple[float, str]]]:
    xs: list[npt.NDArray[np.float32]] = []
    ys: list[int] = []
    meta: list[tuple[float, str]] = []
    synth = str(REPO / "configs/synth/small.yaml")
    for chunk in iter_cached_chunks(cache, synth, cfg, 7, n, split):
        for r in chunk:
            if r.hu is None or r.label_map is None:
                continue
            hu = r.hu.astype(np.float32)
            nods = [f for f in r.findings if f["kind"] == "lung_nodule"]
            for f in nods:
                m = r.label_map == f["label_value"]
                if not m.any():
                    continue
                c = np.argwhere(m).mean(0).round().astype(int)
                c += [rng.integers(-1, 2), rng.integers(-3, 4), rng.integers(-3, 4)]
                xs.append(crop(hu, c))
                ys.append(1)
                meta.append((float(f["size_mm"]), str(f["attributes"]["composition"])))
            if nods:
                continue
            lung = lung_mask(hu) & (r.label_map == 0)
            cand = np.argwhere(lung)
            if len(cand) == 0:
                continue
            top = cand[np.argsort(hu[lung])[-400:]]  # the brightest lung voxels: vessels
            for c in top[rng.choice(len(top), 2, replace=False)]:
                xs.append(crop(hu, c))
                ys.append(0)
                meta.append((0.0, "vessel_peak"))
            xs.append(crop(hu, cand[rng.integers(len(cand))]))
            ys.append(0)
            meta.append((0.0, "random"))
    x = np.clip((np.stack(xs) + 1350.0) / 1500.0, 0.0, 1.0).astype(np.float32)[:, None]
    return torch.from_numpy(x), torch.tensor(ys, dtype=torch.float32), meta


class Probe(nn.Module):
    """Three stride-1 3 x 3 x 3 convolutions and a 1 x 1 x 1 score, logsumexp over the crop;
    ``pooled``: the input is first reduced like the demo stem (2 x 2 x 2 mean, max, min)."""

    def __init__(self, pooled: bool) -> None:
        super().__init__()
        self.pooled = pooled
        self.net = nn.Sequential(
            nn.Conv3d(3 if pooled else 1, 16, 3, padding=1), nn.GELU(),
            nn.Conv3d(16, 32, 3, padding=1), nn.GELU(),
            nn.Conv3d(32, 32, 3, padding=1), nn.GELU(), nn.Conv3d(32, 1, 1))

    def forward(self, x: Tensor) -> Tensor:  # (B, 1, 6, 24, 24) -> (B,)
        if self.pooled:
            x = torch.cat([F.avg_pool3d(x, 2), F.max_pool3d(x, 2), -F.max_pool3d(-x, 2)], 1)
        out: Tensor = self.net(x).flatten(1).logsumexp(1)
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=1200)
    ap.add_argument("--val", type=int, default=192)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--cache", default=str(REPO / "runs" / "cache"))
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    cfg = load_model_config(REPO / "configs/model/demo.yaml")
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    xtr, ytr, _ = collect(a.cache, cfg, "train", a.cases, rng)
    xva, yva, mva = collect(a.cache, cfg, "val", a.val, rng)
    result: dict[str, Any] = {
        "train_crops": len(ytr), "train_positive": int(ytr.sum()),
        "val_crops": len(yva), "val_positive": int(yva.sum())}
    y = yva.numpy()
    kind = np.array([m[1] for m in mva])
    for pooled in (False, True):
        torch.manual_seed(0)
        net = Probe(pooled)
        opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=0.01)
        for _ in range(a.epochs):
            perm = torch.randperm(len(ytr))
            for i in range(0, len(perm), 64):
                j = perm[i:i + 64]
                xb = xtr[j].flip(-1) if bool(torch.rand(()) < 0.5) else xtr[j]
                loss = F.binary_cross_entropy_with_logits(net(xb), ytr[j])
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
        with torch.no_grad():
            p = torch.sigmoid(net(xva)).numpy()
        res: dict[str, Any] = {"all": auroc(p, y)}
        for neg in ("vessel_peak", "random"):
            sel = (y == 1) | (kind == neg)
            res[f"vs_{neg}"] = auroc(p[sel], y[sel])
        for comp in ("solid", "part_solid", "ground_glass"):
            for lo, hi in SIZES:
                pos = np.array([m[1] == comp and lo <= m[0] < hi for m in mva])
                if pos.sum() >= 3:
                    sel = (y == 0) | pos
                    res[f"{comp}_{lo:g}-{hi:g}mm"] = {"n": int(pos.sum()),
                                                      "auroc": auroc(p[sel], y[sel])}
        result["pooled_2x2x2" if pooled else "full_grid"] = res
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
