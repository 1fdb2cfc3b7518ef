"""``medassist synth OUT --cases N --seed S [--config PATH] [--split ...] [--shift]``.

Writes ``OUT/<split>/case_XXXXX/{dicom/..., emr.txt, emr_fhir.json, truth.json, report.txt,
labels.npy.gz}``.  Splits use disjoint seed streams (``SeedSequence([seed, split, shift,
index])``); ``--split all`` writes train/val/test with the configured fractions of N.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from medassist.synth.errors import SynthError


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "synth", help="generate synthetic CT + EMR + reference-report cases",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--cases", type=int, required=True, help="number of cases (N)")
    p.add_argument("--seed", type=int, required=True, help="seed (same seed, same bytes)")
    p.add_argument("--config", type=Path, default=None, help="YAML (configs/synth/*.yaml)")
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="train")
    p.add_argument("--shift", action="store_true",
                   help="out-of-distribution scanner, noise, slice thickness and patient size")
    p.set_defaults(func=run)


def split_counts(n: int, split: str, fractions: tuple[float, float, float]) -> dict[str, int]:
    if split != "all":
        return {split: n}
    val = round(n * fractions[1])
    test = round(n * fractions[2])
    return {"train": n - val - test, "val": val, "test": test}


def run(args: argparse.Namespace) -> int:
    from medassist.synth.case import make_case
    from medassist.synth.config import load_config
    from medassist.synth.findings import load_vocabulary
    from medassist.synth.writer import write_case

    try:
        if args.cases < 1:
            raise SynthError("--cases must be >= 1")
        if args.seed < 0:
            raise SynthError("--seed must be >= 0")
        cfg = load_config(args.config)
        vocab = load_vocabulary(cfg.findings.vocabulary_path())
        counts = split_counts(args.cases, args.split,
                              (cfg.splits.train, cfg.splits.val, cfg.splits.test))
        t0 = time.perf_counter()
        done = 0
        for split, n in counts.items():
            for i in range(n):
                case = make_case(cfg, vocab, args.seed, i, split, args.shift)
                write_case(case, cfg, args.out / split / case.case_id)
                done += 1
        dt = time.perf_counter() - t0
        print(f"wrote {done} case(s) to {args.out} in {dt:.1f} s", file=sys.stderr)
        return 0
    except SynthError as exc:
        print(f"medassist synth: error: {exc}", file=sys.stderr)
        return 2
