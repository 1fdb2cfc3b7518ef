"""Benchmark the case generator: cases per second for the tensor path and the DICOM path.

    .venv/bin/python bench/synth.py [--cases N] [--config configs/synth/small.yaml]

The tensor path is make_case + render_tensor (the model grid of the config's fast_path);
the DICOM path is make_case + write_case (render, DICOM, EMR, FHIR, truth, report, labels).
Figures are measured here; nothing is assumed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from medassist.synth.case import make_case
from medassist.synth.config import load_config
from medassist.synth.fast_path import render_tensor
from medassist.synth.findings import load_vocabulary
from medassist.synth.writer import write_case

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "synth" / "small.yaml")
    args = ap.parse_args()
    cfg = load_config(args.config)
    vocab = load_vocabulary(cfg.findings.vocabulary_path())
    t0 = time.perf_counter()
    for i in range(args.cases):
        render_tensor(make_case(cfg, vocab, args.seed, i), cfg.fast_path, as_torch=True)
    tensor_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for i in range(args.cases):
            case = make_case(cfg, vocab, args.seed, i)
            write_case(case, cfg, Path(tmp) / case.case_id)
        dicom_s = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
    print(json.dumps({
        "config": str(args.config), "cases": args.cases,
        "model_grid": {"shape": list(cfg.fast_path.shape),
                       "spacing_mm": list(cfg.fast_path.spacing_mm)},
        "dicom_matrix": list(cfg.geometry.matrix),
        "slice_thickness_mm": list(cfg.geometry.slice_thickness_mm),
        "tensor_path_cases_per_s": round(args.cases / tensor_s, 3),
        "dicom_path_cases_per_s": round(args.cases / dicom_s, 3),
        "dicom_path_mb_per_case": round(size / args.cases / 1e6, 2),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
