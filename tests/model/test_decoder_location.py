"""decoder.condition_location: the conditioning token of a present finding carries its stated
location (teacher-forced with the true one; at generation the location the draft states), so
the text can name the location head's lobe."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from multimodal.batching import collate
from multimodal.config import DecoderConfig, ModelConfig
from multimodal.decoder import stated_decisions, stated_locations
from multimodal.errors import ModelConfigError, ShapeError
from multimodal.heads import predict_findings
from multimodal.model import FusionModel
from multimodal.outputs import FindingPrediction, ModelInput


@pytest.fixture()
def located(tiny_cfg: ModelConfig) -> FusionModel:
    cfg = dataclasses.replace(tiny_cfg, decoder=dataclasses.replace(tiny_cfg.decoder,
                                                                    condition_location=True))
    torch.manual_seed(0)
    return FusionModel(cfg).eval()


def _place(preds: list[list[FindingPrediction]], label: str, where: str | None,
           present: bool = True) -> list[list[FindingPrediction]]:
    return [[dataclasses.replace(p, present=present, laterality="left", location=where)
             if p.label == label else p for p in case] for case in preds]


def test_the_stated_location_changes_only_its_findings_token(
        located: FusionModel, make_batch: Callable[..., ModelInput]) -> None:
    cfg = located.cfg
    locs = cfg.heads.locations
    assert len(locs) >= 3, "the tiny config needs two locations besides 'none'"
    n = len(cfg.heads.labels)
    lab = cfg.heads.labels[0]
    with torch.no_grad():
        out = located(make_batch(b=2))
        preds = predict_findings(out, cfg.heads, cfg.ct)
        one, two, none = (_place(preds, lab, w) for w in (locs[1], locs[2], None))
        p, s = stated_decisions(one, cfg.heads.labels)
        mems = [located.decoder_memory(out.memory, out.memory_mask, p, s, None, None,
                                       stated_locations(c, locs))[0] for c in (one, two, none)]
        # an absent finding's location is not read
        absent = [_place(preds, lab, w, present=False) for w in (locs[1], locs[2])]
        pa, sa = stated_decisions(absent[0], cfg.heads.labels)
        a = [located.decoder_memory(out.memory, out.memory_mask, pa, sa, None, None,
                                    stated_locations(c, locs))[0] for c in absent]
        text = [located.generate(out, max_new=20, findings=c) for c in (one, one)]
    assert stated_locations(one, locs)[:, 0].tolist() == [1, 1]
    assert stated_locations(none, locs)[:, 0].tolist() == [0, 0]
    assert stated_locations(_place(preds, lab, "nowhere"), locs)[:, 0].tolist() == [0, 0]
    assert not torch.allclose(mems[0][:, -n], mems[1][:, -n])  # one location vs another
    assert torch.equal(mems[0][:, :-n], mems[1][:, :-n])  # the fused memory is untouched
    assert torch.equal(mems[0][:, -n + 1:], mems[1][:, -n + 1:])  # other findings too
    assert not torch.allclose(mems[0][:, -n], mems[2][:, -n])  # a location vs none
    assert torch.equal(a[0], a[1])
    assert torch.equal(text[0], text[1])
    # without condition_location the location is ignored
    plain = FusionModel(dataclasses.replace(cfg, decoder=dataclasses.replace(
        cfg.decoder, condition_location=False))).eval()
    plain.load_state_dict(located.state_dict(), strict=False)
    with torch.no_grad():
        q = [plain.decoder_memory(out.memory, out.memory_mask, p, s, None, None,
                                  stated_locations(c, locs))[0] for c in (one, two)]
    assert torch.equal(q[0], q[1])


def test_training_teacher_forces_the_true_locations(
        located: FusionModel, tiny_cfg: ModelConfig,
        teacher_sample: Callable[..., dict[str, Any]]) -> None:
    n = len(tiny_cfg.heads.labels)
    loc = np.full(n, -100, np.int64)
    loc[1] = 2
    sample = teacher_sample(location=loc)
    x, _ = collate([sample, sample])
    assert x.cond_location is not None and x.cond_location.dtype == torch.int64
    assert x.cond_location[0].tolist() == [2 if i == 1 else 0 for i in range(n)]
    y, _ = collate([{k: v for k, v in sample.items() if k != "location"}])
    assert y.cond_location is None and y.cond_present is not None
    # the teacher-forced location reaches the decoder: another one changes its logits, the
    # same one gives the same (eval mode: no dropout)
    other = x.cond_location.clone()
    other[:, 1] = 1
    with torch.no_grad():
        lm = [located(dataclasses.replace(x, cond_location=c)).lm_logits for c in
              (x.cond_location, other, x.cond_location)]
    assert lm[0] is not None and lm[1] is not None and lm[2] is not None
    assert not torch.allclose(lm[0], lm[1]) and torch.equal(lm[0], lm[2])


def test_ill_arguments(located: FusionModel, make_batch: Callable[..., ModelInput]) -> None:
    n = len(located.cfg.heads.labels)
    with pytest.raises(ModelConfigError, match="condition_location"):
        DecoderConfig(condition=False, condition_location=True)
    cond = located.condition
    assert cond is not None
    with pytest.raises(ShapeError, match="location"):
        cond(torch.ones(1, n, dtype=torch.bool), torch.zeros(1, n, dtype=torch.long), None,
             None, torch.zeros(1, n + 1, dtype=torch.long))
    x = make_batch(b=1)
    with pytest.raises(ShapeError, match="cond_location"):
        located(dataclasses.replace(x, cond_location=torch.zeros(1, n, dtype=torch.long)))
