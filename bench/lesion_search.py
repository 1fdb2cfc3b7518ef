"""What does the lesion search in ``multimodal.measure.measure_lesion`` cost, and did the
faster search (stop 45) change any result?

``measure_lesion`` measures a lesion inside a box: candidate centres scored by 26 rays each
(enclosure and depth), then an ellipsoid fitted from the deepest candidates, at each
enclosure level in turn.  Since stop 45 it (1) fits each candidate once, where the enclosure
levels re-tried the same starts, (2) leaves out a candidate too shallow for the diameter
range's smallest value (a fit from depth d is taken only up to 3 d + 10 mm), and (3) leaves
out a candidate too shallow for the depth floor after the first few steps of its rays,
before casting them whole.  Until then (stop 44) every candidate's rays were cast whole and
every start fitted at every level; that search is kept here as the baseline (its loop,
calling the same private functions: the candidates, the fit and the checks on it).

For every case of each ``medassist synth`` folder (``--data``, repeatable; ``--limit`` the
first N of each), read as ``medassist eval`` reads it onto the model grid of
``--checkpoint``, this takes the islands the lung surrounds (``multimodal.islands``, the
checkpoint's ``heads.measure`` settings, at most ``island_max_tries``: where a mass the head
did not call is looked for, the search's heaviest use) and measures a lesion of each range
(``--ranges``, default the mass range and the nodule range of ``heads.measure.lesions``) in
each island's box, baseline and current side by side, interleaved (which goes first
alternates), and prints one JSON object:

* ``identical``: searches whose results are equal (None for both, or the same diameter,
  axes, centre, fit fraction and wall share), of ``n_searches``;
* ``seconds``: the total over all searches, baseline and current, and their ratio.

    .venv/bin/python bench/lesion_search.py --data /tmp/runs/test_id_body/test \\
        [--data DIR ...] [--limit N] [--checkpoint models/demo]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from multimodal import measure  # noqa: E402
from multimodal.config import MeasureConfig  # noqa: E402
from multimodal.islands import lung_islands  # noqa: E402


def baseline_measure(hu: npt.NDArray[np.floating], spacing_mm: Sequence[float],
                     box_voxels: Sequence[int], cfg: MeasureConfig,
                     diameter_range_mm: tuple[float, float]) -> measure.Measurement | None:
    """Stop 44's search: every candidate's rays cast whole (a depth floor of 0), every start
    fitted at every enclosure level, the candidates of the configured floor tried."""
    lo = np.clip(np.asarray(box_voxels[:3]), 0, np.asarray(hu.shape) - 1)
    hi = np.clip(np.asarray(box_voxels[3:]), lo, np.asarray(hu.shape) - 1)
    spacing = np.asarray(spacing_mm, np.float64)
    vol = torch.from_numpy(np.ascontiguousarray(hu, np.float32))[None, None]
    c, enc, depth = measure._candidates(hu, (*lo, *hi), spacing, cfg, 0.0)
    lo_mm, hi_mm = lo * spacing - 5.0, hi * spacing + 5.0
    for level in cfg.enclosure:
        idx = np.nonzero((enc >= level) & (depth >= cfg.min_depth_mm))[0]
        idx = idx[np.argsort(-depth[idx], kind="stable")]
        tried: list[npt.NDArray[np.float64]] = []
        for j in idx:
            start = c[j] * spacing
            if any(np.linalg.norm(start - q) < 15.0 for q in tried):
                continue
            tried.append(start)
            m = measure._accepted(measure._edge_fit(vol, start, spacing, cfg), float(depth[j]),
                                  (lo_mm, hi_mm), spacing, cfg, diameter_range_mm)
            if m is not None:
                return m
            if len(tried) >= cfg.n_tries:
                break
    return None


def same(a: measure.Measurement | None, b: measure.Measurement | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.diameter_mm, a.axes_mm, a.centre_voxel, a.fit_fraction, a.wall_share) == (
        b.diameter_mm, b.axes_mm, b.centre_voxel, b.fit_fraction, b.wall_share)


def run(data: list[str], limit: int | None, checkpoint: str) -> dict[str, Any]:
    from medassist.model_data import folder_records
    from multimodal.checkpoint import load_checkpoint

    _model, cfg, _k, _tok, _m = load_checkpoint(checkpoint)
    mc = cfg.heads.measure
    ranges = [(les[1], les[2]) for les in mc.lesions]
    sp = cfg.ct.spacing_mm
    n = identical = cases = 0
    seconds = {"baseline": 0.0, "current": 0.0}
    for folder in data:
        for k, r in enumerate(folder_records(folder, cfg)):
            if limit is not None and k >= limit:
                break
            cases += 1
            hu = np.asarray(r.hu, np.float32)
            islands = lung_islands(hu, sp, air_hu=mc.air_hu, lung_share=mc.island_lung_share,
                                   min_ml=mc.island_min_ml)[:mc.island_max_tries]
            for island in islands:
                for rng in ranges:
                    got: dict[str, measure.Measurement | None] = {}
                    order = (("baseline", baseline_measure), ("current", measure.measure_lesion))
                    for name, fn in order if n % 2 == 0 else order[::-1]:
                        t0 = time.perf_counter()
                        got[name] = fn(hu, sp, island.box_voxels, mc, rng)
                        seconds[name] += time.perf_counter() - t0
                    n += 1
                    identical += same(got["baseline"], got["current"])
    return {"checkpoint": checkpoint, "data": data, "limit": limit, "n_cases": cases,
            "ranges_mm": ranges, "n_searches": n, "identical": identical,
            "seconds": {k: round(v, 2) for k, v in seconds.items()}
            | {"baseline_over_current": round(seconds["baseline"]
                                              / max(seconds["current"], 1e-9), 2)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--data", action="append", required=True, metavar="DIR")
    ap.add_argument("--limit", type=int, default=None, metavar="N")
    ap.add_argument("--checkpoint", default=str(REPO / "models" / "demo"))
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    print(json.dumps(run(a.data, a.limit, a.checkpoint), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
