"""EMR context head (model.context): per context slot a class read off the note (what the
note adds to the finding), stated to the decoder on the finding's conditioning token."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from medassist.model_data import context_targets
from multimodal.batching import collate
from multimodal.config import ContextConfig, ModelConfig, from_mapping
from multimodal.context import context_decisions, with_context
from multimodal.decoder import stated_decisions
from multimodal.errors import ModelConfigError, ShapeError
from multimodal.heads import predict_findings
from multimodal.losses import Targets, compute_losses
from multimodal.model import FusionModel
from multimodal.outputs import ModelInput


@pytest.fixture()
def model(tiny_cfg: ModelConfig) -> FusionModel:
    assert tiny_cfg.context.labels  # the tiny config exercises the context head
    torch.manual_seed(0)
    return FusionModel(tiny_cfg).eval()


def test_shapes_classes_and_attention(model: FusionModel,
                                      make_batch: Callable[..., ModelInput]) -> None:
    ctx = model.cfg.context
    k, c = len(ctx.labels), ctx.n_classes
    x = make_batch(b=3, t=40, emr=(True, False, True))
    with torch.no_grad():
        out = model(x)
    assert out.context_logits is not None and out.context_attn is not None
    assert out.context_logits.shape == (3, k, c)
    assert out.context_attn.shape == (3, k, 40)
    for i, cls in enumerate(ctx.classes):  # a slot's missing classes can never be chosen
        assert bool(torch.isinf(out.context_logits[:, i, len(cls):]).all())
        assert bool(torch.isfinite(out.context_logits[:, i, : len(cls)]).all())
    attn = out.context_attn
    assert torch.allclose(attn[[0, 2]].sum(-1), torch.ones(2, k), atol=1e-5)
    assert float(attn[1].abs().sum()) == 0.0  # no note: no EMR evidence
    dec = context_decisions(out.context_logits, out.emr_used)
    assert dec.shape == (3, k) and dec.dtype == torch.long
    assert dec[1].tolist() == [0] * k  # no note: class 0 (the note adds nothing)
    # without an EMR in the whole batch
    x2 = dataclasses.replace(x, emr_ids=None, emr_mask=None,
                             emr_present=torch.zeros(3, dtype=torch.bool))
    with torch.no_grad():
        out2 = model(x2)
    assert out2.context_attn is None and out2.context_logits is not None
    assert context_decisions(out2.context_logits, out2.emr_used).eq(0).all()


def test_masked_note_tokens_change_nothing(model: FusionModel,
                                           make_batch: Callable[..., ModelInput]) -> None:
    x = make_batch(b=2, t=40)
    assert x.emr_mask is not None and x.emr_ids is not None
    mask = x.emr_mask.clone()
    mask[:, 30:] = False
    a = dataclasses.replace(x, emr_mask=mask)
    ids = x.emr_ids.clone()
    ids[:, 30:] = 7
    b = dataclasses.replace(a, emr_ids=ids)
    with torch.no_grad():
        la, lb = model(a).context_logits, model(b).context_logits
    assert la is not None and lb is not None and torch.equal(la, lb)


def test_context_reaches_only_its_findings_token(model: FusionModel,
                                                 make_batch: Callable[..., ModelInput]) -> None:
    cfg = model.cfg
    labels, n = cfg.heads.labels, len(cfg.heads.labels)
    with torch.no_grad():
        out = model(make_batch(b=1))
        preds = [[dataclasses.replace(p, present=True, laterality="left")
                  for p in predict_findings(out, cfg.heads, cfg.ct)[0]]]
        present, side = stated_decisions(preds, labels)
        k = len(cfg.context.labels)
        c0 = torch.zeros(1, k, dtype=torch.long)
        c1 = c0.clone()
        c1[0, 0] = 1  # the first slot (lung_nodule): class 1
        m0, _ = model.decoder_memory(out.memory, out.memory_mask, present, side, c0)
        m1, _ = model.decoder_memory(out.memory, out.memory_mask, present, side, c1)
        # an absent finding states no context, whatever the class
        absent = present.clone()
        absent[0, labels.index(cfg.context.labels[0])] = False
        a0, _ = model.decoder_memory(out.memory, out.memory_mask, absent, side, c0)
        a1, _ = model.decoder_memory(out.memory, out.memory_mask, absent, side, c1)
    slot = labels.index(cfg.context.labels[0])
    changed = [i for i in range(n) if not torch.allclose(m0[0, -n + i], m1[0, -n + i])]
    assert changed == [slot]
    assert torch.equal(a0, a1)
    with pytest.raises(ShapeError, match="context"):
        model.decoder_memory(out.memory, out.memory_mask, present, side,
                             torch.zeros(1, k + 1, dtype=torch.long))


def test_teacher_forcing_states_the_true_context(model: FusionModel,
                                                 make_batch: Callable[..., ModelInput]) -> None:
    """Training reads ModelInput.context (the truth) into the decoder's memory: the report
    logits depend on it."""
    k = len(model.cfg.context.labels)
    n = len(model.cfg.heads.labels)
    x = make_batch(b=1, report=6)
    present = torch.ones(1, n, dtype=torch.bool)
    side = torch.zeros(1, n, dtype=torch.long)
    base = dataclasses.replace(x, cond_present=present, cond_side=side,
                               context=torch.zeros(1, k, dtype=torch.long))
    other = dataclasses.replace(base, context=torch.tensor([[2] + [1] * (k - 1)]))
    unknown = dataclasses.replace(base, context=torch.full((1, k), -100))
    with torch.no_grad():
        l0, l1, lu = (model(v).lm_logits for v in (base, other, unknown))
    assert l0 is not None and l1 is not None and lu is not None
    assert not torch.allclose(l0, l1) and not torch.allclose(l0, lu)
    with pytest.raises(ShapeError, match="context"):
        model(dataclasses.replace(base, context=torch.zeros(1, k + 1, dtype=torch.long)))


def test_loss_learns_from_cases_whose_note_was_used(model: FusionModel,
                                                    make_batch: Callable[..., ModelInput]
                                                    ) -> None:
    cfg = model.cfg
    k, n = len(cfg.context.labels), len(cfg.heads.labels)
    x = make_batch(b=2, emr=(True, False))
    with torch.no_grad():
        out = model(x)
    t = Targets(present=torch.zeros(2, n), laterality=torch.full((2, n), -100),
                location=torch.full((2, n), -100), size_mm=torch.full((2, n), float("nan")),
                context=torch.tensor([[1] + [-100] * (k - 1), [2] + [-100] * (k - 1)]))
    loss = compute_losses(out, t, cfg)["context"]
    assert out.context_logits is not None
    expect = -torch.log_softmax(out.context_logits[0, 0], -1)[1]  # case 1 has no note
    assert float(loss) == pytest.approx(float(expect), rel=1e-5)
    none = dataclasses.replace(t, context=torch.full((2, k), -100))
    assert float(compute_losses(out, none, cfg)["context"]) == 0.0


def test_targets_from_the_impression_codes(tiny_cfg: ModelConfig) -> None:
    ctx = tiny_cfg.context
    imp: list[dict[str, Any]] = [{"code": "metastatic_disease_suspected"},
                                 {"code": "fleischner_followup_3m"}, {"code": "pneumonia"}]
    out = context_targets(imp, ctx)
    want = np.full(len(ctx.labels), -100)
    want[ctx.labels.index("lung_nodule")] = 1
    want[ctx.labels.index("consolidation")] = 1
    assert out.tolist() == want.tolist()
    assert context_targets([], ctx).tolist() == [-100] * len(ctx.labels)


def test_collate_carries_the_context(tiny_cfg: ModelConfig) -> None:
    k = len(tiny_cfg.context.labels)
    s = {"ct": None, "emr_ids": np.arange(5, 12), "context": np.full(k, -100)}
    x, _ = collate([s, {**s, "context": np.arange(k)}])
    assert x.context is not None and x.context.tolist() == [[-100] * k, list(range(k))]
    y, _ = collate([s, {"ct": None, "emr_ids": np.arange(5, 9)}])
    assert y.context is None


@pytest.mark.parametrize("bad, match", [
    ({"labels": ["lung_nodule"], "classes": []}, "one per"),
    ({"labels": ["lung_nodule"], "classes": [["only"]]}, ">= 2"),
    ({"labels": ["lung_nodule"], "classes": [["a", "a"]]}, ">= 2"),
    ({"labels": ["lung_nodule"], "classes": [["a", "b"]], "weight": -1.0}, "weight"),
])
def test_config_refuses_bad_context(bad: dict[str, Any], match: str) -> None:
    with pytest.raises(ModelConfigError, match=match):
        from_mapping(ContextConfig, bad)


def test_context_labels_must_be_findings_and_need_conditioning(tiny_cfg: ModelConfig) -> None:
    with pytest.raises(ModelConfigError, match=r"not in heads\.labels"):
        dataclasses.replace(tiny_cfg, context=ContextConfig(labels=("spleen",),
                                                            classes=(("a", "b"),)))
    with pytest.raises(ModelConfigError, match=r"decoder\.condition"):
        dataclasses.replace(tiny_cfg, decoder=dataclasses.replace(tiny_cfg.decoder,
                                                                  condition=False))


def test_with_context_names_the_class_and_its_note_spans(
        model: FusionModel, make_batch: Callable[..., ModelInput]) -> None:
    cfg = model.cfg
    x = make_batch(b=2, t=40, emr=(True, False))
    with torch.no_grad():
        out = model(x)
    preds = [[dataclasses.replace(p, present=p.label in ("lung_nodule", "emphysema"))
              for p in case] for case in predict_findings(out, cfg.heads, cfg.ct)]
    got = with_context(out, cfg.context, preds, n_spans=3)
    assert out.context_logits is not None
    k = cfg.context.labels.index("lung_nodule")
    dec = context_decisions(out.context_logits, out.emr_used)
    for b in range(2):
        by = {p.label: p for p in got[b]}
        nod = by["lung_nodule"]
        assert nod.context == cfg.context.classes[k][int(dec[b, k])]
        assert by["emphysema"].context is None  # no slot
        assert by["consolidation"].context is None  # absent
        # the rest of the prediction is untouched
        assert dataclasses.replace(nod, context=None, context_token_spans=()) == \
            preds[b][cfg.heads.labels.index("lung_nodule")]
    spans = {p.label: p for p in got[0]}["lung_nodule"].context_token_spans
    assert spans and all(0 <= a < c <= 40 for a, c in spans)
    assert sum(c - a for a, c in spans) == 3
    no_note = {p.label: p for p in got[1]}["lung_nodule"]
    assert no_note.context == cfg.context.classes[k][0] and no_note.context_token_spans == ()


def test_the_notes_history_decides_the_class_it_rests_on(
        model: FusionModel, make_batch: Callable[..., ModelInput]) -> None:
    """medassist.drafting.note_context: where the note states the history a slot's class
    rests on (read by rule), that class conditions the text and the finding says so; a
    head's class resting on a history the note does not state falls to class 0; without a
    note the context head's decisions stand."""
    from medassist.drafting import note_context
    from medassist.history import (
        FEVER,
        HEART_FAILURE,
        HEAVY_SMOKING,
        KNOWN_CANCER,
        LEUKOCYTOSIS,
        NoteHistory,
        stated_context,
    )

    cfg = model.cfg
    x = make_batch(b=3, t=40, emr=(True, True, False))
    with torch.no_grad():
        out = model(x)
    preds = [[dataclasses.replace(p, present=p.label != "pleural_effusion") for p in case]
             for case in with_context(out, cfg.context,
                                      predict_findings(out, cfg.heads, cfg.ct), n_spans=3)]
    every = NoteHistory(frozenset({FEVER, LEUKOCYTOSIS, HEART_FAILURE, KNOWN_CANCER}))
    # a head that draws each slot's last class, as if it read every history into the note
    logits = out.context_logits
    assert logits is not None
    forced = torch.full_like(logits, -1e4)
    for k, cls in enumerate(cfg.context.classes):
        forced[:, k, len(cls) - 1] = 0.0
    forced[:, :, 1:] = torch.where(torch.isinf(logits[:, :, 1:]), logits[:, :, 1:],
                                   forced[:, :, 1:])
    out = dataclasses.replace(out, context_logits=forced)
    head = context_decisions(forced, out.emr_used)
    assert head[0].tolist() == [len(c) - 1 for c in cfg.context.classes]
    ctx, got = note_context(out, cfg, preds, [every, NoteHistory(frozenset()), None])
    assert ctx is not None and ctx.shape == head.shape
    # every history stated: nodule and nodes metastatic, pneumonia, cardiogenic (a class is
    # decided whether or not its finding is called)
    assert ctx[0].tolist() == [1, 1, 1, 1]
    # nothing stated: each of the head's classes rests on a history, so none stands
    assert ctx[1].tolist() == [0, 0, 0, 0]
    assert torch.equal(ctx[2], head[2]) and got[2] == preds[2]  # no note: the head's
    for b in (0, 1):
        for p, q in zip(got[b], preds[b], strict=True):
            if p.label not in cfg.context.labels or not p.present:
                assert p == q  # no slot, or not called (the effusion): untouched
                continue
            k = cfg.context.labels.index(p.label)
            changed = int(ctx[b, k]) != int(head[b, k])
            assert p.context_source == ("note" if changed else "head")
            if changed:
                assert p.context == cfg.context.classes[k][int(ctx[b, k])]
                assert dataclasses.replace(p, context=q.context, context_source="head") == q
    nodule = cfg.context.classes[cfg.context.labels.index("lung_nodule")]
    pneumonia = cfg.context.classes[cfg.context.labels.index("consolidation")]
    # a fever alone is no pneumonia, and a head's pneumonia without both falls
    assert stated_context(pneumonia, {FEVER}) == 0
    assert stated_context(pneumonia, {FEVER}, head=1) == 0
    assert stated_context(pneumonia, {FEVER, LEUKOCYTOSIS}) == 1
    # a primary lung cancer needs a spiculated margin too: the pack-years alone keep the
    # head's class, decide none, and a missing smoking history takes it back
    smoker = nodule.index("primary_lung_malignancy_suspected")
    assert stated_context(nodule, {HEAVY_SMOKING}) == 0
    assert stated_context(nodule, {HEAVY_SMOKING}, head=smoker) == smoker
    assert stated_context(nodule, {FEVER}, head=smoker) == 0
    # a known cancer comes first, as in the reference reports
    assert nodule[stated_context(nodule, {HEAVY_SMOKING, KNOWN_CANCER}, head=smoker)] == \
        "metastatic_disease_suspected"
    with pytest.raises(ValueError, match="one history per case"):
        note_context(out, cfg, preds, [every, None])
    with pytest.raises(ValueError, match="head class"):
        stated_context(nodule, set(), head=len(nodule))


def test_generate_states_the_context_it_is_given(
        model: FusionModel, make_batch: Callable[..., ModelInput]) -> None:
    """FusionModel.generate(context=...) replaces the context head's decisions: given the
    head's own, the same tokens; a wrong shape is refused."""
    cfg = model.cfg
    with torch.no_grad():
        out = model(make_batch(b=2, t=40))
    preds = [[dataclasses.replace(p, present=True) for p in case]
             for case in predict_findings(out, cfg.heads, cfg.ct)]
    assert out.context_logits is not None
    head = context_decisions(out.context_logits, out.emr_used)
    plain = model.generate(out, max_new=12, findings=preds)
    assert torch.equal(model.generate(out, max_new=12, findings=preds, context=head), plain)
    with pytest.raises(ValueError, match="context must be"):
        model.generate(out, max_new=4, findings=preds, context=head[:, :-1])
