"""Where and why does the dense detector fire on a real CT?  For one finding label (default
consolidation) and a checkpoint with a dense detector (``ct.dense_hidden``): the share of
body cells (dense-grid cells at least 30 % above -500 HU) whose probability is above 0.5,
per z slab and in all, and the finding's presence probability, for

- the real series as read (default: the shared Lung-PET-CT-Dx A0001), with the share of hot
  cells touching the lung, and by slab whether the slab holds lung at all;
- the same series edited: every voxel above -200 HU shifted by -40 / -20 / +20 / +40 HU, soft
  tissue (-200..200 HU) clipped to 30..60 HU, everything above 150 HU set to 60 (no bone or
  contrast), Gaussian-smoothed (SD 1 voxel), and air outside an in-plane ellipse of 0.9 x the
  grid (a body that fills the field of view, cut at its edges, against one surrounded by air);
- generated normal cases of a test directory (``medassist synth``), read from their DICOM as
  the real one is.

If an edit removes the firing, what it edits is the cause; if the generated normals fire as
little as the real series fires much, the cause is something the generator lacks.

    .venv/bin/python bench/dense_probe.py --checkpoint runs/demo_parenchyma
        [--label consolidation] [--real DIR] [--generated DIR/test --n 3]
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
sys.path.insert(0, str(REPO / "bench"))

from finding_visibility import lung_mask  # noqa: E402
from lung_realism import smooth  # noqa: E402

from medassist.drafting import load_model, load_study  # noqa: E402


def fire(lm: Any, hu: np.ndarray, label: str, per_slab: bool = False) -> dict[str, Any]:
    """Hot share of body cells (and of those touching the lung), and presence probability."""
    from multimodal.batching import collate
    from multimodal.training import make_sample

    x, _ = collate([make_sample(lm.cfg, lm.tok, hu=hu, emr=None)])
    with torch.no_grad():
        out = lm.model(x)
    if out.dense_logits is None:
        raise SystemExit("this checkpoint has no dense detector (ct.dense_hidden = 0)")
    names = list(lm.cfg.heads.labels)
    k = names.index(label)
    hot = torch.sigmoid(out.dense_logits[0, k]) > 0.5  # (z, y, x) on the dense grid
    grid = tuple(int(n) for n in hot.shape)
    body = F.adaptive_avg_pool3d(torch.from_numpy(hu > -500).float()[None, None], grid)[0, 0]
    lung = F.adaptive_avg_pool3d(torch.from_numpy(lung_mask(hu)).float()[None, None],
                                 grid)[0, 0]
    b = body > 0.3
    res: dict[str, Any] = {
        "hot_share_of_body_cells": round(float(hot[b].float().mean()), 3),
        "hot_cells_touching_lung_share": round(float((hot & (lung > 0)).sum())
                                               / max(int(hot.sum()), 1), 3),
        "presence": round(float(torch.sigmoid(out.presence_logits[0, k])), 3)}
    if per_slab:
        res["per_slab"] = [{"lung_share": round(float(lung[z].mean()), 3),
                            "hot_share_of_body": round(float(hot[z][b[z]].float().mean()), 3)
                            if bool(b[z].any()) else None} for z in range(grid[0])]
    return res


def edits(hu: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for s in (-40, -20, 20, 40):
        h = hu.copy()
        h[h > -200] += s
        out[f"above -200 HU {s:+d}"] = h
    h = hu.copy()
    m = (h > -200) & (h < 200)
    h[m] = np.clip(h[m], 30, 60)
    out["soft tissue clipped to 30..60"] = h
    h = hu.copy()
    h[h > 150] = 60
    out["above 150 HU set to 60"] = h
    out["smoothed 1 voxel"] = smooth(hu, 1.0)
    _, ny, nx = hu.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    ey, ex = (yy - (ny - 1) / 2) / (0.45 * ny), (xx - (nx - 1) / 2) / (0.45 * nx)
    outside = ey**2 + ex**2 > 1
    h = hu.copy()
    h[:, outside] = -1000.0
    out["air outside an in-plane ellipse of 0.9 x the grid"] = h
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--label", default="consolidation")
    ap.add_argument("--real", default=str(REPO.parent / "shared/data/ct/lung-pet-ct-dx/"
                                          "Lung_Dx-A0001"))
    ap.add_argument("--generated", default="", help="a `medassist synth` split directory")
    ap.add_argument("--n", type=int, default=3, help="generated normal cases to probe")
    args = ap.parse_args(argv)
    lm = load_model(args.checkpoint)
    hu = load_study(args.real, lm.cfg).hu.astype(np.float32)
    res: dict[str, Any] = {"checkpoint": args.checkpoint, "label": args.label,
                           "real": {"series": Path(args.real).name,
                                    "as_read": fire(lm, hu, args.label, per_slab=True)}}
    for name, h in edits(hu).items():
        res["real"][name] = fire(lm, h, args.label)
    if args.generated:
        gen = []
        for d in sorted(Path(args.generated).glob("case_*")):
            truth = json.loads((d / "truth.json").read_text(encoding="utf-8"))
            if truth["findings"]:
                continue
            g = load_study(d / "dicom", lm.cfg).hu.astype(np.float32)
            gen.append({"case": d.name, **fire(lm, g, args.label)})
            if len(gen) == args.n:
                break
        res["generated_normal"] = gen
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
