"""Shared modality encoder ("align shallow"), long-EMR memory recurrence, InfoNCE alignment."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multimodal.config import EncoderConfig, LongEMRConfig
from multimodal.layers import Block, attn_bias
from multimodal.stems import EMRStem

MODALITIES: tuple[str, ...] = ("ct", "emr")


class SharedEncoder(nn.Module):
    """One stack of blocks, the same weights for every modality, plus type embeddings."""

    def __init__(self, cfg: EncoderConfig, dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, cfg.heads, cfg.mlp_ratio, cfg.dropout)
                                    for _ in range(cfg.depth))
        self.type_embed = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(1, 1, dim) * 0.02) for m in MODALITIES})
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, modality: str, mask: Tensor | None = None,
                bias: Tensor | None = None) -> Tensor:
        """x (B, N, D); mask (B, 1|H, N, N) bool keep; bias (H, N, N) float -> (B, N, D)."""
        m = attn_bias(mask, bias)
        x = x + self.type_embed[modality]
        for blk in self.blocks:
            x = blk(x, m)
        out: Tensor = self.norm(x)
        return out


@dataclass
class EMREncoding:
    memory: Tensor  # (B, M, D) fixed-size fused EMR representation (memory tokens)
    memory_mask: Tensor  # (B, M) bool: valid (EMR present)
    tokens: Tensor  # (B, T, D) per-token states (attribution)
    token_mask: Tensor  # (B, T) bool


class LongEMREncoder(nn.Module):
    """512-token segments, sliding-window attention, learned memory tokens carried across
    segments (memory_{s+1} = encoder output at the memory slots of segment s)."""

    def __init__(self, cfg: LongEMRConfig, dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.memory = nn.Parameter(torch.randn(1, cfg.n_memory, dim) * 0.02)

    def segment_mask(self, tok_valid: Tensor) -> Tensor:
        """(B, S) valid -> (B, 1, M+S, M+S) keep-mask: memory sees all valid tokens and memory;
        tokens see memory and valid tokens within +-window."""
        b, s = tok_valid.shape
        m = self.cfg.n_memory
        dev = tok_valid.device
        i = torch.arange(m + s, device=dev)
        is_tok = i >= m
        # token-token pairs are limited to the window (no in-place ops: ONNX-exportable)
        allowed = ~(is_tok[:, None] & is_tok[None, :]) | (
            (i[:, None] - i[None, :]).abs() <= self.cfg.window)  # (M+S, M+S)
        cols = torch.cat([torch.ones(b, m, dtype=torch.bool, device=dev), tok_valid], 1)
        keep = cols[:, None, :] & allowed[None]
        return keep[:, None]

    def forward(self, stem: EMRStem, encoder: SharedEncoder, ids: Tensor, valid: Tensor,
                present: Tensor, full: bool | None = None) -> EMREncoding:
        """ids, valid (B, T); present (B,) bool -> :class:`EMREncoding`; ``full`` overrides
        ``cfg.full_attention`` for this call (training's mode mix)."""
        b, t = ids.shape
        valid = valid & present[:, None]
        mem = self.memory.expand(b, -1, -1)
        seg = self.cfg.segment_len
        if self.cfg.full_attention if full is None else full:
            # full-attention mode (the bench's baseline; training's mode mix): the same
            # embeddings (segment-local positions), one pass of full attention over memory +
            # all tokens; every token is handed to fusion
            parts = [stem(ids[:, s0: s0 + seg]) for s0 in range(0, t, seg)]
            x = torch.cat(parts, 1) if parts else mem.new_zeros(b, 0, mem.shape[-1])
            h = torch.cat([mem, x], 1)
            keep = None
            if not bool(valid.all()):
                n = h.shape[1]
                keep = torch.ones(b, 1, n, n, dtype=torch.bool, device=ids.device)
                keep[:, 0, :, mem.shape[1]:] = valid[:, None, :]
            out = encoder(h, "emr", keep)
            m_out, toks = out[:, : mem.shape[1]], out[:, mem.shape[1]:]
            mmask = present[:, None].expand(-1, mem.shape[1])
            return EMREncoding(torch.cat([m_out, toks], 1), torch.cat([mmask, valid], 1),
                               toks, valid)
        states = []
        for s0 in range(0, t, seg):
            sv = valid[:, s0: s0 + seg]
            if not bool(sv.any()):
                states.append(mem.new_zeros(b, sv.shape[1], mem.shape[-1]))
                continue
            h = torch.cat([mem, stem(ids[:, s0: s0 + seg])], 1)
            out = encoder(h, "emr", self.segment_mask(sv))
            has = sv.any(1)[:, None, None]
            mem = torch.where(has, out[:, : self.cfg.n_memory], mem)
            states.append(out[:, self.cfg.n_memory:])
        toks = torch.cat(states, 1) if states else mem.new_zeros(b, 0, mem.shape[-1])
        return EMREncoding(mem, present[:, None].expand(-1, self.cfg.n_memory), toks, valid)


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE between matched rows of a, b (B, D); needs B >= 2."""
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    logits = a @ b.t() / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """x (B, N, D), mask (B, N) bool -> (B, D); rows without valid entries give 0."""
    w = mask.to(x.dtype)[..., None]
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


def log_quality(n_tokens: Tensor, ref: float = 256.0) -> Tensor:
    """EMR quality signal in [0, 1]: log-scaled token count."""
    return (torch.log1p(n_tokens.float()) / math.log1p(ref)).clamp(0.0, 1.0)
