"""Masking of missing modalities, KV-cache decoding, MoE routing and the dense switch."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch

from multimodal.config import ModelConfig
from multimodal.errors import ModelConfigError
from multimodal.fusion import MoEFFN
from multimodal.model import FusionModel
from multimodal.outputs import ModelInput, ModelOutput
from multimodal.tokenizer import BOS, EOS, PAD, SPECIALS, UNK, WordTokenizer


def _same(a: ModelOutput, b: ModelOutput) -> None:
    for name in ("presence_logits", "laterality_logits", "location_logits", "size_log",
                 "modality_weights"):
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-6), name


@pytest.fixture()
def model(tiny_cfg: ModelConfig) -> FusionModel:
    torch.manual_seed(1)
    return FusionModel(tiny_cfg).eval()


def test_missing_modality_weight_zero_and_masked(
        model: FusionModel, make_batch: Callable[..., ModelInput]) -> None:
    x = make_batch(b=3, ct=(True, False, True), emr=(False, True, True), report=6)
    with torch.no_grad():
        out = model(x)
        w = out.modality_weights
        assert w[0, 1].item() == 0.0 and w[1, 0].item() == 0.0
        assert 0 < w[2, 0].item() < 1 and torch.allclose(w.sum(-1), torch.ones(3))
        # change the tokens of the missing modalities: nothing changes
        assert x.ct is not None and x.emr_ids is not None
        ct2, ids2 = x.ct.clone(), x.emr_ids.clone()
        ct2[1] = torch.rand_like(ct2[1]) * 5
        ids2[0] = torch.randint(5, 300, ids2[0].shape)
        out2 = model(dataclasses.replace(x, ct=ct2, emr_ids=ids2))
    _same(out, out2)
    assert out.lm_logits is not None and out2.lm_logits is not None
    assert torch.allclose(out.lm_logits, out2.lm_logits, atol=1e-5)
    assert out.emr_attr is not None and float(out.emr_attr[0].abs().sum()) == 0.0
    # ... while changing the present modality's input does change the output
    ct3 = x.ct.clone()
    ct3[2] = torch.rand_like(ct3[2])
    with torch.no_grad():
        out3 = model(dataclasses.replace(x, ct=ct3))
    assert not torch.allclose(out.laterality_logits[2], out3.laterality_logits[2])


def test_missing_modality_equals_absent_modality(
        model: FusionModel, make_batch: Callable[..., ModelInput]) -> None:
    """A case whose EMR is masked in a mixed batch == the same case with no EMR at all."""
    x = make_batch(b=2, emr=(False, True))
    with torch.no_grad():
        mixed = model(x)
        assert x.ct is not None
        alone = model(ModelInput(ct_present=torch.tensor([True]),
                                 emr_present=torch.tensor([False]), ct=x.ct[:1]))
    assert torch.allclose(mixed.presence_logits[0], alone.presence_logits[0], atol=1e-5)
    assert alone.modality_weights[0].tolist() == [1.0, 0.0]


def test_padding_and_long_emr_tokens(model: FusionModel,
                                     make_batch: Callable[..., ModelInput]) -> None:
    x = make_batch(b=1, t=150)
    assert x.emr_ids is not None and x.emr_mask is not None
    pad_ids = torch.cat([x.emr_ids, torch.randint(5, 300, (1, 40))], 1)
    pad_mask = torch.cat([x.emr_mask, torch.zeros(1, 40, dtype=torch.bool)], 1)
    with torch.no_grad():
        a = model(x)
        b = model(dataclasses.replace(x, emr_ids=pad_ids, emr_mask=pad_mask))
    _same(a, b)


def test_modality_dropout_in_training_only(tiny_cfg: ModelConfig,
                                           make_batch: Callable[..., ModelInput]) -> None:
    cfg = dataclasses.replace(tiny_cfg, gating=dataclasses.replace(tiny_cfg.gating,
                                                                   drop_emr=0.5))
    m = FusionModel(cfg)
    x = make_batch(b=64, t=8)
    torch.manual_seed(0)
    out = m.train()(x)
    dropped = int((~out.emr_used).sum())
    assert 15 < dropped < 50 and bool(out.ct_used.all())
    assert (out.modality_weights[~out.emr_used, 1] == 0).all()
    assert bool(m.eval()(x).emr_used.all())


def test_kv_cache_equals_recompute(model: FusionModel,
                                   make_batch: Callable[..., ModelInput]) -> None:
    with torch.no_grad():
        out = model(make_batch(b=3, emr=(True, False, True)))
        dec = model.decoder
        cached = dec.greedy(out.memory, out.memory_mask, 40, use_cache=True)
        full = dec.greedy(out.memory, out.memory_mask, 40, use_cache=False)
        assert torch.equal(cached, full) and cached.shape[1] == 40
        # step logits == teacher-forcing logits
        ids = torch.cat([torch.full((3, 1), BOS), cached[:, :10]], 1)
        tf = dec(ids, out.memory, out.memory_mask)
        st = dec.start(out.memory, out.memory_mask)
        for t in range(ids.shape[1]):
            assert torch.allclose(dec.step(ids[:, t:t + 1], st), tf[:, t], atol=1e-5)
        # batched generation == one case at a time; beam 1 == greedy
        one = dec.greedy(out.memory[1:2], out.memory_mask[1:2], 40)
        assert torch.equal(one[0], cached[1])
        beam1 = dec.beam(out.memory, out.memory_mask, 40, beam_size=1)
        assert torch.equal(beam1, cached)
        beam3 = dec.beam(out.memory, out.memory_mask, 40, beam_size=3)
        assert beam3.shape[0] == 3


def test_moe_routing_and_balance(tiny_cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    moe = MoEFFN(tiny_cfg.fusion, tiny_cfg.dim)
    x = torch.randn(4, 50, tiny_cfg.dim)
    valid = torch.ones(4, 50, dtype=torch.bool)
    valid[:, 40:] = False
    y, st = moe(x, valid)
    assert st.load is not None and torch.isclose(st.load.sum(), torch.tensor(1.0))
    # masked tokens are not routed: their output is the shared experts' only
    shared = sum(e(x[:, 40:]) for e in moe.shared)
    assert torch.allclose(y[:, 40:], shared, atol=1e-6)
    # uniform router: balance loss = E * sum(f * 1/E) = 1 exactly
    with torch.no_grad():
        moe.router.weight.zero_()
    _y, st0 = moe(x, valid)
    assert torch.isclose(st0.aux_loss, torch.tensor(1.0))
    # a collapsed router (all tokens to expert 0 and 1) is penalised
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 0.08
        moe.router.weight[1] = 0.06
    xs = x.abs()
    _y, st1 = moe(xs, valid)
    assert st1.load is not None and float(st1.load[:2].sum()) > 0.99
    assert float(st1.aux_loss.detach()) > 1.5
    # the balance loss pulls the router towards balance
    moe.router.weight.requires_grad_(True)
    opt = torch.optim.SGD(moe.router.parameters(), lr=0.01)
    for _ in range(5):
        opt.zero_grad()
        moe(xs, valid)[1].aux_loss.backward()
        opt.step()
    assert float(moe(xs, valid)[1].aux_loss.detach()) < float(st1.aux_loss.detach())


def test_dense_switch(tiny_cfg: ModelConfig, make_batch: Callable[..., ModelInput]) -> None:
    cfg = dataclasses.replace(tiny_cfg, fusion=dataclasses.replace(tiny_cfg.fusion, moe=False))
    m = FusionModel(cfg).eval()
    with torch.no_grad():
        out = m(make_batch())
    assert out.expert_load is None and float(out.aux_loss) == 0.0
    assert not any("experts" in n for n, _ in m.named_parameters())
    moe_out = FusionModel(tiny_cfg).eval()(make_batch())
    assert moe_out.expert_load is not None
    assert moe_out.expert_load.shape == (tiny_cfg.fusion.depth, tiny_cfg.fusion.n_routed)


def test_decoding_never_emits_unk_pad_or_bos(model: FusionModel,
                                             make_batch: Callable[..., ModelInput],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Even when UNK, PAD and BOS are the most likely tokens, greedy and beam search pick
    the best other token: a draft never says "[UNK]" or has a gap before its EOS."""
    dec = model.decoder
    orig = dec.logits
    boost = torch.zeros(dec.tok.weight.shape[0])
    boost[[UNK, PAD, BOS]] = 1e4
    monkeypatch.setattr(dec, "logits", lambda h: orig(h) + boost)
    with torch.no_grad():
        out = model(make_batch(b=2))
        for ids in (dec.greedy(out.memory, out.memory_mask, 30),
                    dec.greedy(out.memory, out.memory_mask, 30, use_cache=False),
                    dec.beam(out.memory, out.memory_mask, 30, beam_size=3)):
            for row in ids.tolist():
                body = row[:row.index(EOS)] if EOS in row else row
                assert body and not {UNK, PAD, BOS} & set(body)


