"""presence_min_mm: findings too small to see on the model grid are left out of their label's
losses (neither positives nor negatives) and of the AUROC calibration judges the label by."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch

from multimodal.config import ModelConfig
from multimodal.dense import balanced_bce
from multimodal.errors import ModelConfigError, ShapeError
from multimodal.losses import Targets, compute_losses, presence_weight
from multimodal.model import FusionModel
from multimodal.outputs import ModelInput

NAN = float("nan")


def test_config_refuses_unknown_labels_sizes_and_repeats(tiny_cfg: ModelConfig) -> None:
    ok = dataclasses.replace(tiny_cfg, presence_min_mm=(("lung_nodule", 10.0),))
    assert ok.presence_min_mm == (("lung_nodule", 10.0),)
    for bad, what in (((("nodule", 10.0),), "presence_min_mm"),
                      ((("lung_nodule", 0.0),), "mm > 0"),
                      ((("lung_nodule", 8.0), ("lung_nodule", 10.0)), "twice")):
        with pytest.raises(ModelConfigError, match=what):
            dataclasses.replace(tiny_cfg, presence_min_mm=bad)


def test_presence_weight_leaves_out_only_present_small_findings(tiny_cfg: ModelConfig) -> None:
    cfg = dataclasses.replace(tiny_cfg, presence_min_mm=(("lung_nodule", 10.0),))
    f = cfg.heads.labels.index("lung_nodule")
    n_f = len(cfg.heads.labels)
    present = torch.zeros(5, n_f)
    size = torch.full((5, n_f), NAN)
    present[:4, f] = 1.0
    size[:, f] = torch.tensor([6.0, 10.0, 22.0, NAN, NAN])  # case 3: present, size unknown
    present[:, f + 1] = 1.0  # another label, small: never left out
    size[:, f + 1] = 2.0
    w = presence_weight(cfg, present, size)
    assert w[:, f].tolist() == [0.0, 1.0, 1.0, 0.0, 1.0]  # case 4: absent, a negative
    assert bool((w[:, f + 1:] == 1).all()) and bool((w[:, :f] == 1).all())
    assert bool((presence_weight(tiny_cfg, present, size) == 1).all())  # off by default


def test_balanced_bce_weight_removes_a_case_label_from_both_terms() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 2, 4, 4, generator=g, requires_grad=True)
    tgt = torch.zeros(3, 2, 2, 4, 4, dtype=torch.uint8)
    tgt[0, 0, 1, 2, 2] = 1  # case 0 has label 0 (left out below)
    tgt[1, 0, 0, 1, 1] = 1
    w = torch.ones(3, 2)
    w[0, 0] = 0.0
    loss = balanced_bce(logits, tgt, hard_k=2, weight=w)
    (grad,) = torch.autograd.grad(loss, logits)
    assert float(grad[0, 0].abs().sum()) == 0.0  # nothing learnt from the left-out cells
    assert float(grad[1, 0].abs().sum()) > 0 and float(grad[0, 1].abs().sum()) > 0
    # the same as the loss over the kept cases only, for the label left out
    only = balanced_bce(logits[1:, :1], tgt[1:, :1], hard_k=2)
    rest = balanced_bce(logits[:, 1:], tgt[:, 1:], hard_k=2)
    torch.testing.assert_close(loss, (only + rest) / 2)
    with pytest.raises(ShapeError, match="weight"):
        balanced_bce(logits, tgt, weight=torch.ones(3, 3))


def test_losses_learn_nothing_from_a_left_out_finding(
        tiny_cfg: ModelConfig, make_batch: Callable[..., ModelInput]) -> None:
    """A present nodule below the limit gives its case's nodule logits (presence and per
    patch) no gradient; one above the limit does, and so does every other label."""
    base = dataclasses.replace(tiny_cfg, heads=dataclasses.replace(tiny_cfg.heads, mil=True))
    cfg = dataclasses.replace(base, presence_min_mm=(("lung_nodule", 10.0),))
    f = cfg.heads.labels.index("lung_nodule")
    n_f = len(cfg.heads.labels)
    torch.manual_seed(0)
    model = FusionModel(cfg).train()
    out = model(make_batch(b=2))
    present = torch.zeros(2, n_f)
    present[:, f] = 1.0
    size = torch.full((2, n_f), NAN)
    size[:, f] = torch.tensor([6.0, 14.0])
    loc = torch.zeros(2, n_f, cfg.ct.n_patches)
    loc[:, f, 0] = 1.0
    lat = torch.full((2, n_f), -100, dtype=torch.long)
    lat[:, f] = 1
    t = Targets(present=present, laterality=lat, location=torch.full((2, n_f), -100),
                size_mm=size, loc_map=loc)
    lo = compute_losses(out, t, cfg)
    assert out.patch_logits is not None
    gp, gpatch, glat = torch.autograd.grad(
        lo["total"], [out.presence_logits, out.patch_logits, out.laterality_logits])
    assert float(gp[0, f]) == 0.0 and float(gpatch[0, f].abs().sum()) == 0.0
    assert float(glat[0, f].abs().sum()) == 0.0
    assert float(gp[1, f]) != 0.0 and float(gpatch[1, f].abs().sum()) > 0
    assert float(gp[0, f + 1]) != 0.0  # an absent label of the same case: a negative
    # without the limit the small nodule is a positive like any other
    lo_b = compute_losses(out, t, base)
    (gp_b,) = torch.autograd.grad(lo_b["presence"], [out.presence_logits])
    assert float(gp_b[0, f]) != 0.0


def test_calibration_judges_the_label_on_the_cases_the_losses_kept(
        tiny_cfg: ModelConfig, tiny_records: list[Any]) -> None:
    """With every nodule left out, the nodule has no AUROC to be judged (or dropped by
    min_call_auroc) on, and ``val_auroc_all`` keeps the one over all cases; a limit below
    every nodule changes nothing."""
    import numpy as np

    from medassist.model_data import build_tokenizer, record_sample
    from multimodal.training import fit_temperature

    tok = build_tokenizer(tiny_records, tiny_cfg.emr.vocab_size)
    samples = [record_sample(r, tiny_cfg, tok, 256) for r in tiny_records]
    f = tiny_cfg.heads.labels.index("lung_nodule")
    sizes = [float(np.asarray(s["size"])[f]) for s in samples
             if np.asarray(s["present"])[f] > 0.5]
    assert sizes  # the tiny cases have nodules
    results = {}
    for name, mm in (("none", None), ("all", max(sizes) + 1.0), ("below", min(sizes) / 2)):
        cfg = tiny_cfg if mm is None else dataclasses.replace(
            tiny_cfg, presence_min_mm=(("lung_nodule", mm),))
        torch.manual_seed(0)
        results[name] = fit_temperature(FusionModel(cfg), samples, min_pos=1,
                                        min_call_auroc=1.0)
    assert "val_auroc_all" not in results["none"]
    assert results["all"]["val_auroc"][f] is None
    assert results["all"]["val_auroc_all"] == results["none"]["val_auroc"]
    assert results["all"]["thresholds"][f] != results["none"]["thresholds"][f] or \
        results["none"]["val_auroc"][f] == 1.0
    assert results["below"]["val_auroc"] == results["none"]["val_auroc"]
    assert results["below"]["thresholds"] == results["none"]["thresholds"]
