"""decoder.emr_memory: false masks the note's tokens out of the decoder's memory; the note then
reaches the text only through fusion, the decisions and the context classes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from multimodal.config import ModelConfig
from multimodal.model import FusionModel
from multimodal.outputs import ModelInput


def _model(cfg: ModelConfig, emr_memory: bool) -> FusionModel:
    torch.manual_seed(0)
    return FusionModel(dataclasses.replace(cfg, decoder=dataclasses.replace(
        cfg.decoder, emr_memory=emr_memory))).eval()


def test_the_notes_tokens_are_masked_out_of_the_decoders_memory(
        tiny_cfg: ModelConfig, make_batch: Callable[..., ModelInput]) -> None:
    x = make_batch(b=2, report=6)
    with torch.no_grad():
        on, off = (_model(tiny_cfg, m)(x) for m in (True, False))
    # the same fused memory and decisions; only what the decoder may read differs
    assert torch.equal(on.memory, off.memory)
    assert torch.equal(on.presence_logits, off.presence_logits)
    extra = on.memory_mask & ~off.memory_mask
    assert bool(extra.any()) and not bool((off.memory_mask & ~on.memory_mask).any())
    first = int(extra[0].nonzero()[0])  # the note's tokens come last
    assert bool(extra[:, first:].all()) and not bool(extra[:, :first].any())
    assert first >= len(tiny_cfg.heads.labels)  # the finding queries stay
    assert on.lm_logits is not None and off.lm_logits is not None
    assert not torch.allclose(on.lm_logits, off.lm_logits)


def test_with_the_note_masked_its_memory_tokens_do_not_reach_the_text(
        tiny_cfg: ModelConfig, make_batch: Callable[..., ModelInput]) -> None:
    model = _model(tiny_cfg, False)
    x = make_batch(b=2)
    with torch.no_grad():
        out = model(x)
        first = int((~out.memory_mask[0]).nonzero()[0])
        noisy = out.memory.clone()
        noisy[:, first:] = torch.randn_like(noisy[:, first:]) * 10
        a = model.generate(out, max_new=12)
        b = model.generate(dataclasses.replace(out, memory=noisy), max_new=12)
    assert torch.equal(a, b)
    # with the note in the decoder's memory the same change reaches the text's logits
    on = _model(tiny_cfg, True)
    with torch.no_grad():
        o = on(x)
        mem, mask = on.decoder_memory(o.memory, o.memory_mask, torch.zeros(
            2, len(tiny_cfg.heads.labels), dtype=torch.bool), torch.zeros(
            2, len(tiny_cfg.heads.labels), dtype=torch.long))
        ids = torch.ones(2, 1, dtype=torch.long)
        l1 = on.decoder(ids, mem, mask)
        mem2 = mem.clone()
        mem2[:, first:o.memory.shape[1]] = noisy[:, first:]
        l2 = on.decoder(ids, mem2, mask)
    assert not torch.allclose(l1, l2)
