"""Which mass calls would the air-bronchogram rule take back (``multimodal.bronchogram``)?

The findings head calls a mass in many consolidations of the generated chests.  For every mass
the checkpoint calls (its presence decision, before the CT rules of ``multimodal.measure``)
where it calls a consolidation too, this bench counts the air bronchograms in the mass's
evidence box, and splits the calls into true and false ones by the reference:

* ``--val N``: the first N generated validation cases (seed 7; the cases the configured
  ``bronchogram_min_voxels`` was chosen on; cached like ``bench/pericardium.py``'s);
* ``--data DIR`` (repeatable): the cases of a ``medassist synth`` folder (a held-out split);
* ``--real STUDY`` (repeatable): a real CT without labels (the count of each mass call).

Per set it prints the counts of the true and of the false calls (sorted) and, for each minimum
count from 1 to 5, how many of each the rule would take back.

    .venv/bin/python bench/bronchogram.py [--checkpoint models/demo] [--val 480]
        [--synth-config configs/synth/small_fleischner_body.yaml] [--cache runs/cache]
        [--data DIR ...] [--real STUDY ...]

Prints one JSON object.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._sets import set_parser  # noqa: E402

Case = tuple[Sequence[str] | None, np.ndarray, dict[str, Any]]


def counts(model: Any, cfg: Any, cases: Iterable[Case]) -> Iterator[tuple[bool | None, int]]:
    """(reference labels or None, HU volume, model sample with its note) -> (true call or
    None, count) per mass call made together with a ``bronchogram_within`` call."""
    import torch

    from multimodal.batching import collate
    from multimodal.bronchogram import air_bronchograms
    from multimodal.heads import predict_findings

    m = cfg.heads.measure
    for truth, hu, sample in cases:
        x, _ = collate([sample])
        with torch.no_grad():
            out = model(x)
        preds = {p.label: p for p in predict_findings(out, cfg.heads, cfg.ct, None)[0]}
        within = preds.get(m.bronchogram_within)
        if within is None or not within.present:
            continue
        for lab in m.bronchogram_labels:
            p = preds.get(lab)
            if p is None or not p.present or p.box_voxels is None:
                continue
            n = air_bronchograms(hu, cfg.ct.spacing_mm, p.box_voxels,
                                 radius_mm=m.bronchogram_radius_mm,
                                 share=m.bronchogram_share, hu_range=m.bronchogram_hu)
            yield (None if truth is None else lab in truth), n


def score(found: Iterable[tuple[bool | None, int]]) -> dict[str, Any]:
    got = list(found)
    tp = sorted(n for t, n in got if t)
    fp = sorted(n for t, n in got if t is False)
    return {"true_calls": tp, "false_calls": fp,
            "taken_back": {str(k): {"true": sum(n >= k for n in tp),
                                    "false": sum(n >= k for n in fp)} for k in range(1, 6)}}


def main() -> None:
    args = set_parser(__doc__.split("\n")[0]).parse_args()

    from medassist.drafting import load_study
    from medassist.model_data import CaseRecord, folder_records, iter_cached_chunks, record_sample
    from multimodal.checkpoint import load_checkpoint
    from multimodal.training import make_sample

    model, cfg, _kind, tok, _meta = load_checkpoint(args.checkpoint)
    model.eval()
    m = cfg.heads.measure
    out: dict[str, Any] = {"checkpoint": args.checkpoint, "labels": list(m.bronchogram_labels),
                           "within": m.bronchogram_within, "share": m.bronchogram_share,
                           "radius_mm": m.bronchogram_radius_mm,
                           "hu": list(m.bronchogram_hu), "min_voxels": m.bronchogram_min_voxels}

    def case(r: CaseRecord) -> Case:
        # the presence decisions medassist eval scores: CT and note
        return ([str(f["kind"]) for f in r.findings], np.asarray(r.hu, np.float32),
                record_sample(r, cfg, tok, with_report=False))

    if args.val:
        out["val"] = score(counts(model, cfg, (
            case(r) for chunk in iter_cached_chunks(args.cache, args.synth_config, cfg, 7,
                                                    args.val, "val") for r in chunk)))
    for d in args.data:
        out[d] = score(counts(model, cfg, (case(r) for r in folder_records(d, cfg))))
    for s in args.real:
        hu = np.asarray(load_study(s, cfg).hu, np.float32)
        sample = make_sample(cfg, tok, hu=hu, emr=None)
        out[s] = {"counts": [n for _t, n in counts(model, cfg, [(None, hu, sample)])]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
