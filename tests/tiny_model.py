"""A tiny fusion model trained in seconds (configs/model/tiny.yaml, 2 steps on 2 generated
cases): the pipeline, PACS and batch tests need real weights, never a mock model."""

from __future__ import annotations

from pathlib import Path

from medassist.model_cli import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
OPTIM = {"seed": 0, "steps": 2, "batch_size": 2, "grad_accum": 1, "lr": 3e-3,
         "warmup_steps": 1, "checkpoint_every": 2, "log_every": 100}


def train_tiny_checkpoint(out: Path) -> Path:
    train(TrainConfig(model_config=str(ROOT / "configs/model/tiny.yaml"),
                      synth_config=str(ROOT / "configs/synth/small.yaml"), data_seed=3,
                      train_cases=2, max_emr_tokens=256, out=str(out), optim=OPTIM))
    return out
