"""decoder.condition_size: the conditioning token of a present finding carries its stated size
(teacher-forced with the true size; at generation the size the draft states)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from multimodal.batching import collate
from multimodal.config import DecoderConfig, ModelConfig
from multimodal.decoder import stated_decisions, stated_sizes
from multimodal.errors import ModelConfigError, ShapeError
from multimodal.heads import predict_findings
from multimodal.model import FusionModel
from multimodal.outputs import FindingPrediction, ModelInput


@pytest.fixture()
def sized(tiny_cfg: ModelConfig) -> FusionModel:
    cfg = dataclasses.replace(tiny_cfg, decoder=dataclasses.replace(tiny_cfg.decoder,
                                                                    condition_size=True))
    torch.manual_seed(0)
    return FusionModel(cfg).eval()


def _resize(preds: list[list[FindingPrediction]], label: str, size: float | None
            ) -> list[list[FindingPrediction]]:
    return [[dataclasses.replace(p, present=True, laterality="left", size_mm=size)
             if p.label == label else p for p in case] for case in preds]


def test_the_stated_size_changes_only_its_findings_token(
        sized: FusionModel, make_batch: Callable[..., ModelInput]) -> None:
    cfg = sized.cfg
    n = len(cfg.heads.labels)
    lab = cfg.heads.labels[0]
    with torch.no_grad():
        out = sized(make_batch(b=2))
        preds = predict_findings(out, cfg.heads, cfg.ct)
        small, big, none = (_resize(preds, lab, s) for s in (10.0, 40.0, None))
        p, s = stated_decisions(small, cfg.heads.labels)
        mems = [sized.decoder_memory(out.memory, out.memory_mask, p, s, None,
                                     stated_sizes(c))[0] for c in (small, big, none)]
        # an absent finding's size is not read
        absent = [[dataclasses.replace(q, present=False) if q.label == lab else q
                   for q in case] for case in big]
        pa, sa = stated_decisions(absent, cfg.heads.labels)
        z1 = stated_sizes(big)  # the first finding at 40 mm ...
        z0 = z1.clone()
        z0[:, 0] = 0.0  # ... or none: stated absent, either way the same token
        a1 = sized.decoder_memory(out.memory, out.memory_mask, pa, sa, None, z1)[0]
        a0 = sized.decoder_memory(out.memory, out.memory_mask, pa, sa, None, z0)[0]
        text = [sized.generate(out, max_new=20, findings=c) for c in (small, small)]
    assert stated_sizes(big)[:, 0].tolist() == [40.0, 40.0]
    assert stated_sizes(none)[:, 0].tolist() == [0.0, 0.0]
    assert not torch.allclose(mems[0][:, -n], mems[1][:, -n])  # 10 mm vs 40 mm
    assert torch.equal(mems[0][:, :-n], mems[1][:, :-n])  # the fused memory is untouched
    assert torch.equal(mems[0][:, -n + 1:], mems[1][:, -n + 1:])  # other findings too
    assert not torch.allclose(mems[0][:, -n], mems[2][:, -n])  # a size vs none
    assert torch.equal(a0, a1)
    assert torch.equal(text[0], text[1])
    # without condition_size the size is ignored
    plain = FusionModel(dataclasses.replace(cfg, decoder=dataclasses.replace(
        cfg.decoder, condition_size=False))).eval()
    plain.load_state_dict(sized.state_dict(), strict=False)
    with torch.no_grad():
        q = [plain.decoder_memory(out.memory, out.memory_mask, p, s, None,
                                  stated_sizes(c))[0] for c in (small, big)]
    assert torch.equal(q[0], q[1])


def test_training_teacher_forces_the_true_sizes(
        tiny_cfg: ModelConfig, teacher_sample: Callable[..., dict[str, Any]]) -> None:
    n = len(tiny_cfg.heads.labels)
    size = np.full(n, np.nan, np.float32)
    size[1] = 23.5
    sample = teacher_sample(size=size)
    x, _ = collate([sample, sample])
    assert x.cond_size is not None and x.cond_size.dtype == torch.float32
    assert x.cond_size[0].tolist() == [23.5 if i == 1 else 0.0 for i in range(n)]
    y, _ = collate([{k: v for k, v in sample.items() if k != "size"}])
    assert y.cond_size is None and y.cond_present is not None


def test_ill_arguments(sized: FusionModel, make_batch: Callable[..., ModelInput]) -> None:
    n = len(sized.cfg.heads.labels)
    with pytest.raises(ModelConfigError, match="condition_size"):
        DecoderConfig(condition=False, condition_size=True)
    cond = sized.condition
    assert cond is not None
    with pytest.raises(ShapeError, match="size"):
        cond(torch.ones(1, n, dtype=torch.bool), torch.zeros(1, n, dtype=torch.long), None,
             torch.zeros(1, n + 1))
    x = make_batch(b=1)
    with pytest.raises(ShapeError, match="cond_size"):
        sized(dataclasses.replace(x, cond_size=torch.zeros(1, n)))  # without cond_present
