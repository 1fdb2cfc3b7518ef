"""Decoder conditioning on the findings head (decoder.condition): one memory token per finding
type states the decision; training teacher-forces the true findings, generation uses the
post-processed predictions the draft states."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from multimodal.batching import collate
from multimodal.config import ContextConfig, ModelConfig
from multimodal.decoder import head_decisions, stated_decisions
from multimodal.errors import ShapeError
from multimodal.heads import predict_findings
from multimodal.model import FusionModel
from multimodal.outputs import FindingPrediction, ModelInput


@pytest.fixture()
def model(tiny_cfg: ModelConfig) -> FusionModel:
    assert tiny_cfg.decoder.condition  # the tiny config exercises the conditioned decoder
    torch.manual_seed(0)
    return FusionModel(tiny_cfg).eval()


def _flip(preds: list[list[FindingPrediction]], label: str, side: str
          ) -> list[list[FindingPrediction]]:
    return [[dataclasses.replace(p, present=not p.present, laterality=side)
             if p.label == label else p for p in case] for case in preds]


def test_memory_gets_one_token_per_finding(model: FusionModel,
                                           make_batch: Callable[..., ModelInput]) -> None:
    n = len(model.cfg.heads.labels)
    with torch.no_grad():
        out = model(make_batch(b=2))
        present, side = head_decisions(out.presence_logits, out.laterality_logits, out.ct_used,
                                       out.thresholds)
        assert present.shape == side.shape == (2, n) and present.dtype == torch.bool
        mem, mask = model.decoder_memory(out.memory, out.memory_mask, present, side)
    assert mem.shape == (2, out.memory.shape[1] + n, model.cfg.dim)
    assert mask.shape == mem.shape[:2] and bool(mask[:, -n:].all())
    # without conditioning the memory is the fused memory itself
    plain = FusionModel(dataclasses.replace(
        model.cfg, decoder=dataclasses.replace(model.cfg.decoder, condition=False),
        context=ContextConfig())).eval()
    assert plain.condition is None
    m2, k2 = plain.decoder_memory(out.memory, out.memory_mask, present, side)
    assert m2 is out.memory and k2 is out.memory_mask


def test_generation_follows_the_stated_findings(model: FusionModel,
                                                make_batch: Callable[..., ModelInput]) -> None:
    cfg = model.cfg
    with torch.no_grad():
        out = model(make_batch(b=2))
        preds = predict_findings(out, cfg.heads, cfg.ct)
        a = model.generate(out, max_new=30, findings=preds)
        same = model.generate(out, max_new=30, findings=preds)
        # the memory tokens of a flipped decision differ: the decoder sees the statement
        flipped = _flip(preds, cfg.heads.labels[0], "left")
        p0, s0 = stated_decisions(preds, cfg.heads.labels)
        p1, s1 = stated_decisions(flipped, cfg.heads.labels)
        m0, _ = model.decoder_memory(out.memory, out.memory_mask, p0, s0)
        m1, _ = model.decoder_memory(out.memory, out.memory_mask, p1, s1)
        # the KV cache and recomputation agree on the conditioned memory too
        full = model.generate(out, max_new=30, findings=preds, use_cache=False)
    assert torch.equal(a, same) and torch.equal(a, full)
    n = len(cfg.heads.labels)
    assert torch.equal(m0[:, :-n], m1[:, :-n])  # the fused memory is untouched
    assert not torch.allclose(m0[:, -n], m1[:, -n])  # the first finding's token changed
    assert torch.equal(m0[:, -n + 1:], m1[:, -n + 1:])  # the others did not


def test_training_teacher_forces_the_true_findings(
        tiny_cfg: ModelConfig, teacher_sample: Callable[..., dict[str, Any]]) -> None:
    n = len(tiny_cfg.heads.labels)
    lat = np.full(n, -100, np.int64)
    lat[1] = 2
    sample = teacher_sample(laterality=lat)
    x, tgt = collate([sample, sample])
    assert x.cond_present is not None and x.cond_side is not None and tgt is not None
    assert x.cond_present[0].tolist() == [i == 1 for i in range(n)]
    assert x.cond_side[0, 1] == 2 and int(x.cond_side.min()) == 0  # -100 (absent) -> 0
    # without report ids (inference) nothing is teacher-forced
    y, _ = collate([{k: v for k, v in sample.items() if k != "report_ids"}])
    assert y.cond_present is None and y.cond_side is None


def test_ill_arguments(model: FusionModel, make_batch: Callable[..., ModelInput]) -> None:
    cfg = model.cfg
    with torch.no_grad():
        out = model(make_batch(b=1))
    preds = predict_findings(out, cfg.heads, cfg.ct)
    with pytest.raises(ValueError, match="labels"):
        stated_decisions([preds[0][::-1]], cfg.heads.labels)
    n = len(cfg.heads.labels)
    cond = model.condition
    assert cond is not None
    with pytest.raises(ShapeError):
        cond(torch.zeros(1, n, dtype=torch.bool), torch.zeros(1, n + 1, dtype=torch.long))
    x = make_batch(b=1)
    bad = dataclasses.replace(x, cond_present=torch.zeros(1, n, dtype=torch.bool))
    with pytest.raises(ShapeError, match="together"):
        model(bad)
    bad = dataclasses.replace(x, cond_present=torch.zeros(1, n + 1, dtype=torch.bool),
                              cond_side=torch.zeros(1, n + 1, dtype=torch.long))
    with pytest.raises(ShapeError, match="cond_present"):
        model(bad)
