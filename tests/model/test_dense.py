"""Dense detector (ct.dense_hidden): targets, balanced loss, shapes, and how it feeds MIL."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from multimodal.baseline import LateFusionModel
from multimodal.config import ModelConfig
from multimodal.dense import balanced_bce, dense_targets
from multimodal.errors import ModelConfigError, ShapeError
from multimodal.losses import Targets, compute_losses
from multimodal.model import FusionModel
from multimodal.outputs import ModelInput, ModelOutput
from multimodal.stems import CTStem


def _dense_cfg(tiny: ModelConfig, hidden: int = 4) -> ModelConfig:
    ct = dataclasses.replace(tiny.ct, conv_stem=(8, 8), dense_hidden=hidden)
    return dataclasses.replace(tiny, ct=ct, heads=dataclasses.replace(tiny.heads, mil=True))


def _two_findings_cells(tiny_cfg: ModelConfig, make_batch: Callable[..., ModelInput],
                        patches: int | slice,
                        cells: Sequence[tuple[tuple[int, int, int], float]]
                        ) -> tuple[ModelConfig, ModelOutput]:
    """The tiny dense model's output on one case, findings 0 and 1 selecting ``patches``
    (patch logit 10, the others -10) with dense cell logits -5 but ``cells`` ((z, y, x),
    logit) on the 8 x 16 x 16 map."""
    cfg = _dense_cfg(tiny_cfg)
    torch.manual_seed(0)
    out = FusionModel(cfg).eval()(make_batch(b=1))
    assert out.patch_logits is not None and out.dense_logits is not None
    patch = torch.full_like(out.patch_logits, -10.0)
    patch[0, :2, patches] = 10.0
    dense = torch.full_like(out.dense_logits, -5.0)
    for (z, y, x), logit in cells:
        dense[0, :2, z, y, x] = logit
    return cfg, dataclasses.replace(out, patch_logits=patch, dense_logits=dense)


def _dense_only_targets(b: int, n_f: int, cell: tuple[int, int, int, int, int]) -> Targets:
    """All findings absent and attributes unlabelled; one occupied dense cell
    (case, finding, z, y, x) on the tiny config's 8 x 16 x 16 map."""
    dm = torch.zeros(b, n_f, 8, 16, 16, dtype=torch.uint8)
    dm[cell] = 1
    return Targets(present=torch.zeros(b, n_f), laterality=torch.full((b, n_f), -100),
                   location=torch.full((b, n_f), -100),
                   size_mm=torch.full((b, n_f), float("nan")), dense_map=dm)


def test_config_geometry_and_refusals(tiny_cfg: ModelConfig) -> None:
    cfg = _dense_cfg(tiny_cfg)
    # tiny grid 16 x 32 x 32, patch 4 x 8 x 8: the first stride-2 layer gives 8 x 16 x 16
    assert cfg.ct.dense_block == (2, 2, 2) and cfg.ct.dense_shape == (8, 16, 16)
    with pytest.raises(ModelConfigError, match="conv_stem"):
        dataclasses.replace(tiny_cfg.ct, conv_stem=(), dense_hidden=4)
    with pytest.raises(ModelConfigError, match=r"heads\.mil"):
        dataclasses.replace(tiny_cfg, ct=cfg.ct,
                            heads=dataclasses.replace(tiny_cfg.heads, mil=False))
    with pytest.raises(ModelConfigError):
        dataclasses.replace(cfg, dense_weight=-1.0)


def test_targets_mark_the_cells_that_hold_the_finding() -> None:
    m = np.zeros((2, 8, 8, 8), bool)
    m[0, 5, 2, 7] = True  # one voxel: cell (2, 1, 3) of 2 x 2 x 2 blocks
    t = dense_targets(m, (2, 2, 2))
    assert t.shape == (2, 4, 4, 4) and t.dtype == np.uint8
    assert t[0].sum() == 1 and t[0, 2, 1, 3] == 1 and t[1].sum() == 0
    with pytest.raises(ShapeError, match="dense block"):
        dense_targets(m, (3, 2, 2))


