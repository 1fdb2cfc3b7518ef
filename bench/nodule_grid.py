"""Would a finer model grid make the generated nodules brighter, or candidates?

``bench/nodule_candidates.py`` finds the larger solid nodules among the vessels by shape, but
most nodules are not candidates on the demo grid (5 x 2.75 x 2.75 mm) and those below 10 mm
are faint there.  This bench renders the same generated cases (validation split, seed 7, the
cases with a solid nodule) with the generator's fast path onto the demo grid and onto finer
ones (``--grids``: Z Y X shape and spacing), and prints per grid, for the solid nodules, the
median highest HU inside the nodule's label (all, and below 10 mm), the share that is a
candidate of ``bench/nodule_candidates.py`` (a connected component of lung voxels above
-400 HU), the candidates per case and the seconds per case (render and candidates).  The
simulated acquisition (slice thickness, scanner blur) is the case's own on every grid.

    .venv/bin/python bench/nodule_grid.py [--cases 30]
        [--synth-config configs/synth/small_fleischner_body.yaml]
        [--grids 64,128,128,5,2.75,2.75 64,256,256,5,1.375,1.375 ...]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.nodule_candidates import candidates, lung_mask  # noqa: E402
from medassist.synth.case import make_case  # noqa: E402
from medassist.synth.config import FastPathConfig, load_config  # noqa: E402
from medassist.synth.fast_path import render_tensor  # noqa: E402
from medassist.synth.findings import load_vocabulary  # noqa: E402

GRIDS = ("64,128,128,5,2.75,2.75", "64,256,256,5,1.375,1.375", "128,256,256,2.5,1.375,1.375")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=30, help="cases with a solid nodule")
    ap.add_argument("--synth-config",
                    default=str(REPO / "configs/synth/small_fleischner_body.yaml"))
    ap.add_argument("--grids", nargs="+", default=list(GRIDS))
    ap.add_argument("--level", type=float, default=-400.0)
    a = ap.parse_args(argv)
    grids: list[tuple[tuple[int, int, int], tuple[float, float, float]]] = []
    for g in a.grids:
        v = g.split(",")
        if len(v) != 6:
            ap.error(f"a grid is Z,Y,X,dz,dy,dx, got {g!r}")
        grids.append(((int(v[0]), int(v[1]), int(v[2])),
                      (float(v[3]), float(v[4]), float(v[5]))))
    cfg = load_config(a.synth_config)
    vocab = load_vocabulary(cfg.findings.vocabulary_path())
    stats: list[dict[str, Any]] = [{"peaks": [], "sizes": [], "cand": 0, "ncand": [],
                                    "seconds": 0.0} for _ in grids]
    used = index = 0
    while used < a.cases:
        case = make_case(cfg, vocab, 7, index, "val", False)
        index += 1
        solid = [f for f in (x.to_json(case.anatomy) for x in case.findings)
                 if f["kind"] == "lung_nodule" and f["attributes"].get("composition") == "solid"]
        if not solid:
            continue
        used += 1
        for (shape, spacing), st in zip(grids, stats, strict=True):
            t0 = time.perf_counter()
            hu, lab = render_tensor(case, FastPathConfig(shape=shape, spacing_mm=spacing))
            hu, lab = np.asarray(hu, np.float32), np.asarray(lab)
            cc, feats = candidates(hu, lung_mask(hu), a.level, spacing, 2)
            st["seconds"] += time.perf_counter() - t0
            st["ncand"].append(len(feats))
            for f in solid:
                m = lab == f["label_value"]
                if m.any():
                    st["peaks"].append(float(hu[m].max()))
                    st["sizes"].append(float(f["size_mm"]))
                    st["cand"] += int((cc[m] > 0).any())
    out: dict[str, Any] = {"cases": used, "level": a.level, "grids": {}}
    for g, st in zip(a.grids, stats, strict=True):
        pk, sz = np.asarray(st["peaks"]), np.asarray(st["sizes"])
        out["grids"][g] = {
            "solid_nodules": len(pk),
            "candidate_share": round(st["cand"] / max(len(pk), 1), 3),
            "peak_hu_median": round(float(np.median(pk)), 1) if len(pk) else None,
            "peak_hu_median_below_10mm": round(float(np.median(pk[sz < 10])), 1)
            if (sz < 10).any() else None,
            "candidates_per_case": round(float(np.mean(st["ncand"])), 1),
            "seconds_per_case": round(st["seconds"] / max(used, 1), 2)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
