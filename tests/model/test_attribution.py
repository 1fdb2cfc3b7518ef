"""Which note tokens a finding rests on (multimodal.attribution), tiny model on the CPU."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from multimodal.attribution import emr_attribution, note_spans
from multimodal.config import ModelConfig
from multimodal.errors import ModelConfigError
from multimodal.heads import predict_findings, top_spans
from multimodal.model import FusionModel
from multimodal.outputs import ModelInput


@pytest.fixture()
def model(tiny_cfg: ModelConfig) -> FusionModel:
    torch.manual_seed(0)
    return FusionModel(tiny_cfg).eval()


def _three_segments(make_batch: Callable[..., ModelInput]) -> ModelInput:
    """Two cases with 150-token notes (three 64-token segments), the second padded after
    its 100th token."""
    x = make_batch(b=2, t=150, seed=1)
    mask = x.emr_mask.clone()  # type: ignore[union-attr]
    mask[1, 100:] = False
    return dataclasses.replace(x, emr_mask=mask)


def test_gradient_x_input_is_what_the_logit_loses_without_the_token(
        model: FusionModel, make_batch: Callable[..., ModelInput]) -> None:
    """Shape, padding and the note's absence give 0; and to first order the attribution of
    a token is the fall of the logit when its embedding is taken away (checked against twenty
    times the fall when a twentieth of it is taken away, in a forward pass)."""
    x = _three_segments(make_batch)
    before = x.emr_mask.clone()  # type: ignore[union-attr]
    attr = emr_attribution(model, x, [0, 2])
    assert attr.shape == (2, len(model.cfg.heads.labels), 150)
    assert x.emr_mask is not None and torch.equal(x.emr_mask, before)  # not modified
    assert not model.training
    assert float(attr[:, 1].abs().sum()) == 0  # a label not asked for
    assert float(attr[1, :, 100:].abs().sum()) == 0  # padding
    assert bool((attr >= 0).all()) and float(attr[:, 0].sum()) > 0
    # first order: the logit with a twentieth of token t's embedding taken away
    t = int(attr[0, 0].argmax())
    emb = model.get_submodule("stems.emr.tok")

    def logit(drop: bool) -> float:
        calls: list[int] = []

        def hook(_m: torch.nn.Module, _i: object, o: torch.Tensor) -> torch.Tensor:
            s0 = 64 * len(calls)
            calls.append(1)
            if drop and s0 <= t < s0 + o.shape[1]:
                o = o.clone()
                o[0, t - s0] = 0.95 * o[0, t - s0]
            return o
        h = emb.register_forward_hook(hook)
        try:
            with torch.no_grad():
                return float(model(x).presence_logits[0, 0])
        finally:
            h.remove()
    fall = 20 * (logit(False) - logit(True))
    assert fall == pytest.approx(float(attr[0, 0, t]), rel=0.1)
    # a case without its note gets nothing
    alone = dataclasses.replace(x, emr_present=torch.tensor([True, False]))
    assert float(emr_attribution(model, alone, [0])[1].abs().sum()) == 0


def test_attribution_refuses_what_it_cannot_attribute(
        model: FusionModel, make_batch: Callable[..., ModelInput]) -> None:
    x = make_batch()
    with pytest.raises(ValueError, match="EMR token ids"):
        emr_attribution(model, dataclasses.replace(x, emr_ids=None, emr_mask=None), [0])
    with pytest.raises(ValueError, match="label indices"):
        emr_attribution(model, x, [len(model.cfg.heads.labels)])
    q = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},  # type: ignore[no-untyped-call]
                                               dtype=torch.qint8)
    with pytest.raises(ValueError, match="int8"):
        emr_attribution(q, x, [0])


def test_note_spans_only_for_calls_the_note_raises(
        model: FusionModel, tiny_cfg: ModelConfig,
        make_batch: Callable[..., ModelInput]) -> None:
    """The head's own EMR attention gives no spans any more; a called finding gets the
    tokens its presence rests on only where the note raises its logit by
    heads.emr_evidence_min_logit against the pass without it; an absent one, a case without
    its note, a call the note does not raise and a quantised model get none."""
    x = _three_segments(make_batch)
    with torch.no_grad():
        out = model(x)
    preds = predict_findings(out, tiny_cfg.heads, tiny_cfg.ct, 0.0)  # every label called
    preds = [[dataclasses.replace(p, present=p.present and f != 1) for f, p in enumerate(c)]
             for c in preds]  # label 1 absent
    assert all(p.emr_token_spans == () for case in preds for p in case)
    # the pass without the note a logit lower for label 0 in case 0 only
    lower = out.presence_logits.clone()
    lower[0, 0] -= 1.0
    without = dataclasses.replace(out, presence_logits=lower)
    got = note_spans(model, tiny_cfg.heads, x, out, preds, without)
    spans = {(b, f): p.emr_token_spans for b, case in enumerate(got)
             for f, p in enumerate(case) if p.emr_token_spans}
    assert list(spans) == [(0, 0)]
    toks = [t for a, b in spans[(0, 0)] for t in range(a, b)]
    assert 0 < len(toks) <= tiny_cfg.heads.n_emr_spans
    attr = emr_attribution(model, x, [0])[0, 0]
    assert sorted(toks) == sorted(attr.topk(len(toks)).indices.tolist())
    # label 1 absent in case 0 even where the note raises it
    lower[0, 1] -= 1.0
    got = note_spans(model, tiny_cfg.heads, x, out, preds,
                     dataclasses.replace(out, presence_logits=lower))
    assert got[0][1].emr_token_spans == ()
    # a gain below the setting; the pass without the note computed when not given
    high = dataclasses.replace(tiny_cfg.heads, emr_evidence_min_logit=5.0)
    assert all(p.emr_token_spans == () for c in note_spans(model, high, x, out, preds)
               for p in c)
    assert all(p.emr_token_spans == () for c in note_spans(model, tiny_cfg.heads, x, out,
                                                           preds, out) for p in c)
    q = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear},  # type: ignore[no-untyped-call]
                                               dtype=torch.qint8)
    assert all(p.emr_token_spans == () for c in note_spans(q, tiny_cfg.heads, x, out, preds,
                                                           without) for p in c)
    with pytest.raises(ValueError, match="one prediction list per case"):
        note_spans(model, tiny_cfg.heads, x, out, preds[:1], without)
    # the setting is validated
    for bad in (-0.1, float("nan")):
        with pytest.raises(ModelConfigError, match="emr_evidence_min_logit"):
            dataclasses.replace(tiny_cfg.heads, emr_evidence_min_logit=bad)


def test_top_spans_leaves_out_tokens_of_no_attribution() -> None:
    attr = torch.tensor([0.0, 0.5, 0.2, 0.0, 0.0, 0.1])
    assert top_spans(attr, 5) == ((1, 3), (5, 6))
    assert top_spans(torch.zeros(4), 3) == ()