def test_balanced_bce_weighs_positives_and_negatives_equally() -> None:
    logits = torch.randn(2, 3, 4, 4, 4)
    tgt = torch.zeros(2, 3, 4, 4, 4, dtype=torch.uint8)
    tgt[0, 0, 1, 1, 1] = 1
    tgt[1, 0, 2, 2, 2] = 1
    got = balanced_bce(logits, tgt)
    per = []
    for f in range(3):
        lg, tg = logits[:, f].flatten(), tgt[:, f].flatten().bool()
        neg = F.softplus(lg[~tg]).mean()
        pos = F.softplus(-lg[tg]).mean() if bool(tg.any()) else torch.zeros(())
        per.append(pos + neg)
    torch.testing.assert_close(got, torch.stack(per).mean())
    # a missed positive among 128 cells weighs as much as all the negatives together:
    # label 0 = (softplus(10) + softplus(0)) / 2 + softplus(0), the others softplus(0)
    big = torch.zeros_like(logits)
    big[0, 0, 1, 1, 1] = -10.0
    ln2 = float(np.log(2.0))
    want = ((float(F.softplus(torch.tensor(10.0))) + ln2) / 2 + ln2 + 2 * ln2) / 3
    assert float(balanced_bce(big, tgt)) == pytest.approx(want, rel=1e-5)
    assert float(balanced_bce(big, tgt)) > 3 * float(
        F.binary_cross_entropy_with_logits(big, tgt.float()))


def test_balanced_bce_hard_negatives_push_down_the_top_cells_of_absent_cases(
        tiny_cfg: ModelConfig) -> None:
    """dense_hard_k: per label, the mean over the cases without it of softplus(mean of its
    k highest cell logits) is added; cases with the finding and the other cells get no
    extra gradient."""
    logits = torch.randn(2, 3, 4, 4, 4)
    tgt = torch.zeros(2, 3, 4, 4, 4, dtype=torch.uint8)
    tgt[0, 0, 1, 1, 1] = 1  # label 0 present in case 0 only; labels 1, 2 absent in both
    base = balanced_bce(logits, tgt)
    hard = []
    for f in range(3):
        tops = [F.softplus(logits[b, f].flatten().topk(2).values.mean())
                for b in range(2) if not bool(tgt[b, f].any())]
        hard.append(torch.stack(tops).mean())
    torch.testing.assert_close(balanced_bce(logits, tgt, hard_k=2),
                               base + torch.stack(hard).mean())
    x = logits.clone().requires_grad_(True)
    hard_only = balanced_bce(x, tgt, hard_k=2) - balanced_bce(x, tgt)
    hard_only.backward()  # type: ignore[no-untyped-call]  # torch: Tensor.backward is unannotated
    g = x.grad
    assert g is not None and float(g[0, 0].abs().sum()) == 0.0  # case 0 has label 0
    nz = (g[1, 0].flatten() != 0).nonzero().flatten()
    assert set(nz.tolist()) == set(logits[1, 0].flatten().topk(2).indices.tolist())
    with pytest.raises(ShapeError, match="dense_hard_k"):
        balanced_bce(logits, tgt, hard_k=65)
    cfg = _dense_cfg(tiny_cfg)
    assert dataclasses.replace(cfg, dense_hard_k=4).dense_hard_k == 4
    with pytest.raises(ModelConfigError, match="dense_hard_k"):
        dataclasses.replace(cfg, dense_hard_k=-1)
    with pytest.raises(ModelConfigError, match="dense_hard_k"):  # no dense detector
        dataclasses.replace(tiny_cfg, dense_hard_k=4)


