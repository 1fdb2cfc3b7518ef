"""How well does ``multimodal.pericardium`` find and measure a pericardial effusion?

The checkpoint's fitted threshold never calls pericardial effusion (its head ranks it, but no
threshold on the validation cases helped the micro-F1); the draft calls it where the CT shows a
band of fluid around the heart (``heads.measure.fluid_*``).  This bench scores that measurement
alone on the checkpoint's model grid:

* ``--val N``: the first N generated validation cases (seed 7, the cases the cut-off
  ``fluid_min_share`` was chosen on; cached like ``bench/val_eval.py``'s);
* ``--data DIR`` (repeatable): the cases of a ``medassist synth`` folder (a held-out split),
  read from their DICOM files as ``medassist eval`` does;
* ``--real STUDY`` (repeatable): a real CT without labels (its share and thickness only).

Per set it prints the cases with and without an effusion, the band share of each case with one
(sorted) and the five highest without, the calls at the configured ``fluid_min_share`` (true
and false positives, misses), the thickness MAE on the true positives against the reference
(the generator's maximal fluid thickness), and the median and largest time per case.

    .venv/bin/python bench/pericardium.py [--checkpoint models/demo] [--val 480]
        [--synth-config configs/synth/small_fleischner_body.yaml] [--cache runs/cache]
        [--data DIR ...] [--real STUDY ...]

Prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._sets import set_parser  # noqa: E402

LABEL = "pericardial_effusion"


def score(cases: Iterable[tuple[str, float, np.ndarray]], spacing: Sequence[float],
          cfg: Any) -> dict[str, Any]:
    """(case id, reference thickness in mm or 0, HU volume) -> the set's figures."""
    from multimodal.pericardium import pericardial_fluid

    pos: list[tuple[float, float, float, str]] = []  # share, reference, measured, case
    neg: list[tuple[float, str]] = []
    times: list[float] = []
    for case_id, ref, hu in cases:
        t0 = time.perf_counter()
        f = pericardial_fluid(hu, spacing, fluid_hu=cfg.fluid_hu, band_mm=cfg.fluid_band_mm)
        times.append(time.perf_counter() - t0)
        share = 0.0 if f is None else f.share
        if ref > 0:
            pos.append((share, ref, 0.0 if f is None else f.thickness_mm, case_id))
        else:
            neg.append((share, case_id))
    thr = cfg.fluid_min_share
    tp = [p for p in pos if p[0] >= thr]
    return {
        "cases": len(pos) + len(neg), "with_effusion": len(pos),
        "share_with": sorted(round(p[0], 3) for p in pos),
        "share_without_top5": [round(s, 3) for s, _ in sorted(neg, reverse=True)[:5]],
        "min_share": thr,
        "tp": len(tp), "fp": sum(s >= thr for s, _ in neg), "fn": len(pos) - len(tp),
        "missed": [{"case": p[3], "reference_mm": p[1], "share": round(p[0], 3)}
                   for p in pos if p[0] < thr],
        "false_calls": [c for s, c in neg if s >= thr],
        "thickness_mae_mm_tp": round(float(np.mean([abs(p[2] - p[1]) for p in tp])), 2)
        if tp else None,
        "thickness_pairs_mm_tp": [[round(p[1], 1), round(p[2], 1)] for p in tp],
        "seconds_median": round(float(np.median(times)), 3) if times else None,
        "seconds_max": round(float(np.max(times)), 3) if times else None,
    }


def _reference(findings: Sequence[dict[str, Any]]) -> float:
    return max((float(f["size_mm"]) for f in findings if f["kind"] == LABEL), default=0.0)


def main() -> None:
    args = set_parser(__doc__.split("\n")[0]).parse_args()

    from medassist.drafting import load_study
    from medassist.model_data import folder_records, iter_cached_chunks
    from multimodal.checkpoint import load_checkpoint
    from multimodal.pericardium import pericardial_fluid

    _model, cfg, *_ = load_checkpoint(args.checkpoint)
    sp = cfg.ct.spacing_mm
    mcfg = cfg.heads.measure
    out: dict[str, Any] = {"checkpoint": args.checkpoint, "fluid_hu": list(mcfg.fluid_hu),
                           "fluid_band_mm": mcfg.fluid_band_mm}
    if args.val:
        def val_cases() -> Iterable[tuple[str, float, np.ndarray]]:
            for chunk in iter_cached_chunks(args.cache, args.synth_config, cfg, 7, args.val,
                                            "val"):
                for r in chunk:
                    yield r.case_id, _reference(r.findings), np.asarray(r.hu, np.float32)
        out["val"] = score(val_cases(), sp, mcfg)
    for d in args.data:
        out[d] = score(((r.case_id, _reference(r.findings), np.asarray(r.hu, np.float32))
                        for r in folder_records(d, cfg)), sp, mcfg)
    for s in args.real:
        hu = np.asarray(load_study(s, cfg).hu, np.float32)
        f = pericardial_fluid(hu, sp, fluid_hu=mcfg.fluid_hu, band_mm=mcfg.fluid_band_mm)
        out[s] = None if f is None else {
            "share": round(f.share, 3), "called": f.share >= mcfg.fluid_min_share,
            "thickness_mm": round(f.thickness_mm, 1), "rays": f.n_rays,
            "slices": list(f.slices)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
