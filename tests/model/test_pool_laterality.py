"""Pre-pooled CT stem (mean / max / min blocks), evidence-based laterality, fitted thresholds
and the uint8 training storage."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import numpy as np
import pytest
import torch

from multimodal.batching import collate
from multimodal.checkpoint import build_model
from multimodal.config import CTStemConfig, ModelConfig
from multimodal.errors import ModelConfigError, ShapeError
from multimodal.heads import (
    body_midline_x,
    predict_findings,
    side_from_map,
    side_from_probs,
    side_is_uncertain,
    side_odds_ratio,
    side_probs,
)
from multimodal.model import FusionModel
from multimodal.outputs import ModelInput, ModelOutput
from multimodal.stems import CTStem
from multimodal.training import NEVER, fit_thresholds
from multimodal.transforms import BlockPool


def pooled_cfg(tiny_cfg: ModelConfig) -> ModelConfig:
    ct = dataclasses.replace(tiny_cfg.ct, pre_pool=(2, 2, 2), pool_stats=("mean", "max", "min"),
                             conv_stem=(8,))
    return dataclasses.replace(tiny_cfg, ct=ct)


def test_pool_config_validation() -> None:
    with pytest.raises(ModelConfigError, match=r"divisible by ct\.pre_pool"):
        CTStemConfig(grid_shape=(16, 32, 32), patch=(4, 8, 8), pre_pool=(3, 1, 1))
    with pytest.raises(ModelConfigError, match="pool_stats"):
        CTStemConfig(grid_shape=(16, 32, 32), patch=(4, 8, 8), pool_stats=("median",))
    c = CTStemConfig(grid_shape=(16, 32, 32), patch=(4, 8, 8), pre_pool=(2, 2, 2),
                     pool_stats=("mean", "max", "min"))
    assert c.in_channels == 9 and c.pooled_shape == (8, 16, 16) and c.pooled
    assert not CTStemConfig(grid_shape=(16, 32, 32), patch=(4, 8, 8)).pooled


def test_block_pool_matches_the_stem_and_keeps_small_dense_things(
        tiny_cfg: ModelConfig) -> None:
    cfg = pooled_cfg(tiny_cfg)
    torch.manual_seed(0)
    model = build_model(cfg, "fusion").eval()
    ct = np.random.default_rng(0).random((2, 3, *cfg.ct.grid_shape)).astype(np.float32)
    ct[0, 0, 5, 9, 9] = 1.0  # one bright voxel: survives "max", diluted by "mean"
    ct[0, 0, 5, 9, 9 + 1:] *= 0.1
    pool = BlockPool(cfg.ct.pre_pool, cfg.ct.pool_stats)
    pooled = np.stack([pool(a) for a in ct])
    assert pooled.shape == (2, 9, *cfg.ct.pooled_shape)
    assert isinstance(model, FusionModel)
    stem = model.stems["ct"]
    assert isinstance(stem, CTStem)
    stem_pool = stem.pool(torch.from_numpy(ct))
    # the same reduction order as the training storage: the same float values
    np.testing.assert_array_equal(stem_pool.numpy(), pooled)
    assert pooled[0, 1, 2, 4, 4] == 1.0  # window 0, "max", the block holding (5, 9, 9)
    assert pooled[0, 2].min() <= pooled[0, 0].min()  # "min" <= "mean"
    x_full = ModelInput(ct_present=torch.ones(2, dtype=torch.bool),
                        emr_present=torch.zeros(2, dtype=torch.bool), ct=torch.from_numpy(ct))
    x_pool = dataclasses.replace(x_full, ct=torch.from_numpy(pooled))
    with torch.no_grad():
        a, b = model(x_full), model(x_pool)
    torch.testing.assert_close(a.presence_logits, b.presence_logits, atol=1e-5, rtol=1e-5)
    assert a.ct_midline is not None and b.ct_midline is not None
    torch.testing.assert_close(a.ct_midline, b.ct_midline, atol=1.0, rtol=0.0)
    # any other shape is refused
    bad = dataclasses.replace(x_full, ct=torch.rand(2, 9, *cfg.ct.grid_shape))
    with pytest.raises(ShapeError):
        model(bad)
    with pytest.raises(ShapeError):
        BlockPool((2, 2, 2), ("mean",))(np.zeros((3, 5, 4, 4)))


def test_body_midline_and_side_from_map(tiny_cfg: ModelConfig) -> None:
    cfg = tiny_cfg.ct
    z, y, x = cfg.grid_shape
    ct = torch.zeros(2, 3, z, y, x)  # air
    ct[0, 0, :, 8:24, 4:12] = 1.0  # body in x 4..11 -> centroid 7.5
    mid = body_midline_x(ct, cfg)
    assert float(mid[0]) == pytest.approx(7.5)
    assert float(mid[1]) == pytest.approx((x - 1) / 2)  # nothing there: the grid centre
    px = cfg.patch[2]
    gz, gy, gx = cfg.patch_grid
    w = torch.zeros(gz, gy, gx)
    w[1, 1, 0] = 0.9  # column 0: voxels 0..7, all right of a midline at 15.5 (+x = left)
    assert side_from_map(w, 15.5, px) == "right"
    w2 = torch.zeros(gz, gy, gx)
    w2[1, 1, gx - 1] = 0.9
    assert side_from_map(w2, 15.5, px) == "left"
    assert side_from_map(w + w2, 15.5, px) == "bilateral"
    # the same column is "left" of a midline far to the right of it
    assert side_from_map(w, -1.0, px) == "left"
    assert side_from_map(torch.zeros(gz, gy, gx), 15.5, px) == "none"


def _body_output(cfg: ModelConfig) -> tuple[FusionModel, ModelOutput]:
    """A fresh model (seed 0) and its eval output for one CT whose body is centred at x 15.5
    (no EMR)."""
    torch.manual_seed(0)
    model = build_model(cfg, "fusion").eval()
    z, y, x = cfg.ct.grid_shape
    ct = torch.zeros(1, 3, z, y, x)
    ct[0, 0, :, 4:28, 2:30] = 1.0  # body centred at x 15.5
    inp = ModelInput(ct_present=torch.ones(1, dtype=torch.bool),
                     emr_present=torch.zeros(1, dtype=torch.bool), ct=ct)
    with torch.no_grad():
        out = model(inp)
    return typing.cast(FusionModel, model), out


def test_predict_findings_uses_fitted_thresholds_and_evidence_side(
        tiny_cfg: ModelConfig) -> None:
    cfg = dataclasses.replace(tiny_cfg, heads=dataclasses.replace(tiny_cfg.heads, mil=True))
    model, out = _body_output(cfg)
    assert out.patch_logits is not None and out.thresholds is not None
    out.presence_logits[0, 0] = 0.0  # p = 0.5 exactly
    out.laterality_logits[0, 0] = torch.tensor([0.0, 0.0, 5.0, 0.0])  # head says "right"
    out.patch_logits[0, 0] = -8.0
    _gz, gy, gx = cfg.ct.patch_grid
    out.patch_logits[0, 0, (1 * gy + 1) * gx + (gx - 1)] = 8.0  # evidence in the last column
    model.findings.get_buffer("thresholds")[0] = 0.6
    p = predict_findings(out, cfg.heads, cfg.ct)[0][0]
    assert not p.present  # 0.5 < fitted 0.6
    model.findings.get_buffer("thresholds")[0] = 0.4
    p = predict_findings(out, cfg.heads, cfg.ct)[0][0]
    assert p.present and p.laterality == "right"  # the head's side (side_from_evidence off)
    p = predict_findings(out, cfg.heads, cfg.ct, side_from_evidence=True)[0][0]
    assert p.present and p.laterality == "left"  # the evidence lies left of the midline
    p1 = predict_findings(out, cfg.heads, cfg.ct, threshold=0.7)[0][0]
    assert not p1.present  # an explicit threshold overrides the fitted ones
    out.laterality_logits[0, 0] = torch.tensor([5.0, 0.0, 0.0, 0.0])
    assert predict_findings(out, cfg.heads, cfg.ct, side_from_evidence=True)[0][0] \
        .laterality == "none"  # not a sided finding: the evidence does not make it one
    out.laterality_logits[0, 0] = torch.tensor([0.0, 0.0, 5.0, 0.0])
    ev_heads = dataclasses.replace(cfg.heads, side_from_evidence=True)  # the config switch
    assert predict_findings(out, ev_heads, cfg.ct)[0][0].laterality == "left"


def test_side_probs_split_at_the_midline() -> None:
    f, gz, gy, gx, px = 2, 2, 2, 4, 8
    logits = torch.full((f, gz, gy, gx), -8.0)
    logits[0, 1, 0, 3] = 6.0  # finding 0: evidence in the last column (largest x: left)
    logits[1, 0, 1, 0] = 6.0  # finding 1: both sides
    logits[1, 0, 1, 3] = 6.0
    left, right, cols = side_probs(logits, torch.ones(f), torch.zeros(f), 15.5, px)
    assert cols.tolist() == [False, False, True, True]  # centres 3.5, 11.5 | 19.5, 27.5
    assert float(left[0]) > 0.99 and float(right[0]) < 0.01
    assert side_from_probs(float(left[0]), float(right[0]), 0.5) == "left"
    assert side_from_probs(float(left[1]), float(right[1]), 0.5) == "bilateral"
    assert side_from_probs(0.2, 0.3, 0.5) == "right"  # neither side strong: the stronger one
    # a midline beyond the grid: every column on one side, the other side scores 0
    left, right, cols = side_probs(logits, torch.ones(f), torch.zeros(f), 100.0, px)
    assert not bool(cols.any()) and float(left.max()) == 0.0


def test_evidence_side_labels_box_and_lobe(tiny_cfg: ModelConfig) -> None:
    """A label in ``evidence_side_labels`` takes its side from the per-side MIL scores even
    when the laterality head says "none"; the box keeps that side's patches; a lobe on the
    other side is not stated."""
    heads = dataclasses.replace(tiny_cfg.heads, mil=True, side_from_evidence=True,
                                evidence_side_labels=("lung_nodule",))
    cfg = dataclasses.replace(tiny_cfg, heads=heads)
    _model, out = _body_output(cfg)
    assert out.mil_affine is not None and out.patch_logits is not None
    _gz, gy, gx = cfg.ct.patch_grid
    out.presence_logits[0, :2] = 5.0
    for f in (0, 1):
        out.laterality_logits[0, f] = torch.tensor([5.0, 0.0, 0.0, 0.0])  # head: "none"
        out.patch_logits[0, f] = -8.0
        out.patch_logits[0, f, (1 * gy + 1) * gx + (gx - 1)] = 12.0  # strong, left column
        out.patch_logits[0, f, (1 * gy + 1) * gx + 0] = 2.0  # weaker, right column
    locs = cfg.heads.locations
    out.location_logits[0, 0] = 0.0
    out.location_logits[0, 0, locs.index("RUL")] = 3.0  # the head's lobe is on the right
    out.location_logits[0, 0, locs.index("LLL")] = 2.0
    nod, mass = predict_findings(out, cfg.heads, cfg.ct)[0][:2]
    assert nod.laterality == "left" and nod.location == "LLL"
    assert nod.box_voxels is not None and nod.box_voxels[2] == (gx - 1) * cfg.ct.patch[2]
    assert mass.laterality == "none"  # not listed, and the head says none
    off = predict_findings(out, cfg.heads, cfg.ct, side_from_evidence=False)[0][0]
    assert off.laterality == "none" and off.location == "RUL"  # the head's answers
    with pytest.raises(ModelConfigError, match="evidence_side_labels"):
        dataclasses.replace(heads, evidence_side_labels=("spleen",))
    with pytest.raises(ModelConfigError, match="bilateral_min_prob"):
        dataclasses.replace(heads, bilateral_min_prob=1.0)


def test_side_is_uncertain_by_the_odds_of_the_two_sides() -> None:
    # A0001's mass with the shipped model: left 0.163 against right 0.143, odds 1.17 x
    assert side_is_uncertain("left", 0.163, 0.143, 2.0)
    assert not side_is_uncertain("left", 0.163, 0.143, 1.0)  # 1: off
    assert not side_is_uncertain("left", 0.163, 0.05, 2.0)  # odds 3.7 x
    assert side_is_uncertain("right", 0.163, 0.143, 2.0)  # the weaker side stated: uncertain
    assert not side_is_uncertain("right", 0.0, 0.9, 2.0)  # no evidence on the left at all
    assert not side_is_uncertain("bilateral", 0.8, 0.8, 2.0)
    assert not side_is_uncertain("none", 0.5, 0.5, 2.0)
    # the same odds ratio at any level of presence (log-odds, not a difference of p)
    assert side_is_uncertain("left", 0.95, 0.92, 2.0)
    assert not side_is_uncertain("left", 0.95, 0.85, 2.0)
    assert side_odds_ratio("left", 0.163, 0.143) == pytest.approx(1.168, abs=1e-3)
    assert side_odds_ratio("right", 0.163, 0.143) == pytest.approx(1 / 1.168, abs=1e-3)
    assert side_odds_ratio("left", 1.0, 0.0) == pytest.approx(1e12, rel=1e-3)  # clipped
    with pytest.raises(ValueError, match="left or right"):
        side_odds_ratio("bilateral", 0.5, 0.5)


def test_predict_findings_flags_a_side_on_near_equal_evidence(tiny_cfg: ModelConfig) -> None:
    """The per-side evidence travels with a called finding whose side was read per side, and
    a side whose odds are within ``min_side_odds_ratio`` of the other side's is flagged."""
    heads = dataclasses.replace(tiny_cfg.heads, mil=True, side_from_evidence=True,
                                evidence_side_labels=("lung_nodule",))
    cfg = dataclasses.replace(tiny_cfg, heads=heads)
    _model, out = _body_output(cfg)
    assert out.patch_logits is not None
    _gz, gy, gx = cfg.ct.patch_grid
    out.presence_logits[0, :2] = 5.0
    out.patch_logits[0, 0] = -8.0
    left_col, right_col = (1 * gy + 1) * gx + (gx - 1), (1 * gy + 1) * gx + 0
    out.patch_logits[0, 0, left_col] = 3.0
    out.patch_logits[0, 0, right_col] = 2.9  # nearly as strong on the right
    nod, mass = predict_findings(out, cfg.heads, cfg.ct)[0][:2]
    # a fresh model's MIL affine: scale 1, bias -6, so each side is about sigmoid(its
    # strongest patch's logit - 6) (the other patches, at -8, add a little to the logsumexp)
    assert nod.side_evidence == pytest.approx((1 / (1 + np.exp(3.0)), 1 / (1 + np.exp(3.1))),
                                              abs=1e-4)
    assert nod.laterality == "left" and nod.side_uncertain  # odds 1.1 x
    assert mass.side_evidence is None and not mass.side_uncertain  # side not read per side
    out.patch_logits[0, 0, right_col] = -8.0  # the right side has nothing
    nod = predict_findings(out, cfg.heads, cfg.ct)[0][0]
    assert nod.laterality == "left" and not nod.side_uncertain
    off = dataclasses.replace(heads, min_side_odds_ratio=1.0)
    out.patch_logits[0, 0, right_col] = 2.9
    assert not predict_findings(out, off, cfg.ct)[0][0].side_uncertain
    # a finding not called carries no side evidence
    out.presence_logits[0, 0] = -20.0
    out.patch_logits[0, 0] = -20.0
    gone = predict_findings(out, cfg.heads, cfg.ct)[0][0]
    assert not gone.present and gone.side_evidence is None and not gone.side_uncertain
    with pytest.raises(ModelConfigError, match="min_side_odds_ratio"):
        dataclasses.replace(heads, min_side_odds_ratio=0.5)