def test_decode_joins_split_decimals_and_spaces_brackets() -> None:
    tok = WordTokenizer([*SPECIALS, "6", "2", ".", "cm", "about", "consolidation", "(", ")",
                         "rll", ",", "4", "th", "rib"])
    ids = tok.encode("about 6 . 6 cm . 2 . consolidation")[0]
    assert tok.decode(ids) == "about 6.6 cm. 2. consolidation"
    ids = tok.encode("consolidation(rll ), 6 cm")[0]
    assert tok.decode(ids) == "consolidation (rll), 6 cm"
    assert tok.decode(tok.encode("4th rib")[0]) == "4th rib"


def test_decode_keeps_list_numbers_apart_from_the_next_number() -> None:
    # "2. 12 mm nodule" must not read "2.12 mm nodule"; "1. 3.7 cm" not "1.3.7 cm"
    tok = WordTokenizer([*SPECIALS, "1", "2", "12", "6", "3.7", ".", ":", "cm", "mm", "mass",
                         "nodule", "impression", "about"])
    ids = tok.encode("impression: 1. 3.7 cm mass. 2. 12 mm nodule.")[0]
    assert tok.decode(ids) == "impression: 1. 3.7 cm mass. 2. 12 mm nodule."
    assert tok.decode(tok.encode("1. 6 cm mass")[0]) == "1. 6 cm mass"
    assert tok.decode(tok.encode("mass about 6 . 6 cm")[0]) == "mass about 6.6 cm"
    assert tok.decode(tok.encode("2. 6 . 12 mm")[0]) == "2. 6.12 mm"  # a list item's decimal


