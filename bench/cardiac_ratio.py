"""How well does multimodal.cardiac measure the cardiothoracic ratio on generated cases?

Reads every case of a folder written by ``medassist synth`` (DICOM through dicom_io onto the
model grid of ``--checkpoint``'s config), measures the ratio on each (whatever the model
calls) and prints, as JSON: for the cases with a cardiomegaly (the generator's ratio), the
measured ratio against it (mean absolute error, largest error, how many were measured); for
the other cases how many were measured and the quartiles of their ratio; and the AUROC of
the measured ratio for "has a cardiomegaly" over the measured cases; and, for the measured
cardiomegaly cases, the heart's and the thorax's measured width against the generator's.  A
refused measurement (a field of view cutting through a lung, a ratio outside
``heads.measure.ratio_range``) is counted, not scored.

    python bench/cardiac_ratio.py --data /tmp/runs/test_id_body/test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def auroc(pos: list[float], neg: list[float]) -> float | None:
    if not pos or not neg:
        return None
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def _summary(d: list[float]) -> dict[str, float] | None:
    """Mean, smallest and largest of signed differences."""
    if not d:
        return None
    return {"mean": round(float(np.mean(d)), 1), "min": round(min(d), 1),
            "max": round(max(d), 1)}


def main() -> None:
    from medassist.model_data import folder_records
    from multimodal.cardiac import cardiothoracic_ratio
    from multimodal.checkpoint import load_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a split folder of medassist synth")
    ap.add_argument("--checkpoint", default=str(ROOT / "models/demo"),
                    help="whose model grid and heads.measure to use")
    args = ap.parse_args()
    _model, cfg, *_ = load_checkpoint(args.checkpoint)
    rng = cfg.heads.measure.ratio_range
    pairs: list[tuple[float, float | None]] = []
    # cardiomegaly cases measured: (heart, thorax) widths in mm, the generator's (the heart's
    # transverse diameter; the pleural cavity's width at the heart's centre) and the measured
    widths: list[tuple[float, float, float, float]] = []
    others: list[float | None] = []
    spent = 0.0
    for r in folder_records(args.data, cfg):
        t0 = time.perf_counter()
        m = cardiothoracic_ratio(np.asarray(r.hu, np.float32), cfg.ct.spacing_mm,
                                 ratio_range=rng)
        spent += time.perf_counter() - t0
        got = None if m is None else m.ratio
        hearts = [f for f in r.findings if f["kind"] == "cardiomegaly"]
        truth = [float(f["size_mm"]) for f in hearts]
        if truth:
            pairs.append((truth[0], got))
            cavity = hearts[0].get("geometry", {}).get("thoracic_width_mm")
            if m is not None and cavity is not None:
                widths.append((float(cavity) * truth[0], m.heart_width_mm, float(cavity),
                               m.thoracic_width_mm))
        else:
            others.append(got)
    err = [abs(a - b) for a, b in pairs if b is not None]
    meas = [x for x in others if x is not None]
    res: dict[str, Any] = {
        "data": args.data, "ratio_range": list(rng),
        # the measurement alone (the DICOM read and resampling not counted)
        "measure_seconds_per_case": round(spent / max(len(pairs) + len(others), 1), 3),
        "cardiomegaly": {"cases": len(pairs), "measured": len(err),
                         "mae": round(float(np.mean(err)), 4) if err else None,
                         "max_error": round(max(err), 4) if err else None,
                         "pairs": [[a, None if b is None else round(b, 3)] for a, b in pairs],
                         # measured minus generator's, mm: which width the ratio's error
                         # comes from
                         "heart_width_error_mm": _summary([w[1] - w[0] for w in widths]),
                         "thoracic_width_error_mm": _summary([w[3] - w[2] for w in widths])},
        "others": {"cases": len(others), "measured": len(meas),
                   "quartiles": [round(float(q), 3) for q in np.percentile(meas, [0, 25, 50,
                                                                                 75, 100])]
                   if meas else None},
        "auroc_measured": auroc([b for _a, b in pairs if b is not None], meas)}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
