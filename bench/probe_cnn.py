"""Is the generated data learnable at the previous demo grid? A plain 3D CNN probe.

The grid is the one the demo model used before the pre-pooled fine grid: 32 x 64 x 64 at
10 x 5.5 x 5.5 mm (set here, whatever configs/model/demo.yaml says).

Trains a 4-layer strided Conv3d network on the windowed CT of generated cases (demo grid,
32 x 64 x 64), with per-patch supervision from the label maps (8 x 8 x 8 patches) and a
logsumexp-pooled presence per finding, and prints held-out presence AUROC per finding every
``--every`` steps. It separates "the data carry no learnable signal" from "the fusion model
does not find it within its step budget".

    .venv/bin/python bench/probe_cnn.py [--cases 1200] [--val 192] [--minutes 16]
                                        [--lr 2e-3] [--cache runs/cache]

Cases come from ``medassist.model_data.cached_synth_records`` (configs/synth/small.yaml,
seed 7): the first run generates and caches them (~8 cases/s on an idle machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medassist.model_data import CaseRecord, cached_synth_records, label_targets  # noqa: E402
from multimodal.config import ModelConfig, load_model_config  # noqa: E402
from multimodal.metrics import auroc  # noqa: E402
from multimodal.transforms import MultiWindow  # noqa: E402


def _volumes(r: CaseRecord) -> tuple[npt.NDArray[Any], npt.NDArray[np.uint8]]:
    """The record's HU volume and label map (the cache returns both unless asked not to)."""
    if r.hu is None or r.label_map is None:
        raise ValueError(f"{r.case_id}: the cached record has no HU volume or label map")
    return r.hu, r.label_map


def load(cache: str, cfg: ModelConfig, split: str, n: int) -> tuple[torch.Tensor, ...]:
    c = cfg
    recs = cached_synth_records(cache, str(REPO / "configs/synth/small.yaml"), c, 7, n, split)
    mw = MultiWindow(c.ct.windows)
    labels = c.heads.labels
    x = np.stack([mw(_volumes(r)[0]).astype(np.float16) for r in recs])
    y = np.stack([label_targets(r.findings, labels, c.heads.locations)["present"]
                  for r in recs])
    maps = []
    for r in recs:
        _hu, label_map = _volumes(r)
        vals: dict[str, list[int]] = {}
        for f in r.findings:
            vals.setdefault(f["kind"], []).append(int(f["label_value"]))
        m = np.stack([np.isin(label_map, vals.get(lab, [])) for lab in labels])
        maps.append(m.reshape(len(labels), 8, 4, 8, 8, 8, 8).max((2, 4, 6)))  # 8x8x8 patches
    return torch.tensor(x), torch.tensor(y), torch.tensor(np.stack(maps).astype(np.float32))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1200)
    ap.add_argument("--val", type=int, default=192)
    ap.add_argument("--minutes", type=float, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--cache", default=str(REPO / "runs" / "cache"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    cfg = load_model_config(str(REPO / "configs/model/demo.yaml"))
    # the previous demo grid (the one whose nodules stayed at chance), plain windows
    ct = dataclasses.replace(cfg.ct, grid_shape=(32, 64, 64), spacing_mm=(10.0, 5.5, 5.5),
                             patch=(4, 16, 16), pre_pool=(1, 1, 1), pool_stats=("mean",))
    cfg = dataclasses.replace(cfg, ct=ct)
    labels = cfg.heads.labels
    xt, yt, mt = load(args.cache, cfg, "train", args.cases)
    xv, yv, _ = load(args.cache, cfg, "val", args.val)

    def gn(c: int) -> nn.GroupNorm:
        return nn.GroupNorm(8, c)

    net = nn.Sequential(  # 32x64x64 -> 16x32x32 -> 8x16x16 -> 8x8x8
        nn.Conv3d(3, 16, 3, 2, 1), gn(16), nn.GELU(), nn.Conv3d(16, 32, 3, 2, 1), gn(32),
        nn.GELU(), nn.Conv3d(32, 64, 3, (1, 2, 2), 1), gn(64), nn.GELU(),
        nn.Conv3d(64, 64, 3, 1, 1), gn(64), nn.GELU(), nn.Conv3d(64, len(labels), 1))
    last = net[-1]
    if isinstance(last, nn.Conv3d) and last.bias is not None:
        nn.init.constant_(last.bias, -4.0)
    opt = torch.optim.AdamW(net.parameters(), args.lr)
    t0 = time.time()
    step = 0
    while time.time() - t0 < args.minutes * 60:
        step += 1
        idx = torch.randint(0, len(xt), (8,))
        logits = net(xt[idx].float()).flatten(2)  # (B, F, 512)
        patch = F.binary_cross_entropy_with_logits(
            logits, (mt[idx].flatten(2) > 0).float(), pos_weight=torch.tensor(30.0))
        pres = F.binary_cross_entropy_with_logits(torch.logsumexp(logits, -1) - 2, yt[idx])
        opt.zero_grad()
        (patch + pres).backward()  # type: ignore[no-untyped-call]  # torch: unannotated
        opt.step()
        if step % args.every == 0:
            with torch.no_grad():
                p = torch.cat([torch.logsumexp(net(xv[i:i + 32].float()).flatten(2), -1)
                               for i in range(0, len(xv), 32)]).numpy()
            au = {lab: auroc(p[:, i], yv[:, i].numpy().astype(bool))
                  for i, lab in enumerate(labels)}
            print(json.dumps({"step": step, "s": round(time.time() - t0),
                              "val_auroc": {k: None if v is None else round(v, 2)
                                            for k, v in au.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