def test_eval_counts_true_positives_by_the_side_flag() -> None:
    """``medassist eval``'s ``side_uncertainty``: true positives whose side was read per
    side, flagged or not, and how many of each state the reference side."""
    from medassist.model_eval import side_uncertainty
    from multimodal.outputs import FindingPrediction

    def pred(present: bool, side: str | None, ev: tuple[float, float] | None,
             flag: bool) -> FindingPrediction:
        return FindingPrediction(label="lung_mass", present=present, probability=0.9,
                                 laterality=side, location=None, size_mm=None, slices=None,
                                 box_voxels=None, emr_token_spans=(), side_evidence=ev,
                                 side_uncertain=flag)

    preds = [[pred(True, "left", (0.16, 0.14), True)],  # flagged, right side
             [pred(True, "left", (0.16, 0.14), True)],  # flagged, wrong side
             [pred(True, "right", (0.1, 0.9), False)],  # clear, right side
             [pred(True, "left", None, False)],  # side not read per side: not counted
             [pred(True, "left", (0.2, 0.1), True)],  # a false positive: not counted
             [pred(False, None, None, False)]]
    truth = np.array([[True], [True], [True], [True], [False], [True]])
    lat_true = np.array([[1], [2], [2], [1], [0], [1]])  # LATERALITY: none, left, right, ...
    assert side_uncertainty(preds, truth, lat_true) == {
        "flagged": 2, "flagged_right_side": 1, "unflagged": 1, "unflagged_right_side": 1}


