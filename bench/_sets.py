"""The case sets the CT-rule benches score (``bench/pericardium.py``, ``bench/bronchogram.py``):
the checkpoint's generated validation cases, held-out ``medassist synth`` folders and real
CTs without labels."""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def set_parser(description: str) -> argparse.ArgumentParser:
    """``--checkpoint``, ``--val N`` (the first N validation cases, seed 7, cached under
    ``--cache`` for ``--synth-config``), ``--data DIR`` and ``--real STUDY`` (repeatable)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--checkpoint", default=str(REPO / "models/demo"))
    ap.add_argument("--val", type=int, default=0, help="validation cases (0: none)")
    ap.add_argument("--synth-config",
                    default=str(REPO / "configs/synth/small_fleischner_body.yaml"))
    ap.add_argument("--cache", default=str(REPO / "runs/cache"))
    ap.add_argument("--data", action="append", default=[], help="a medassist synth folder")
    ap.add_argument("--real", action="append", default=[], help="a real CT study")
    return ap