def test_model_shapes_mil_link_and_gradient(tiny_cfg: ModelConfig,
                                            make_batch: Callable[..., ModelInput]) -> None:
    cfg = _dense_cfg(tiny_cfg)
    torch.manual_seed(0)
    model = FusionModel(cfg).eval()
    x = make_batch(b=2, ct=(True, False))
    out = model(x)
    n_f = len(cfg.heads.labels)
    assert out.dense_logits is not None and out.dense_logits.shape == (2, n_f, 8, 16, 16)
    assert out.patch_logits is not None and out.patch_logits.shape == (2, n_f,
                                                                        cfg.ct.n_patches)
    # the per-patch maximum of the dense map is added to the patch logits (case with CT)
    dense = model.dense
    assert dense is not None
    last = dense.net[-1]
    assert isinstance(last, torch.nn.Conv3d) and last.bias is not None
    with torch.no_grad():
        last.bias[0] += 5.0
    out2 = model(x)
    assert out2.patch_logits is not None
    torch.testing.assert_close(out2.patch_logits[0, 0], out.patch_logits[0, 0] + 5.0)
    torch.testing.assert_close(out2.patch_logits[0, 1:], out.patch_logits[0, 1:])
    # the case without CT stays masked, whatever the dense map says
    assert bool((out2.patch_logits[1] <= -1e4 + 10).all())
    # the dense loss trains the detector and the stem's first layer; without a dense target
    # it is zero and the total is unchanged
    model.train()
    out3 = model(make_batch(b=2))
    t = _dense_only_targets(2, n_f, (0, 0, 4, 8, 8))
    lo = compute_losses(out3, t, cfg)
    assert float(lo["dense"].detach()) > 0
    lo["total"].backward()  # type: ignore[no-untyped-call]
    stem = model.stems["ct"]
    assert isinstance(stem, CTStem)
    first = stem.conv[0]
    assert isinstance(first, torch.nn.Conv3d) and first.weight.grad is not None
    assert float(first.weight.grad.abs().sum()) > 0
    lo0 = compute_losses(out3, dataclasses.replace(t, dense_map=None), cfg)
    assert float(lo0["dense"].detach()) == 0.0
    # dense_hard_k reaches the loss: the absent labels' top cells add to it
    hard = compute_losses(out3, t, dataclasses.replace(cfg, dense_hard_k=4))
    assert float(hard["dense"].detach()) > float(lo["dense"].detach())


def test_late_fusion_baseline_gets_the_same_detector(
        tiny_cfg: ModelConfig, make_batch: Callable[..., ModelInput]) -> None:
    """A baseline built from a dense config has the detector too (like-for-like comparison);
    its per-patch maximum feeds the MIL patch logits, and its loss trains it."""
    cfg = _dense_cfg(tiny_cfg)
    torch.manual_seed(0)
    model = LateFusionModel(cfg).eval()
    assert model.dense is not None
    x = make_batch(b=2)
    out = model(x)
    n_f = len(cfg.heads.labels)
    assert out.dense_logits is not None and out.dense_logits.shape == (2, n_f, 8, 16, 16)
    last = model.dense.net[-1]
    assert isinstance(last, torch.nn.Conv3d) and last.bias is not None
    with torch.no_grad():
        last.bias[2] += 3.0
    out2 = model(x)
    assert out.patch_logits is not None and out2.patch_logits is not None
    torch.testing.assert_close(out2.patch_logits[:, 2], out.patch_logits[:, 2] + 3.0)
    model.train()
    out3 = model(x)
    t = _dense_only_targets(2, n_f, (1, 2, 3, 3, 3))
    lo = compute_losses(out3, t, cfg)
    lo["total"].backward()  # type: ignore[no-untyped-call]
    assert last.weight.grad is not None and float(last.weight.grad.abs().sum()) > 0
    # without the option the baseline is unchanged: no detector, no dense output
    plain = LateFusionModel(tiny_cfg).eval()
    assert plain.dense is None and plain(make_batch(b=1)).dense_logits is None