def test_fit_thresholds() -> None:
    prob = torch.tensor([[0.3, 0.9], [0.35, 0.1], [0.32, 0.2], [0.1, 0.8], [0.05, 0.1],
                         [0.31, 0.1]])
    y = torch.tensor([[1, 1], [1, 0], [1, 0], [0, 0], [0, 0], [1, 0]]).float()
    t = fit_thresholds(prob, y)
    # the four positives are 0.30..0.35, the negatives 0.10 or less: every threshold of the
    # grid from 0.20 to 0.30 separates them, and the middle of that run (in log-odds) is taken
    assert float(t[0]) == pytest.approx(0.25)
    assert float(t[1]) == 0.5  # one positive: too few to fit, stays 0.5
    with pytest.raises(ValueError, match="grid"):
        fit_thresholds(prob, y, lo=0.0)


def test_fit_thresholds_takes_the_middle_of_the_gap() -> None:
    """Positives at 0.66 or more, negatives at 0.04 or less: the fitted threshold lies
    midway across the gap (log-odds), not at its edge next to 0.5, so a positive read a
    little lower on another scanner (0.45) is still called and a negative a little higher
    (0.08) is not; under the micro-F1 objective too."""
    pos = torch.tensor([0.66, 0.7, 0.8, 0.9, 0.95])
    neg = torch.tensor([0.01, 0.02, 0.03, 0.04] * 5)
    prob = torch.cat([pos, neg])[:, None]
    y = torch.cat([torch.ones(5), torch.zeros(20)])[:, None]
    for obj in ("label_f1", "micro_f1"):
        t = float(fit_thresholds(prob, y, objective=obj)[0])
        assert t == pytest.approx(0.4), t  # the run 0.20 .. 0.65, its log-odds middle
        assert 0.08 < t < 0.45  # a positive at 0.45 (another scanner) still called
        # on a finer grid the run is 0.05 .. 0.65
        assert float(fit_thresholds(prob, y, lo=0.05, objective=obj)[0]) == pytest.approx(0.25)
    # a positive below the grid is not chased: the run starts at the grid's lowest, 0.20
    prob2 = torch.cat([torch.tensor([0.06, 0.7, 0.8, 0.9, 0.95]), neg])[:, None]
    assert float(fit_thresholds(prob2, y)[0]) == pytest.approx(0.45)  # run 0.20 .. 0.70


