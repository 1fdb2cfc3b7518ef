"""Fingerprint the case generator: a short SHA-256 of the fast-path HU and label bytes of the
first cases of several configs, in distribution and under ``--shift``.  Run it before and after
a generator change that is meant to leave existing configs alone (an opt-in option): the two
outputs must be identical.

    .venv/bin/python bench/synth_fingerprint.py [--cases 6] [--seed 7] [CONFIG ...]

Default configs: small, small_fleischner, small_fleischner_parenchyma_emphysema and default.
Prints one line per case, ``config index shift digest``, then one digest of all of them.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_CONFIGS = ("configs/synth/small.yaml", "configs/synth/small_fleischner.yaml",
                   "configs/synth/small_fleischner_parenchyma_emphysema.yaml",
                   "configs/synth/default.yaml")


def main(argv: list[str] | None = None) -> int:
    from medassist.synth.case import make_case
    from medassist.synth.config import load_config
    from medassist.synth.fast_path import render_tensor
    from medassist.synth.findings import load_vocabulary

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="*", default=list(DEFAULT_CONFIGS))
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    total = hashlib.sha256()
    for c in args.configs:
        cfg = load_config(REPO / c if not Path(c).is_absolute() else c)
        voc = load_vocabulary(cfg.findings.vocabulary_path())
        for i in range(args.cases):
            for shift in (False, True):
                hu, labels = render_tensor(make_case(cfg, voc, args.seed, i, "test", shift=shift),
                                           cfg.fast_path)
                h = hashlib.sha256(hu.tobytes() + labels.tobytes()).hexdigest()[:16]
                total.update(h.encode())
                print(f"{c} {i} {'shift' if shift else 'id'} {h}")
    print(f"all {total.hexdigest()[:16]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
