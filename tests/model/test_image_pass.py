"""decoder.image_pass: the text, and the locations and sizes it states, from a second pass of
the same weights without the note; the note reaches the text only through the decisions."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from multimodal.config import ModelConfig
from multimodal.heads import predict_findings
from multimodal.image_pass import image_geometry, image_pass, needs_image_pass, without_note
from multimodal.model import FusionModel
from multimodal.outputs import ModelInput


def _on(cfg: ModelConfig, on: bool = True) -> ModelConfig:
    return dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder, image_pass=on))


def _model(cfg: ModelConfig) -> FusionModel:
    torch.manual_seed(0)
    return FusionModel(cfg).eval()


def test_without_note_is_a_new_input_without_the_note(
        make_batch: Callable[..., ModelInput]) -> None:
    x = make_batch(b=2)
    assert x.emr_ids is not None and bool(x.emr_present.all())
    ids = x.emr_ids.clone()
    y = without_note(x)
    assert y.emr_ids is None and y.emr_mask is None and not bool(y.emr_present.any())
    assert y.ct is x.ct and torch.equal(y.ct_present, x.ct_present)
    assert x.emr_ids is not None and torch.equal(x.emr_ids, ids)  # x unchanged
    assert bool(x.emr_present.all())


def test_a_second_pass_only_where_it_would_differ(
        tiny_cfg: ModelConfig, make_batch: Callable[..., ModelInput]) -> None:
    on = _on(tiny_cfg)
    assert needs_image_pass(on, make_batch(b=2))
    assert not needs_image_pass(tiny_cfg, make_batch(b=2))  # off
    assert not needs_image_pass(on, make_batch(b=2, emr=(False, False)))  # no note
    assert not needs_image_pass(on, make_batch(b=2, ct=(True, False)))  # a case without CT
    model = _model(on)
    x = make_batch(b=2)
    with torch.no_grad():
        out = model(x)
        assert image_pass(model, tiny_cfg, x, out) is out
        img = image_pass(model, on, x, out)
        ref = model(without_note(x))
    assert img is not out and torch.equal(img.memory, ref.memory)
    assert not bool(img.emr_used.any()) and torch.equal(img.ct_used, out.ct_used)
    assert not torch.equal(img.memory, out.memory)  # the note did reach the first pass


def test_the_note_reaches_the_text_only_through_the_decisions(
        tiny_cfg: ModelConfig, make_batch: Callable[..., ModelInput]) -> None:
    """Two notes, the same CT and the same stated decisions: with the image pass the text
    and the locations and sizes are the same; the first pass reads the note."""
    cfg = _on(tiny_cfg)
    model = _model(cfg)
    a, other = make_batch(b=2, seed=1, report=6), make_batch(b=2, seed=2, report=6)
    # the same CT and report, another note
    b = dataclasses.replace(a, emr_ids=other.emr_ids, emr_mask=other.emr_mask)
    assert a.emr_ids is not None and b.emr_ids is not None
    assert not torch.equal(a.emr_ids, b.emr_ids)
    with torch.no_grad():
        outs = [model(x) for x in (a, b)]
        imgs = [image_pass(model, cfg, x, o) for x, o in zip((a, b), outs, strict=True)]
        preds = predict_findings(outs[0], cfg.heads, cfg.ct, threshold=0.0)  # all present
        geo = [image_geometry(preds, img, cfg.heads) for img in imgs]
        texts = [model.generate(img, max_new=16, findings=g) for img, g in
                 zip(imgs, geo, strict=True)]
    assert torch.equal(texts[0], texts[1])
    assert [[(p.location, p.size_mm) for p in case] for case in geo[0]] == \
        [[(p.location, p.size_mm) for p in case] for case in geo[1]]
    assert not torch.equal(outs[0].memory, outs[1].memory)
    # teacher-forced over the same report: the image pass's logits do not depend on the
    # note, the first pass's do
    la, lb = (o.lm_logits for o in imgs)
    fa, fb = (o.lm_logits for o in outs)
    assert la is not None and lb is not None and fa is not None and fb is not None
    assert torch.equal(la, lb) and not torch.allclose(fa, fb)


def test_image_geometry_replaces_location_and_size_of_present_findings_only(
        tiny_cfg: ModelConfig, make_batch: Callable[..., ModelInput]) -> None:
    model = _model(tiny_cfg)
    x = make_batch(b=2)
    with torch.no_grad():
        out = model(x)
        img = model(without_note(x))
    preds = predict_findings(out, tiny_cfg.heads, tiny_cfg.ct, threshold=0.5)
    img.size_log[:] = float(torch.log1p(torch.tensor(12.34)))
    locs = tiny_cfg.heads.locations
    img.location_logits[:] = -10.0
    img.location_logits[..., locs.index("heart")] = 10.0
    before = [list(case) for case in preds]
    got = image_geometry(preds, img, tiny_cfg.heads)
    assert preds == before  # not changed
    n_present = 0
    for case, new in zip(preds, got, strict=True):
        for p, q in zip(case, new, strict=True):
            if p.present:
                n_present += 1
                assert (q.location, q.size_mm) == ("heart", 12.3)
                assert dataclasses.replace(q, location=p.location, size_mm=p.size_mm) == p
            else:
                assert q == p
    assert n_present > 0
    with pytest.raises(ValueError, match="one prediction list per case"):
        image_geometry(preds[:1], img, tiny_cfg.heads)
    with pytest.raises(ValueError, match="predictions for"):
        image_geometry([case[:2] for case in preds], img, tiny_cfg.heads)


def test_image_pass_outputs_follow_the_same_rule_over_samples(tiny_cfg: ModelConfig) -> None:
    """Over samples in batches (``medassist eval``, the benches): the outputs themselves
    where a second pass would not differ, else the same batches without the note."""
    from multimodal.image_pass import image_pass_outputs
    from multimodal.training import predict

    cfg = _on(tiny_cfg)
    model = _model(cfg)
    g = torch.Generator().manual_seed(0)
    z, y, x = cfg.ct.grid_shape

    def sample(ct: bool, note: bool) -> dict[str, object]:
        return {"ct": torch.rand((3, z, y, x), generator=g).numpy() if ct else None,
                "emr_ids": torch.randint(5, 50, (12,), generator=g).numpy() if note else None}

    both = [sample(True, True), sample(True, False), sample(True, True)]
    outs = predict(model, both, batch_size=2)
    imgs = image_pass_outputs(model, cfg, both, outs, batch_size=2)
    ref = predict(model, both, batch_size=2, drop="emr")
    assert len(imgs) == 2 and all(i is not o for i, o in zip(imgs, outs, strict=True))
    assert all(torch.equal(i.memory, r.memory) for i, r in zip(imgs, ref, strict=True))
    for samples in ([sample(True, False)] * 2, [sample(True, True), sample(False, True)]):
        o = predict(model, samples, batch_size=2)
        assert all(a is b for a, b in zip(image_pass_outputs(model, cfg, samples, o,
                                                              batch_size=2), o, strict=True))
    assert all(a is b for a, b in zip(image_pass_outputs(model, tiny_cfg, both, outs,
                                                          batch_size=2), outs, strict=True))


def test_note_effect_compares_the_calls_label_by_label(
        tiny_cfg: ModelConfig, make_batch: Callable[..., ModelInput]) -> None:
    from multimodal.image_pass import note_effect

    model = _model(tiny_cfg)
    x = make_batch(b=1)
    with torch.no_grad():
        out, bare = model(x), model(without_note(x))
    (a,) = predict_findings(out, tiny_cfg.heads, tiny_cfg.ct, 0.5)
    (b,) = predict_findings(bare, tiny_cfg.heads, tiny_cfg.ct, 0.5)
    e = note_effect(a, b)
    diffs = [abs(p.probability - q.probability) for p, q in zip(a, b, strict=True)]
    assert e.largest is not None and e.largest.label == a[diffs.index(max(diffs))].label
    assert e.largest.with_note == round(a[diffs.index(max(diffs))].probability, 4)
    assert [c.label for c in e.changed] == [p.label for p, q in zip(a, b, strict=True)
                                           if p.present != q.present]
    # a call the note turns on is listed, with both probabilities
    b2 = [dataclasses.replace(q, present=False, probability=0.1) if i == 2 else q
          for i, q in enumerate(b)]
    a2 = [dataclasses.replace(p, present=True, probability=0.7) if i == 2 else p
          for i, p in enumerate(a)]
    e2 = note_effect(a2, b2)
    assert a2[2].label in [c.label for c in e2.changed]
    c = next(c for c in e2.changed if c.label == a2[2].label)
    assert (c.with_note, c.without_note, c.present_with_note, c.present_without_note) == (
        0.7, 0.1, True, False)
    assert e2.largest is not None and e2.largest.label == a2[2].label
    assert note_effect(a, a).changed == ()
    assert note_effect([], []).largest is None
    with pytest.raises(ValueError, match="different findings"):
        note_effect(a, list(reversed(b)))
