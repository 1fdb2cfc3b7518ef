"""The per-label bilateral cut-off: fitted on validation positives, read by post-processing,
loaded as "not fitted" from checkpoints written before it existed."""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pytest
import torch

from multimodal.calibration import (
    BILATERAL_GRID,
    fit_bilateral,
    fit_bilateral_cutoffs,
    side_samples,
)
from multimodal.checkpoint import build_model, load_checkpoint, save_checkpoint
from multimodal.config import LATERALITY, ModelConfig
from multimodal.heads import FindingsHead, predict_findings, side_from_probs
from multimodal.outputs import ModelInput, ModelOutput
from multimodal.tokenizer import WordTokenizer


def test_fit_bilateral_separates_bilateral_from_a_weak_other_side() -> None:
    # one-sided findings whose other side still scores 0.55-0.75 (evidence near the
    # midline); bilateral ones score >= 0.8 on both sides: the default 0.5 calls all of them
    # bilateral, a fitted cut-off between 0.75 and 0.8 gets every side right
    left = [0.95, 0.9, 0.99, 0.55, 0.6, 0.75, 0.85, 0.9, 0.8]
    right = [0.6, 0.7, 0.75, 0.97, 0.93, 0.99, 0.9, 0.82, 0.95]
    truth = ["left"] * 3 + ["right"] * 3 + ["bilateral"] * 3
    c = fit_bilateral(left, right, truth, default=0.5)
    assert c is not None and 0.75 < c <= 0.8
    assert all(side_from_probs(a, b, c) == t for a, b, t in zip(left, right, truth,
                                                                  strict=True))
    assert sum(side_from_probs(a, b, 0.5) == t for a, b, t in zip(left, right, truth,
                                                                    strict=True)) == 3
    # too few bilateral (or one-sided) positives: the default stays
    assert fit_bilateral(left[:7], right[:7], truth[:7], default=0.5) is None
    assert fit_bilateral(left, right, truth, default=0.5, min_each=4) is None
    # ties go to the candidate nearest the default: all one-sided and clear -> the default
    assert fit_bilateral([0.9, 0.1, 0.2, 0.9], [0.1, 0.9, 0.9, 0.2],
                         ["left", "right", "right", "left"], default=0.5, min_each=0) == 0.5
    assert 0.5 in BILATERAL_GRID
    with pytest.raises(ValueError, match="same length"):
        fit_bilateral([0.1], [0.2, 0.3], ["left"], default=0.5)
    with pytest.raises(ValueError, match="left, right or bilateral"):
        fit_bilateral([0.1], [0.2], ["none"], default=0.5)


def test_fit_bilateral_resolves_saturated_sides() -> None:
    """Large findings saturate both sides' probabilities: bilateral ones read 0.98 or more
    on each side, a one-sided one 0.93-0.965 on its other side (as on the validation
    effusions, stop 51).  The fitted cut-off lies between them, above 0.95, and states every
    side right; the grid's old top, 0.95, states one of the one-sided ones bilateral."""
    left = [1.0, 1.0, 0.963, 0.94, 0.999, 0.984, 1.0, 0.991]
    right = [0.569, 0.93, 1.0, 1.0, 1.0, 1.0, 0.983, 0.999]
    truth = ["left", "left", "right", "right", "bilateral", "bilateral", "bilateral",
             "bilateral"]
    c = fit_bilateral(left, right, truth, default=0.5)
    assert c is not None and 0.965 < c <= 0.983
    assert all(side_from_probs(a, b, c) == t for a, b, t in zip(left, right, truth,
                                                                  strict=True))
    assert sum(side_from_probs(a, b, 0.95) != t for a, b, t in zip(left, right, truth,
                                                                     strict=True)) == 1
    assert max(BILATERAL_GRID) < 1.0 and list(BILATERAL_GRID) == sorted(BILATERAL_GRID)


def _sided_cfg(tiny_cfg: ModelConfig) -> ModelConfig:
    heads = dataclasses.replace(tiny_cfg.heads, mil=True, side_from_evidence=True,
                                evidence_side_labels=tiny_cfg.heads.labels[:2])
    return dataclasses.replace(tiny_cfg, heads=heads)


def _case(cfg: ModelConfig) -> tuple[FindingsHead, ModelOutput]:
    """A fresh model's eval output for one CT (body centred at x 15.5) with finding 0's
    evidence strong on the left and weaker, 0.6-0.7, on the right."""
    torch.manual_seed(0)
    model = build_model(cfg, "fusion").eval()
    z, y, x = cfg.ct.grid_shape
    ct = torch.zeros(1, 3, z, y, x)
    ct[0, 0, :, 4:28, 2:30] = 1.0
    with torch.no_grad():
        out = model(ModelInput(ct_present=torch.ones(1, dtype=torch.bool),
                               emr_present=torch.zeros(1, dtype=torch.bool), ct=ct))
    if out.patch_logits is None or out.mil_affine is None:
        raise AssertionError("the config has MIL: patch logits expected")
    _gz, gy, gx = cfg.ct.patch_grid
    out.mil_affine[0].data.fill_(1.0)
    out.mil_affine[1].data.fill_(0.0)
    out.presence_logits[0, 0] = 5.0
    out.patch_logits[0, 0] = -8.0
    out.patch_logits[0, 0, (1 * gy + 1) * gx + (gx - 1)] = 4.0  # left: p ~ 0.98
    out.patch_logits[0, 0, (1 * gy + 1) * gx + 0] = 0.6  # right: p ~ 0.65
    return typing.cast(FindingsHead, model.get_submodule("findings")), out