def test_make_sample_writes_the_dense_target(tiny_cfg: ModelConfig) -> None:
    from multimodal.tokenizer import WordTokenizer
    from multimodal.training import collate_targets, make_sample

    cfg = _dense_cfg(tiny_cfg)
    tok = WordTokenizer.build(["a note"], max_size=300)
    hu = np.full(cfg.ct.grid_shape, -850.0, np.float32)
    lab = np.zeros(cfg.ct.grid_shape, np.uint8)
    lab[5, 9, 20] = 1
    n_f = len(cfg.heads.labels)
    tg = {"present": np.zeros(n_f, np.float32), "laterality": np.full(n_f, -100),
          "location": np.full(n_f, -100), "size": np.full(n_f, np.nan, np.float32)}
    s = make_sample(cfg, tok, hu=hu, emr=None, label_map=lab,
                    label_values={"lung_nodule": [1]}, targets=tg)
    d = s["dense_map"]
    assert d.shape == (n_f, 8, 16, 16) and int(d.sum()) == 1 and d[0, 2, 4, 10] == 1
    t = collate_targets([s, s], None)
    assert t.dense_map is not None and t.dense_map.shape == (2, n_f, 8, 16, 16)
    # no dense detector configured: no dense target either
    s0 = make_sample(tiny_cfg, tok, hu=hu, emr=None, label_map=lab,
                     label_values={"lung_nodule": [1]}, targets=tg)
    assert "dense_map" not in s0


def test_the_evidence_box_is_the_dense_cells_within_the_selected_patches(
        tiny_cfg: ModelConfig, make_batch: Callable[..., ModelInput]) -> None:
    """``heads.evidence_box`` "cells": a present finding is shown with the box of its
    selected patches' dense cells of probability 0.5 or more (a cell outside those patches
    does not widen it), once the rules on the CT have read the patch box; where no cell
    reaches 0.5, and with "patches", the patch box stays."""
    from multimodal.heads import cells_box, predict_findings
    from multimodal.measure import measure_findings

    cfg = _dense_cfg(tiny_cfg)
    torch.manual_seed(0)
    out = FusionModel(cfg).eval()(make_batch(b=1))
    assert out.patch_logits is not None and out.dense_logits is not None
    patch = torch.full_like(out.patch_logits, -10.0)
    patch[0, 0, 0] = 10.0  # finding 0: the first patch alone (voxels 0-3, 0-7, 0-7)
    dense = torch.full_like(out.dense_logits, -5.0)
    dense[0, 0, 0, 1, 2] = 3.0  # inside the first patch (2 x 4 x 4 cells of 2 voxels)
    dense[0, 0, 7, 15, 15] = 3.0  # outside it
    out = dataclasses.replace(out, patch_logits=patch, dense_logits=dense)

    def shown(heads_cfg: object, o: object = out) -> tuple[object, object, object]:
        p = predict_findings(o, heads_cfg, cfg.ct, threshold=0.0)[0][0]  # type: ignore[arg-type]
        q = measure_findings([p], None, cfg.ct.spacing_mm, cfg.heads.measure)[0]
        return p.box_voxels, q.box_voxels, q.slices

    cells = dataclasses.replace(cfg.heads, evidence_box="cells")
    assert shown(cells) == ((0, 0, 0, 3, 7, 7), (0, 2, 4, 1, 3, 5), (0, 1))
    patches = dataclasses.replace(cfg.heads, evidence_box="patches")
    assert shown(patches) == ((0, 0, 0, 3, 7, 7), (0, 0, 0, 3, 7, 7), (0, 3))
    faint = dense.clone()
    faint[0, 0, 0, 1, 2] = -1.0
    assert shown(cells, dataclasses.replace(out, dense_logits=faint))[1] == (0, 0, 0, 3, 7, 7)
    with pytest.raises(ShapeError, match="do not tile"):
        cells_box(dense[0, 0, :7], torch.ones(4, 4, 4, dtype=torch.bool), (2, 2, 2))
    with pytest.raises(ModelConfigError, match="evidence_box"):
        dataclasses.replace(cfg.heads, evidence_box="voxels")


