"""How noisy are the scans the model reads (``multimodal.noise.noise_index``, on the grid)?

A scan noisier than the checkpoint's training cases can be smoothed down to their level before
the model reads it (``ct.noise_max_index``, ``medassist eval --noise-max-index``).  This bench
prints the index of each set, by acquisition for generated cases (kVp and slice thickness, read
from each case's ``truth.json``):

* ``--val N``: the first N generated validation cases (seed 7; the noisiest of them is the
  level a checkpoint's ``noise_max_index`` is set to); cached like ``bench/pericardium.py``'s;
* ``--data DIR`` (repeatable): the cases of a ``medassist synth`` folder;
* ``--real STUDY`` (repeatable): a real CT.

With ``--calls`` each folder's acquisition groups also count the checkpoint's false calls per
label (its presence decisions with CT and note and the rules on the CT, as ``medassist eval``
makes them, at the checkpoint's own ``noise_max_index`` or ``--noise-max-index``).

    .venv/bin/python bench/noise.py [--checkpoint models/demo] [--val 480]
        [--cache runs/cache] [--data DIR ...] [--real STUDY ...] [--calls]
        [--noise-max-index HU]

Prints one JSON object: per set (and acquisition) the count, min, median and max index.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._sets import set_parser  # noqa: E402


def summary(values: Iterable[float | None]) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None], np.float64)
    if not v.size:
        return {"n": 0}
    return {"n": int(v.size), "min": round(float(v.min()), 2),
            "median": round(float(np.median(v)), 2), "max": round(float(v.max()), 2)}


def false_calls(model: Any, cfg: Any, tok: Any, records: list[Any]) -> list[list[str]]:
    """Per record, the labels the checkpoint calls that its reference does not hold."""
    from medassist.model_data import record_sample
    from multimodal.heads import predict_findings
    from multimodal.measure import measure_findings
    from multimodal.training import predict

    outs = predict(model, [record_sample(r, cfg, tok, with_report=False) for r in records])
    cases = [c for o in outs for c in predict_findings(o, cfg.heads, cfg.ct, None)]
    res = []
    for r, case in zip(records, cases, strict=True):
        kinds = {str(f["kind"]) for f in r.findings}
        case = measure_findings(case, r.hu, cfg.ct.spacing_mm, cfg.heads.measure)
        res.append([p.label for p in case if p.present and p.label not in kinds])
    return res


def main() -> None:
    ap = set_parser(__doc__.split("\n")[0])
    ap.add_argument("--calls", action="store_true",
                    help="count the checkpoint's false calls per acquisition (--data)")
    ap.add_argument("--noise-max-index", type=float, default=None, metavar="HU",
                    help="the level --calls smooths to (overrides ct.noise_max_index; 0: off)")
    args = ap.parse_args()

    from medassist.drafting import load_study
    from medassist.model_data import folder_records, iter_cached_chunks
    from multimodal.checkpoint import load_checkpoint
    from multimodal.noise import noise_index

    model, cfg, _kind, tok, _meta = load_checkpoint(args.checkpoint)
    if args.noise_max_index is not None:
        cfg = replace(cfg, ct=replace(cfg.ct, noise_max_index=args.noise_max_index))
    out: dict[str, Any] = {"checkpoint": args.checkpoint,
                           "noise_max_index": cfg.ct.noise_max_index}
    if args.val:
        out["val"] = summary(noise_index(np.asarray(r.hu, np.float32))
                             for chunk in iter_cached_chunks(args.cache, args.synth_config, cfg,
                                                             7, args.val, "val")
                             for r in chunk)
    for d in args.data:
        groups: dict[str, list[float | None]] = {}
        fps: dict[str, Counter[str]] = {}
        records = list(folder_records(d, cfg))
        wrong = false_calls(model, cfg, tok, records) if args.calls else [[]] * len(records)
        for r, labels in zip(records, wrong, strict=True):
            truth = json.loads((Path(d) / r.case_id / "truth.json").read_text(encoding="utf-8"))
            acq = truth.get("acquisition", {})
            thickness = acq.get("grid", {}).get("spacing_zyx", ["?"])[0]
            key = f"{acq.get('kvp', '?')} kVp, {thickness} mm"
            groups.setdefault(key, []).append(noise_index(np.asarray(r.hu, np.float32)))
            fps.setdefault(key, Counter()).update(labels)
        out[d] = {"all": summary(v for g in groups.values() for v in g),
                  **{k: {**summary(g), **({"false_calls": dict(sorted(fps[k].items()))}
                                          if args.calls else {})}
                     for k, g in sorted(groups.items())}}
    for s in args.real:
        out[s] = noise_index(load_study(s, cfg).hu)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
