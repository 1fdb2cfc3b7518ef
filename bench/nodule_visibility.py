"""Can a fixed detector see the generated nodules?  The maximum of the (smoothed) HU inside
the eroded lung, per case, as a nodule score.

Cases of one cached training chunk (configs/synth/small.yaml, seed 7, the demo grid) whose
only lung finding is a nodule, against those with no lung finding; prints the AUROC of each
score: raw HU, 1 x 3 x 3 and 3 x 3 x 3 box means, and the 1 x 3 x 3 mean minus a 3 x 9 x 9
background mean.  Near 0.5 means the generated lungs hold other bright structures (vessels)
that a blob-maximum cannot tell from a nodule.

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

from medassist.model_data import cached_synth_records  # noqa: E402
from multimodal.config import load_model_config  # noqa: E402
from multimodal.metrics import auroc  # noqa: E402

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
    scores: dict[str, list[float]] = {"raw": [], "box133": [], "box333": [], "dog": []}
    ys = []
    for r in recs:
        kinds = {str(f["kind"]) for f in r.findings} & LUNG
        if (kinds and kinds != {"lung_nodule"}) or r.hu is None:
            continue
        v = torch.tensor(r.hu.astype(np.float32))[None, None]
        lung = F.avg_pool3d(v, (1, 5, 5), 1, (0, 2, 2)) < -600
        lung = -F.max_pool3d(-lung.float(), (1, 5, 5), 1, (0, 2, 2)) > 0.5  # eroded
        if not bool(lung.any()):
            continue
        s133 = F.avg_pool3d(v, (1, 3, 3), 1, (0, 1, 1))
        for name, t in (("raw", v), ("box133", s133),
                        ("box333", F.avg_pool3d(v, 3, 1, 1)),
                        ("dog", s133 - F.avg_pool3d(v, (3, 9, 9), 1, (1, 4, 4)))):
            scores[name].append(float(t[lung].max()))
        ys.append("lung_nodule" in kinds)
    y = np.array(ys)
    print(json.dumps({"cases": len(y), "with_nodule": int(y.sum()),
                      "auroc": {k: auroc(np.array(v), y) for k, v in scores.items()}},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