def test_decode_keeps_a_bullet_apart_and_a_hyphen_joined() -> None:
    tok = WordTokenizer([*SPECIALS, "-", ":", ".", "impression", "cardiomegaly", "moderate",
                         "emphysema", "right", "sided", "effusion"])
    text = "impression: - cardiomegaly. - moderate emphysema. right-sided effusion."
    assert tok.decode(tok.encode(text)[0]) == text
    assert tok.decode(tok.encode("- cardiomegaly")[0]) == "- cardiomegaly"


def test_unknown_decimals_are_split_for_report_targets() -> None:
    tok = WordTokenizer([*SPECIALS, *(str(i) for i in range(10)), "58", ".", "(", ")",
                         "ratio", "approximately", "1.5", "cm", "300", ";"])
    text = "ratio approximately 0.58 (1.5). 2. 5.5 cm; 2. 0.07 cm"
    ids, spans = tok.encode(text)
    assert UNK in ids  # the EMR's encoding: an unknown decimal is one unknown word
    ids, spans = tok.encode(text, split_decimals=True)
    assert UNK not in ids
    assert [text[a:b] for a, b in spans][2:6] == ["0", ".", "5", "8"]  # digit by digit
    assert "1.5" in [tok.vocab[i] for i in ids]  # a known decimal stays one token
    assert tok.decode(ids) == "ratio approximately 0.58 (1.5). 2. 5.5 cm; 2. 0.07 cm"
    assert tok.encode("300.25", split_decimals=True)[0][0] == tok.vocab.index("300")
    assert tok.encode("412.5", split_decimals=True)[0][0] == UNK  # no such integer


def test_repeat_guard_bans_an_ngram_twice_in_a_sentence_only() -> None:
    from multimodal.decoder import RepeatGuard

    g = RepeatGuard(3, frozenset({5}))
    assert g.banned([10, 11, 12, 10, 11]) == [12]  # "10 11" was followed by 12 before
    assert g.banned([10, 11, 12, 5, 10, 11]) == []  # a new sentence starts after 5
    assert g.banned([10]) == [] and g.banned([]) == []
    logits = torch.zeros(2, 20)
    out = g.apply(logits, torch.tensor([[10, 11, 12, 10, 11], [1, 2, 3, 4, 5]]))
    assert out[0, 12] == float("-inf") and torch.isfinite(out[1]).all()
    assert torch.equal(logits, torch.zeros(2, 20))  # input not modified
    assert RepeatGuard.for_vocab(0, [".", "a"]) is None
    assert RepeatGuard.for_vocab(6, ["a", ".", ";", "b"]) == RepeatGuard(6, frozenset({1, 2}))
    with pytest.raises(ValueError):
        RepeatGuard(1, frozenset())
    with pytest.raises(ModelConfigError):
        dataclasses.replace(ModelConfig().decoder, no_repeat_ngram=1)


def test_greedy_and_beam_with_the_guard_break_a_loop() -> None:
    from multimodal.config import DecoderConfig
    from multimodal.decoder import DecodeState, RepeatGuard, ReportDecoder

    class Looping(ReportDecoder):
        """Always prefers 10, 11, 10, 11, ... (then 12, 13): a degenerate loop."""

        def start(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> DecodeState:
            return DecodeState([], torch.zeros(memory.shape[0], 1, 1, 1))

        def step(self, ids: torch.Tensor, state: DecodeState) -> torch.Tensor:
            state.length += 1
            lg = torch.zeros(ids.shape[0], 20)
            lg[:, 10 if state.length % 2 else 11] = 5.0
            lg[:, 12] = 2.0
            lg[:, 13] = 1.0
            return lg

    dec = Looping(DecoderConfig(depth=1, heads=2, max_len=32), 8, 20)
    mem, mask = torch.zeros(2, 3, 8), torch.ones(2, 3, dtype=torch.bool)
    guard = RepeatGuard(3, frozenset({5}))

    def repeats(row: list[int]) -> bool:
        grams = [tuple(row[i:i + 3]) for i in range(len(row) - 2)]
        return len(grams) != len(set(grams))

    loop = dec.greedy(mem, mask, 12)[0].tolist()
    assert loop == [10, 11] * 6 and repeats(loop)
    for ids in (dec.greedy(mem, mask, 12, guard=guard), dec.beam(mem, mask, 12, 2, guard=guard)):
        for row in ids.tolist():
            assert not repeats(row) and len(row) == 12, row
