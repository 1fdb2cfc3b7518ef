"""Which of the ``--shift`` split's factors costs a checkpoint its findings?

The shift split (``SynthConfig.shifted``, ``SHIFT_GROUPS``) changes four groups of generator
settings at once: the scanner (model, kVp, mAs, soft kernel, noise scale), the slice
thickness, the patient size (``anatomy.size_scale``) and the subcutaneous fat
(``anatomy.fat_mm``).  This bench
writes ``--cases`` test cases (DICOM, like ``medassist synth``) of the base generator
config, of the config with one group replaced by its shift values at a time, and of the
whole shift (``--shift``), and scores the checkpoint's findings on each (``medassist eval``'s
metrics, both modalities, no text): micro-F1, macro AUROC, laterality on true positives and
per label TP / FP / FN / AUROC.  The one-group variants keep the base split's random stream
(``shift`` False), so they hold the same patients and findings as the base cases, apart from
draws that depend on the changed geometry; the whole shift draws its own cases.

    .venv/bin/python bench/shift_factors.py CHECKPOINT [--cases 60] [--seed 7]
        [--synth-config configs/synth/small_fleischner_body.yaml] [--out runs/shift_factors]
        [--groups scanner slices size fat]

Cases are written under ``--out``/<variant>/test (rewritten each run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medassist.model_data import folder_records, record_sample  # noqa: E402
from medassist.model_eval import evaluate  # noqa: E402
from medassist.synth.case import make_case  # noqa: E402
from medassist.synth.config import SHIFT_GROUPS, SynthConfig, load_config  # noqa: E402
from medassist.synth.findings import load_vocabulary  # noqa: E402
from medassist.synth.writer import write_case  # noqa: E402
from multimodal.checkpoint import load_checkpoint  # noqa: E402


def write_split(cfg: SynthConfig, out: Path, cases: int, seed: int, shift: bool) -> Path:
    vocab = load_vocabulary(cfg.findings.vocabulary_path())
    if out.exists():
        shutil.rmtree(out)
    for i in range(cases):
        case = make_case(cfg, vocab, seed, i, "test", shift)
        write_case(case, cfg, out / "test" / case.case_id)
    return out / "test"


def score(model: Any, mcfg: Any, tok: Any, folder: Path) -> dict[str, Any]:
    recs = list(folder_records(folder, mcfg))
    samples = [record_sample(r, mcfg, tok, with_report=False) for r in recs]
    with torch.no_grad():
        m = evaluate(model, mcfg, samples, modes=(None,), injection=False)["full"]
    per = {lab: {k: v[k] for k in ("tp", "fp", "fn", "auroc")}
           for lab, v in m["per_finding"].items() if v["support"] or v["fp"]}
    return {"n_cases": len(samples), "micro_f1": m["micro_f1"],
            "macro_auroc": m["macro_auroc"], "laterality_acc_tp": m["laterality_acc_tp"],
            "findings_called": int(sum(v["tp"] + v["fp"] for v in m["per_finding"].values())),
            "per_finding": per}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--synth-config",
                    default=str(REPO / "configs/synth/small_fleischner_body.yaml"))
    ap.add_argument("--out", default=str(REPO / "runs" / "shift_factors"))
    ap.add_argument("--groups", nargs="+", default=list(SHIFT_GROUPS), choices=SHIFT_GROUPS)
    a = ap.parse_args(argv)
    model, mcfg, _kind, tok, _meta = load_checkpoint(a.checkpoint)
    base = load_config(Path(a.synth_config))
    variants: list[tuple[str, SynthConfig, bool]] = [("base", base, False)]
    variants += [(g, base.shifted((g,)), False) for g in a.groups]
    variants.append(("all (--shift)", base, True))
    res: dict[str, Any] = {"checkpoint": a.checkpoint, "synth_config": a.synth_config,
                           "cases": a.cases, "seed": a.seed, "variants": {}}
    for name, cfg, shift in variants:
        t0 = time.perf_counter()
        folder = write_split(cfg, Path(a.out) / name.split()[0], a.cases, a.seed, shift)
        res["variants"][name] = {**score(model, mcfg, tok, folder),
                                 "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
