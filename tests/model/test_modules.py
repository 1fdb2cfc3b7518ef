"""Eval-mode shape tests per module and ill-argument tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict, Unpack

import pytest
import torch

from multimodal.baseline import LateFusionModel
from multimodal.config import LATERALITY, ModelConfig
from multimodal.decoder import ReportDecoder
from multimodal.encoder import LongEMREncoder, SharedEncoder, info_nce
from multimodal.errors import ModalityError, ShapeError
from multimodal.fusion import DenseFFN, FusionBlock, ModalityGate, MoEFFN
from multimodal.heads import FindingsHead
from multimodal.model import FusionModel
from multimodal.outputs import ModelInput
from multimodal.stems import CTStem, EMRStem, RelPosBias3D


class _EMRMode(TypedDict, total=False):
    """The :class:`~multimodal.config.LongEMRConfig` fields a test sets on the EMR encoder."""

    full_attention: bool
    full_attention_p: float


def test_ct_stem_shapes(tiny_cfg: ModelConfig) -> None:
    stem = CTStem(tiny_cfg.ct, tiny_cfg.dim, 2).eval()
    x = torch.rand(2, 3, *tiny_cfg.ct.grid_shape)
    assert stem(x).shape == (2, tiny_cfg.ct.n_patches, tiny_cfg.dim)
    bias = stem.bias()
    assert bias is not None and bias.shape == (2, tiny_cfg.ct.n_patches, tiny_cfg.ct.n_patches)
    with pytest.raises(ShapeError):
        stem(torch.rand(2, 3, 8, 32, 32))
    rel = RelPosBias3D((2, 3, 4), 2)
    assert int(rel.index.max()) == rel.table.shape[0] - 1  # type: ignore[operator]
    # the relative bias depends only on the offset: (0 -> 1) equals (1 -> 2) along x
    with torch.no_grad():
        rel.table.normal_()
    b = rel()
    assert torch.equal(b[:, 0, 1], b[:, 1, 2])


def test_ct_stem_sinusoidal(tiny_cfg: ModelConfig) -> None:
    import dataclasses

    cfg = dataclasses.replace(tiny_cfg.ct, abs_pos="sinusoidal", rel_bias=False)
    stem = CTStem(cfg, 32, 2)
    assert stem.bias() is None
    assert stem(torch.rand(1, 3, *cfg.grid_shape)).shape == (1, cfg.n_patches, 32)


def test_emr_stem_and_long_encoder(tiny_cfg: ModelConfig) -> None:
    d = tiny_cfg.dim
    stem = EMRStem(tiny_cfg.emr, d, tiny_cfg.long_emr.segment_len).eval()
    enc = SharedEncoder(tiny_cfg.encoder, d).eval()
    long = LongEMREncoder(tiny_cfg.long_emr, d).eval()
    with pytest.raises(ShapeError):
        stem(torch.full((1, 4), tiny_cfg.emr.vocab_size))
    m = tiny_cfg.long_emr.n_memory
    for t in (5, 64, 300):  # the fused EMR representation has a fixed size
        ids = torch.randint(5, 100, (2, t))
        out = long(stem, enc, ids, torch.ones(2, t, dtype=torch.bool), torch.tensor([True, False]))
        assert out.memory.shape == (2, m, d) and out.tokens.shape == (2, t, d)
        assert out.memory_mask.tolist() == [[True] * m, [False] * m]


def test_sliding_window_mask(tiny_cfg: ModelConfig) -> None:
    long = LongEMREncoder(tiny_cfg.long_emr, tiny_cfg.dim)
    keep = long.segment_mask(torch.ones(1, 40, dtype=torch.bool))[0, 0]
    m, w = tiny_cfg.long_emr.n_memory, tiny_cfg.long_emr.window
    assert keep[:m].all()  # memory sees everything
    assert keep[m + 0, m + w] and not keep[m + 0, m + w + 1]
    assert keep[m:, :m].all()


def test_gate_moe_fusion_head_shapes(tiny_cfg: ModelConfig) -> None:
    d, f = tiny_cfg.dim, len(tiny_cfg.heads.labels)
    gate = ModalityGate(tiny_cfg.gating, d, ("ct", "emr")).eval()
    s = {"ct": torch.rand(3, d), "emr": torch.rand(3, d)}
    pres = {"ct": torch.tensor([True, True, False]), "emr": torch.tensor([True, False, True])}
    q = {"ct": torch.ones(3), "emr": torch.ones(3)}
    w = gate(s, pres, q).exp()
    assert w.shape == (3, 2) and torch.allclose(w.sum(-1), torch.ones(3))
    assert w[1, 1] == 0 and w[2, 0] == 0
    with pytest.raises(ModalityError):
        gate(s, {"ct": torch.tensor([False] * 3), "emr": torch.tensor([True, False, True])}, q)
    x = torch.rand(2, 7, d)
    valid = torch.ones(2, 7, dtype=torch.bool)
    y, st = MoEFFN(tiny_cfg.fusion, d)(x, valid)
    assert y.shape == x.shape and st.load is not None and st.load.shape == (4,)
    y2, st2 = DenseFFN(tiny_cfg.fusion, d)(x, valid)
    assert y2.shape == x.shape and st2.load is None
    blk = FusionBlock(tiny_cfg.fusion, d).eval()
    out, _ = blk(x, torch.zeros(2, 1, 1, 7), valid)
    assert out.shape == x.shape
    head = FindingsHead(tiny_cfg.heads, d).eval()
    res = head(torch.rand(2, f, d), torch.rand(2, 9, d), valid[:, :1].expand(2, 9),
               torch.rand(2, 5, d), torch.ones(2, 5, dtype=torch.bool))
    assert res[0].shape == (2, f) and res[1].shape == (2, f, len(LATERALITY))
    assert res[2].shape == (2, f, len(tiny_cfg.heads.locations)) and res[3].shape == (2, f)
    assert res[4] is not None and res[4].shape == (2, f, 9)
    assert res[5] is not None and torch.allclose(res[5].sum(-1), torch.ones(2, f))
    assert info_nce(torch.rand(4, d), torch.rand(4, d), 0.07).ndim == 0


def test_decoder_shapes(tiny_cfg: ModelConfig) -> None:
    dec = ReportDecoder(tiny_cfg.decoder, tiny_cfg.dim, 50).eval()
    mem = torch.rand(2, 6, tiny_cfg.dim)
    mask = torch.ones(2, 6, dtype=torch.bool)
    assert dec(torch.randint(0, 50, (2, 9)), mem, mask).shape == (2, 9, 50)
    with pytest.raises(ShapeError):
        dec(torch.randint(0, 50, (3, 9)), mem, mask)


@pytest.mark.parametrize("cls", [FusionModel, LateFusionModel])
def test_models_forward_shapes(cls: type, tiny_cfg: ModelConfig,
                               make_batch: Callable[..., ModelInput]) -> None:
    torch.manual_seed(0)
    model = cls(tiny_cfg).eval()
    x = make_batch(b=3, t=90, ct=(True, True, False), emr=(True, False, True), report=12)
    ct_before = x.ct.clone() if x.ct is not None else None
    with torch.no_grad():
        out = model(x)
    f, n = len(tiny_cfg.heads.labels), tiny_cfg.ct.n_patches
    assert out.presence_logits.shape == (3, f) and out.size_log.shape == (3, f)
    assert out.loc_logits is not None and out.loc_logits.shape == (3, f, n)
    assert out.emr_attr is not None and out.emr_attr.shape == (3, f, 90)
    assert out.lm_logits is not None and out.lm_logits.shape == (3, 12, tiny_cfg.emr.vocab_size)
    assert out.modality_weights.shape == (3, 2)
    assert x.ct is not None and ct_before is not None and torch.equal(x.ct, ct_before)


def test_fusion_vs_baseline_param_count(tiny_cfg: ModelConfig) -> None:
    a = sum(p.numel() for p in FusionModel(tiny_cfg).parameters())
    b = sum(p.numel() for p in LateFusionModel(tiny_cfg).parameters())
    assert abs(a - b) / a < 0.1


def test_input_validation(tiny_cfg: ModelConfig, make_batch: Callable[..., ModelInput]) -> None:
    import dataclasses

    model = FusionModel(tiny_cfg).eval()
    x = make_batch()
    with pytest.raises(ModalityError):
        model(dataclasses.replace(x, emr_ids=None, emr_mask=None))
    with pytest.raises(ModalityError):
        model(dataclasses.replace(x, ct=None))
    with pytest.raises(ShapeError):
        model(dataclasses.replace(x, ct=torch.rand(2, 3, 4, 4, 4)))
    with pytest.raises(ShapeError):
        model(dataclasses.replace(x, emr_mask=None))
    with pytest.raises(ShapeError):
        model(dataclasses.replace(x, ct_present=torch.tensor([1, 1])))
    with pytest.raises(ModalityError):  # a case with neither modality
        model(make_batch(ct=(True, False), emr=(True, False)))


def test_full_attention_mode_matches_single_segment(tiny_cfg: ModelConfig) -> None:
    import dataclasses

    d = tiny_cfg.dim
    lc = dataclasses.replace(tiny_cfg.long_emr, window=tiny_cfg.long_emr.segment_len)
    stem = EMRStem(tiny_cfg.emr, d, lc.segment_len).eval()
    enc = SharedEncoder(tiny_cfg.encoder, d).eval()
    mem_mode = LongEMREncoder(lc, d).eval()
    full = LongEMREncoder(dataclasses.replace(lc, full_attention=True), d).eval()
    full.load_state_dict(mem_mode.state_dict())
    ids = torch.randint(5, 100, (2, 50))
    ok = torch.ones(2, 50, dtype=torch.bool)
    p = torch.tensor([True, True])
    with torch.no_grad():
        a = mem_mode(stem, enc, ids, ok, p)
        b = full(stem, enc, ids, ok, p)
    m = lc.n_memory
    assert b.memory.shape == (2, m + 50, d)  # full attention hands every token to fusion
    assert torch.allclose(a.memory, b.memory[:, :m], atol=1e-5)
    assert torch.allclose(a.tokens, b.tokens, atol=1e-5)


def test_full_attention_mix_in_training(tiny_cfg: ModelConfig,
                                        make_batch: Callable[..., ModelInput]) -> None:
    """long_emr.full_attention_p: in training, a batch runs the full-attention mode with that
    probability (p 1: always, as a full_attention model); inference keeps the configured
    mode (memory tokens)."""
    import dataclasses

    from multimodal.config import LongEMRConfig
    from multimodal.errors import ModelConfigError

    with pytest.raises(ModelConfigError, match="full_attention_p"):
        LongEMRConfig(full_attention_p=1.5)
    # no modality dropout: the comparison does not depend on the random draws
    base = dataclasses.replace(tiny_cfg, gating=dataclasses.replace(tiny_cfg.gating,
                                                                    drop_emr=0.0, drop_ct=0.0))

    def with_emr(**kw: Unpack[_EMRMode]) -> FusionModel:
        torch.manual_seed(0)
        return FusionModel(dataclasses.replace(base, long_emr=dataclasses.replace(
            base.long_emr, **kw)))

    mix, full, mem = with_emr(full_attention_p=1.0), with_emr(full_attention=True), with_emr()
    x = make_batch(t=100)  # two segments of 64
    mix.train()
    full.train()
    torch.testing.assert_close(mix(x).presence_logits, full(x).presence_logits)
    mix.eval()
    mem.eval()
    full.eval()
    with torch.no_grad():
        a, b, c = mix(x).presence_logits, mem(x).presence_logits, full(x).presence_logits
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)  # the two modes do differ on this input
