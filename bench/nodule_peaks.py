"""How bright are the generated nodules on the model grid?  Per nodule composition (and for
masses): the count, the median reference size, and the quartiles of the highest HU inside
each finding's label, on cached generated cases.

A solid nodule is drawn at soft-tissue density; after the slab average of a 5 mm slice, the
scanner's blur and the resampling to the model grid its peak is far lower, which is what a
detector on this grid has to find among the lung's vessels.

    .venv/bin/python bench/nodule_peaks.py [--cases 400] [--cache runs/cache]
        [--synth-config configs/synth/small_fleischner_body.yaml] [--split train]

Prints one JSON object (cases from ``medassist.model_data.cached_synth_records``, seed 7, the
model grid of configs/model/demo_laa.yaml).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medassist.model_data import cached_synth_records  # noqa: E402
from multimodal.config import load_model_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=400)
    ap.add_argument("--cache", default=str(REPO / "runs" / "cache"))
    ap.add_argument("--synth-config",
                    default=str(REPO / "configs/synth/small_fleischner_body.yaml"))
    ap.add_argument("--split", default="train")
    a = ap.parse_args(argv)
    cfg = load_model_config(REPO / "configs/model/demo_laa.yaml")
    recs = cached_synth_records(a.cache, a.synth_config, cfg, 7, a.cases, a.split)
    peaks: dict[str, list[tuple[float, float]]] = defaultdict(list)
    unlabelled: dict[str, int] = defaultdict(int)
    for r in recs:
        if r.hu is None or r.label_map is None:
            continue
        for i, f in enumerate(r.findings):
            if f["kind"] not in ("lung_nodule", "lung_mass"):
                continue
            key = f["kind"] if f["kind"] == "lung_mass" else \
                f"lung_nodule/{f['attributes'].get('composition', 'solid')}"
            m = r.label_map == i + 1
            if not m.any():  # outside the grid
                unlabelled[key] += 1
                continue
            peaks[key].append((float(f["size_mm"]), float(r.hu[m].max())))
    out = {}
    for key, v in sorted(peaks.items()):
        size, hu = np.array([s for s, _ in v]), np.array([h for _, h in v])
        out[key] = {"n": len(v), "unlabelled": unlabelled[key],
                    "median_size_mm": round(float(np.median(size)), 1),
                    "peak_hu_quartiles": [round(float(q), 1)
                                          for q in np.percentile(hu, [25, 50, 75])]}
    print(json.dumps({"cases": len(recs), "synth_config": a.synth_config, "findings": out},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
