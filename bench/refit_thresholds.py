"""Fit per-label decision thresholds for an existing checkpoint and write a copy with them.

Used to separate the effect of fitted thresholds from the other changes of a retrained
checkpoint: a checkpoint written before thresholds existed decides at 0.5; this fits them the
way training does (``multimodal.training.fit_thresholds`` on the generated validation cases of
its own grid, ``configs/synth/small.yaml`` seed 7) and leaves the weights untouched.

    .venv/bin/python bench/refit_thresholds.py SRC DST [--val 192] [--cache runs/cache]
    medassist eval --checkpoint DST --data DIR --json
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medassist.model_data import cached_synth_records, record_sample  # noqa: E402
from multimodal.checkpoint import WEIGHTS, load_checkpoint  # noqa: E402
from multimodal.training import fit_thresholds, predict  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--val", type=int, default=192)
    ap.add_argument("--cache", default=str(REPO / "runs" / "cache"))
    args = ap.parse_args(argv)
    from safetensors.torch import save_file

    model, cfg, _kind, tok, _meta = load_checkpoint(args.src)
    val = cached_synth_records(args.cache, str(REPO / "configs/synth/small.yaml"), cfg, 7,
                               args.val, "val")
    samples = [record_sample(r, cfg, tok, 512, with_report=False) for r in val]
    prob = torch.cat([o.presence_prob for o in predict(model, samples)])
    y = torch.as_tensor(np.stack([s["present"] for s in samples])).float()
    thr = fit_thresholds(prob, y)
    model.get_submodule("findings").get_buffer("thresholds").copy_(thr)
    shutil.copytree(args.src, args.dst, dirs_exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(Path(args.dst) / WEIGHTS))
    print(dict(zip(cfg.heads.labels, [round(float(t), 2) for t in thr], strict=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