def test_a_label_of_its_own_cell_probability(
        tiny_cfg: ModelConfig, make_batch: Callable[..., ModelInput]) -> None:
    """``heads.evidence_cell_probs``: a label listed there takes its own cells' probability
    for its box, the others ``evidence_cell_prob``; a pair of an unknown label, a probability
    outside (0, 1) or a label listed twice is refused."""
    from multimodal.heads import predict_findings

    # findings 0 and 1: the first patch alone; a cell of p 0.95 and one of p 0.73
    cfg, out = _two_findings_cells(tiny_cfg, make_batch, 0, (((0, 1, 2), 3.0), ((1, 3, 3), 1.0)))
    a, b = cfg.heads.labels[:2]
    heads = dataclasses.replace(cfg.heads, evidence_box="cells", evidence_cell_prob=0.5,
                                evidence_cell_probs=((a, 0.9),))
    assert (heads.cell_prob(a), heads.cell_prob(b)) == (0.9, 0.5)
    preds = predict_findings(out, heads, cfg.ct, threshold=0.0)[0]
    assert preds[0].focus_box == (0, 2, 4, 1, 3, 5)  # the p 0.95 cell alone
    assert preds[1].focus_box == (0, 2, 4, 3, 7, 7)  # both cells
    for bad in (((a, 1.0),), (("no_such_label", 0.9),), ((a, 0.9), (a, 0.8))):
        with pytest.raises(ModelConfigError, match="evidence_cell_probs"):
            dataclasses.replace(cfg.heads, evidence_cell_probs=bad)


def test_a_weak_cluster_apart_does_not_stretch_the_evidence_box(
        tiny_cfg: ModelConfig, make_batch: Callable[..., ModelInput]) -> None:
    """``heads.evidence_min_peak``: the "cells" box holds only the 26-connected clusters of
    cells whose most probable cell reaches it (a diagonal neighbour belongs to its cluster),
    and every cluster where none does; per label ``evidence_min_peaks``; out-of-range values,
    unknown labels and a label listed twice are refused."""
    from multimodal.heads import cell_clusters, cells_box, predict_findings

    dense = torch.full((4, 8, 8), -5.0)
    dense[0, 0, 0] = 7.0  # p 0.999: the confident cluster ...
    dense[1, 1, 1] = 3.5  # ... and its diagonal neighbour (p 0.97)
    dense[3, 7, 7] = 3.5  # a weak cluster apart (p 0.97)
    everywhere = torch.ones(2, 4, 4, dtype=torch.bool)
    assert cells_box(dense, everywhere, (2, 2, 2), 0.95) == (0, 0, 0, 7, 15, 15)
    assert cells_box(dense, everywhere, (2, 2, 2), 0.95, 0.995) == (0, 0, 0, 3, 3, 3)
    weak = dense.clamp(max=3.5)  # no cluster reaches 0.995: every one is boxed
    assert cells_box(weak, everywhere, (2, 2, 2), 0.95, 0.995) == (0, 0, 0, 7, 15, 15)
    lab = cell_clusters(dense > 0)
    assert lab[0, 0, 0] == lab[1, 1, 1] != lab[3, 7, 7] and int((lab > 0).sum()) == 3
    with pytest.raises(ShapeError):
        cell_clusters(torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="min_peak"):
        cells_box(dense, everywhere, (2, 2, 2), 0.95, 1.0)

    # findings 0 and 1: every patch; a confident cell and a weak one apart
    cfg, out = _two_findings_cells(tiny_cfg, make_batch, slice(None),
                                   (((0, 0, 0), 7.0), ((3, 7, 7), 3.5)))
    a, b = cfg.heads.labels[:2]
    heads = dataclasses.replace(cfg.heads, evidence_box="cells", evidence_cell_prob=0.95,
                                evidence_min_peaks=((a, 0.995),))
    assert (heads.min_peak(a), heads.min_peak(b)) == (0.995, 0.0)
    preds = predict_findings(out, heads, cfg.ct, threshold=0.0)[0]
    block = cfg.ct.dense_block
    assert preds[0].focus_box == (0, 0, 0, block[0] - 1, block[1] - 1, block[2] - 1)
    assert preds[1].focus_box == (0, 0, 0, 4 * block[0] - 1, 8 * block[1] - 1,
                                  8 * block[2] - 1)
    for peak in (1.0, -0.1):
        with pytest.raises(ModelConfigError, match="evidence_min_peak"):
            dataclasses.replace(cfg.heads, evidence_min_peak=peak)
    for bad in (((a, 1.0),), (("no_such_label", 0.9),), ((a, 0.9), (a, 0.8))):
        with pytest.raises(ModelConfigError, match="evidence_min_peaks"):
            dataclasses.replace(cfg.heads, evidence_min_peaks=bad)
