"""Can a fixed detector see the generated nodules?  The maximum of a fixed score inside the
lung, per case, as a nodule score.

Cases of one cached training chunk (configs/synth/small.yaml, seed 7, the demo grid) whose
only lung finding is a nodule, against those with no lung finding; prints the AUROC of each
score: raw HU, 1 x 3 x 3 and 3 x 3 x 3 box means, the 1 x 3 x 3 mean minus a 3 x 9 x 9
background mean, and the bright-blob determinant-of-Hessian response
(:class:`multimodal.transforms.BlobEnhance`) at 2.5 and 3.5 mm.  Each inside two lung masks:
``box`` (1 x 5 x 5 mean below -600 HU, eroded 1 x 5 x 5; it also keeps the air around the
body: the mask of the first version of this script) and ``air`` (the air-density voxels not
connected to the image border, ``finding_visibility.lung_mask``, eroded 1 x 5 x 5 so that the
chest wall's partial volume is out).  Near 0.5 means the generated lungs hold other bright
structures (vessels) that a blob-maximum cannot tell from a nodule.

    .venv/bin/python bench/nodule_visibility.py [--cases 200] [--cache runs/cache]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.finding_visibility import lung_mask  # noqa: E402
from medassist.model_data import cached_synth_records  # noqa: E402
from multimodal.config import load_model_config  # noqa: E402
from multimodal.metrics import auroc  # noqa: E402
from multimodal.transforms import BlobEnhance  # noqa: E402

LUNG = {"lung_nodule", "lung_mass", "consolidation", "emphysema", "pneumothorax",
        "pleural_effusion"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--cache", default=str(REPO / "runs" / "cache"))
    a = ap.parse_args(argv)
    cfg = load_model_config(REPO / "configs/model/demo.yaml")
    recs = cached_synth_records(a.cache, str(REPO / "configs/synth/small.yaml"), cfg, 7,
                                a.cases)
    blob = BlobEnhance(cfg.ct.spacing_mm, (2.5, 3.5))
    scores: dict[str, dict[str, list[float]]] = {"box": {}, "air": {}}
    ys = []
    for r in recs:
        kinds = {str(f["kind"]) for f in r.findings} & LUNG
        if (kinds and kinds != {"lung_nodule"}) or r.hu is None:
            continue
        hu = r.hu.astype(np.float32)
        v = torch.from_numpy(hu)[None, None]
        box = F.avg_pool3d(v, (1, 5, 5), 1, (0, 2, 2)) < -600
        air = torch.from_numpy(lung_mask(hu))[None, None]
        masks = {m: -F.max_pool3d(-t.float(), (1, 5, 5), 1, (0, 2, 2)) > 0.5  # eroded
                 for m, t in (("box", box), ("air", air))}
        if not all(bool(m.any()) for m in masks.values()):
            continue
        s133 = F.avg_pool3d(v, (1, 3, 3), 1, (0, 1, 1))
        maps = {"raw": v, "box133": s133, "box333": F.avg_pool3d(v, 3, 1, 1),
                "dog": s133 - F.avg_pool3d(v, (3, 9, 9), 1, (1, 4, 4))}
        for sc in blob.scales:
            maps[f"blob{sc:g}mm"] = blob.response(hu, sc)[None, None]
        for m, lung in masks.items():
            for name, t in maps.items():
                scores[m].setdefault(name, []).append(float(t[lung].max()))
        ys.append("lung_nodule" in kinds)
    y = np.array(ys)
    print(json.dumps({"cases": len(y), "with_nodule": int(y.sum()),
                      "auroc": {m: {k: auroc(np.array(v), y) for k, v in sc.items()}
                                for m, sc in scores.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