def test_predict_findings_reads_the_fitted_cutoff(tiny_cfg: ModelConfig) -> None:
    cfg = _sided_cfg(tiny_cfg)
    head, out = _case(cfg)
    assert out.bilateral_min is not None and bool((out.bilateral_min == -1).all())
    # not fitted: heads.bilateral_min_prob (0.5) applies, both sides reach it
    assert predict_findings(out, cfg.heads, cfg.ct)[0][0].laterality == "bilateral"
    head.get_buffer("bilateral_min")[0] = 0.8  # fitted: the weaker side no longer counts
    assert predict_findings(out, cfg.heads, cfg.ct)[0][0].laterality == "left"
    # the output holds the head's buffer, not a copy: a later fit is what is read
    head.get_buffer("bilateral_min")[0] = -1.0
    assert predict_findings(out, cfg.heads, cfg.ct)[0][0].laterality == "bilateral"
    lax = dataclasses.replace(cfg.heads, bilateral_min_prob=0.9)
    assert predict_findings(out, lax, cfg.ct)[0][0].laterality == "left"


def test_fit_cutoffs_per_label_pooled_or_default(tiny_cfg: ModelConfig) -> None:
    cfg = _sided_cfg(tiny_cfg)
    _head, out = _case(cfg)
    n = len(cfg.heads.labels)
    left_i, bi_i = LATERALITY.index("left"), LATERALITY.index("bilateral")

    def sample(side: int | None) -> dict[str, typing.Any]:
        present = np.zeros(n, np.float32)
        lat = np.full(n, -100, np.int64)  # absent labels carry the ignore index
        if side is not None:
            present[0], lat[0] = 1.0, side
        return {"present": present, "laterality": lat, "ct": np.zeros(1)}

    # the same output (left 0.98, right 0.65 for finding 0) for 4 one-sided-left cases
    # and one absent: label 0 has no bilateral positive, nor has label 1 any positive
    samples = [sample(left_i)] * 4 + [sample(None)]
    outs = [out] * 5
    per = side_samples(outs, samples, cfg.heads, cfg.ct)
    assert len(per[cfg.heads.labels[0]][2]) == 4 and per[cfg.heads.labels[1]] == ([], [], [])
    cut, rep = fit_bilateral_cutoffs(outs, samples, cfg.heads, cfg.ct, min_each=3)
    assert bool((cut == -1).all()) and rep[cfg.heads.labels[0]]["fitted_on"] == "default"
    # with 3 bilateral positives whose weaker side is 0.65 too, no cut-off gets all 7 right:
    # 0.5 states all 7 bilateral (3 right), a cut-off above the weaker side all 7 left (4
    # right); the fit takes the lowest such candidate
    samples = [sample(left_i)] * 4 + [sample(bi_i)] * 3
    cut, rep = fit_bilateral_cutoffs([out] * 7, samples, cfg.heads, cfg.ct, min_each=3)
    weak = per[cfg.heads.labels[0]][1][0]  # finding 0's right-side probability
    assert 0.6 < weak < float(cut[0]) <= weak + 0.025
    own = rep[cfg.heads.labels[0]]
    assert own["fitted_on"] == "label" and own["right_at_default"] == 3
    assert own["right_at_cutoff"] == 4
    # label 1 had no positive of its own: it takes the pooled cut-off
    assert float(cut[1]) == float(cut[0]) and rep[cfg.heads.labels[1]]["fitted_on"] == "pooled"
    assert float(cut[2]) == -1.0  # not an evidence-side label
    with pytest.raises(ValueError, match="outputs for"):
        side_samples([out], samples, cfg.heads, cfg.ct)


def test_checkpoint_without_the_cutoff_loads_unfitted(tiny_cfg: ModelConfig,
                                                      tmp_path: typing.Any) -> None:
    from safetensors.torch import load_file, save_file

    cfg = _sided_cfg(tiny_cfg)
    model = build_model(cfg, "fusion")
    model.get_submodule("findings").get_buffer("bilateral_min")[0] = 0.8
    tok = WordTokenizer.build(["a b c"], cfg.emr.vocab_size)
    ck = save_checkpoint(tmp_path / "ck", model, cfg, "fusion", tok, {"seed": 0})
    assert float(load_checkpoint(ck)[0].get_submodule("findings")
                 .get_buffer("bilateral_min")[0]) == pytest.approx(0.8)
    state = load_file(str(ck / "model.safetensors"))
    del state["findings.bilateral_min"]
    save_file(state, str(ck / "model.safetensors"))
    old = load_checkpoint(ck)[0].get_submodule("findings").get_buffer("bilateral_min")
    assert bool((old == -1).all())