def _micro_f1(prob: torch.Tensor, y: torch.Tensor, thr: torch.Tensor) -> float:
    pred, truth = prob >= thr, y > 0.5
    return 2 * int((pred & truth).sum()) / (int(pred.sum()) + int(truth.sum()))


def test_fit_thresholds_micro_f1_drops_a_detector_at_chance() -> None:
    """Per label, the best F1 of a detector at chance is "call every case"; fitted for the
    micro-F1 of all labels together, that label is never called and the others keep their
    thresholds."""
    g = torch.Generator().manual_seed(0)
    n = 400
    y = torch.zeros(n, 2)
    y[::10, 0] = 1  # label 0: prevalence 0.1, probability unrelated to it
    y[: n // 4, 1] = 1  # label 1: prevalence 0.25, well separated
    prob = torch.stack([0.08 + 0.05 * torch.rand(n, generator=g),
                        torch.where(y[:, 1] > 0, 0.9, 0.1) + 0.05 * torch.rand(n, generator=g)],
                       1)
    per_label = fit_thresholds(prob, y, lo=0.05)
    assert float(per_label[0]) == pytest.approx(0.05)  # every case called
    micro = fit_thresholds(prob, y, lo=0.05, objective="micro_f1")
    assert float(micro[0]) == NEVER and not bool((prob[:, 0] >= micro[0]).any())
    assert float(micro[1]) == pytest.approx(float(per_label[1]))
    assert _micro_f1(prob, y, micro) > _micro_f1(prob, y, per_label) + 0.2
    # a label that helps is kept: both informative -> the same thresholds as per label
    prob2 = torch.stack([torch.where(y[:, 0] > 0, 0.8, 0.1), prob[:, 1]], 1)
    assert torch.equal(fit_thresholds(prob2, y, lo=0.05, objective="micro_f1"),
                       fit_thresholds(prob2, y, lo=0.05))
    # a label the caller found at chance is never called, under either objective, and the
    # others are fitted as before
    for obj in ("label_f1", "micro_f1"):
        forced = fit_thresholds(prob2, y, lo=0.05, objective=obj, never=[0])
        assert float(forced[0]) == NEVER
        assert float(forced[1]) == float(fit_thresholds(prob2, y, lo=0.05, objective=obj)[1])
    with pytest.raises(ValueError, match="objective"):
        fit_thresholds(prob, y, objective="macro")
    with pytest.raises(ValueError, match="shape"):
        fit_thresholds(prob, y[:, :1], objective="micro_f1")


def test_calibration_never_calls_a_label_below_min_call_auroc(tiny_cfg: ModelConfig,
                                                               tiny_records: list[Any]) -> None:
    """fit_temperature's min_call_auroc: each label whose validation AUROC is below it gets
    the NEVER threshold; off (0), the same model and cases call every fitted label."""
    from medassist.model_data import build_tokenizer, record_sample
    from multimodal.training import fit_temperature

    tok = build_tokenizer(tiny_records, tiny_cfg.emr.vocab_size)
    samples = [record_sample(r, tiny_cfg, tok, 256) for r in tiny_records]
    torch.manual_seed(0)
    model = FusionModel(tiny_cfg)
    off = fit_temperature(model, samples, min_pos=1)
    aucs = off["val_auroc"]
    assert any(a is not None and a < 1.0 for a in aucs)  # an untrained model: some labels
    assert NEVER not in off["thresholds"] and "min_call_auroc" not in off
    on = fit_temperature(model, samples, min_pos=1, min_call_auroc=1.0)
    assert on["min_call_auroc"] == 1.0 and on["val_auroc"] == aucs
    for a, t_on, t_off in zip(aucs, on["thresholds"], off["thresholds"], strict=True):
        assert t_on == (NEVER if a is not None and a < 1.0 else t_off)
    head = model.get_submodule("findings")
    assert [round(float(t), 3) for t in head.get_buffer("thresholds")] == on["thresholds"]


def test_uint8_storage_round_trips_within_one_step(tiny_cfg: ModelConfig) -> None:
    from medassist.model_data import compact

    ct = np.random.default_rng(1).random((3, *tiny_cfg.ct.grid_shape)).astype(np.float32)
    s = compact({"ct": ct.copy(), "emr_ids": None})
    assert s["ct"].dtype == np.uint8
    x, _ = collate([s])
    assert x.ct is not None
    assert float((x.ct[0] - torch.from_numpy(ct)).abs().max()) <= 0.5 / 255 + 1e-6
    pcfg = pooled_cfg(tiny_cfg)
    sp = compact({"ct": ct.copy(), "emr_ids": None}, pcfg)
    assert sp["ct"].shape == (9, *pcfg.ct.pooled_shape) and sp["ct"].dtype == np.uint8
