"""Fixtures of the model tests: tiny config, random batches, 8 generated cases."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from multimodal.config import ModelConfig, load_model_config
from multimodal.outputs import ModelInput

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_cfg() -> ModelConfig:
    return load_model_config(ROOT / "configs" / "model" / "tiny.yaml")


@pytest.fixture()
def make_batch(tiny_cfg: ModelConfig) -> Callable[..., ModelInput]:
    def make(b: int = 2, t: int = 40, ct: tuple[bool, ...] | None = None,
             emr: tuple[bool, ...] | None = None, seed: int = 0, report: int = 0,
             ) -> ModelInput:
        g = torch.Generator().manual_seed(seed)
        ct_p = torch.tensor(ct if ct is not None else (True,) * b)
        emr_p = torch.tensor(emr if emr is not None else (True,) * b)
        vol = torch.rand((b, 3, *tiny_cfg.ct.grid_shape), generator=g)
        ids = torch.randint(5, 300, (b, t), generator=g)
        rep = torch.randint(5, 300, (b, report), generator=g) if report else None
        return ModelInput(ct_present=ct_p, emr_present=emr_p, ct=vol, emr_ids=ids,
                          emr_mask=torch.ones(b, t, dtype=torch.bool), report_ids=rep)
    return make


@pytest.fixture()
def teacher_sample(tiny_cfg: ModelConfig) -> Callable[..., dict[str, Any]]:
    """A training sample without CT whose second finding (index 1) is present, with a short
    note and report, its laterality targets zero unless given, plus ``extra`` targets."""
    def make(**extra: Any) -> dict[str, Any]:
        n = len(tiny_cfg.heads.labels)
        present = np.zeros(n, np.float32)
        present[1] = 1.0
        return {"ct": None, "emr_ids": np.array([5, 6, 7]), "report_ids": np.array([1, 9, 3]),
                "present": present, "laterality": np.zeros(n, np.int64), **extra}
    return make


@pytest.fixture(scope="session")
def tiny_records(tiny_cfg: ModelConfig) -> list[Any]:
    from medassist.model_data import synth_records

    return list(synth_records(str(ROOT / "configs" / "synth" / "small.yaml"), tiny_cfg,
                              seed=3, n=8))
