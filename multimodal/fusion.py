"""Dynamic modality gating, DeepSeekMoE feed-forward, and the deep-fusion blocks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from multimodal.config import FusionConfig, GatingConfig
from multimodal.errors import ModalityError
from multimodal.layers import Attention, Mlp


class ModalityGate(nn.Module):
    """Per-case modality weights from summaries + availability + quality.

    A missing modality gets logit -inf, i.e. weight exactly 0; the weights sum to 1."""

    def __init__(self, cfg: GatingConfig, dim: int, modalities: tuple[str, ...]) -> None:
        super().__init__()
        self.modalities = modalities
        self.missing = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(dim)) for m in modalities})
        self.score = nn.ModuleDict({m: nn.Sequential(
            nn.LayerNorm(dim + 2), nn.Linear(dim + 2, cfg.hidden), nn.GELU(),
            nn.Linear(cfg.hidden, 1)) for m in modalities})

    def forward(self, summary: dict[str, Tensor], present: dict[str, Tensor],
                quality: dict[str, Tensor]) -> Tensor:
        """summary (B, D), present (B,) bool, quality (B,) per modality -> log-weights (B, M)
        (exp() gives the weights; -inf, i.e. weight exactly 0, for a missing modality)."""
        logits = []
        for m in self.modalities:
            p = present[m]
            s = torch.where(p[:, None], summary[m], self.missing[m][None])
            feat = torch.cat([s, p.float()[:, None], quality[m].float()[:, None]], -1)
            lg = self.score[m](feat)[:, 0]
            logits.append(lg.masked_fill(~p, float("-inf")))
        stacked = torch.stack(logits, -1)  # (B, M)
        if bool((~torch.stack([present[m] for m in self.modalities], -1).any(-1)).any()):
            raise ModalityError("a case has no modality at all (neither CT nor EMR)")
        return torch.log_softmax(stacked, -1)


@dataclass
class FFNStats:
    aux_loss: Tensor  # () load-balance loss (0 for dense)
    load: Tensor | None  # (E,) fraction of routed assignments per expert (None for dense)


class MoEFFN(nn.Module):
    """DeepSeekMoE feed-forward: shared experts (always on) + fine-grained routed experts,
    top-k routing with normalised gates and a Switch-style load-balance loss."""

    def __init__(self, cfg: FusionConfig, dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.shared = nn.ModuleList(Mlp(dim, cfg.expert_hidden) for _ in range(cfg.n_shared))
        self.experts = nn.ModuleList(Mlp(dim, cfg.expert_hidden) for _ in range(cfg.n_routed))
        self.router = nn.Linear(dim, cfg.n_routed, bias=False)

    def forward(self, x: Tensor, valid: Tensor) -> tuple[Tensor, FFNStats]:
        """x (B, N, D), valid (B, N) bool -> (B, N, D); masked tokens are not routed."""
        b, n, d = x.shape
        flat = x.reshape(-1, d)
        v = valid.reshape(-1)
        y = torch.zeros_like(flat)
        for e in self.shared:
            y = y + e(flat)
        scores = torch.softmax(self.router(flat), -1)  # (BN, E)
        topv, topi = scores.topk(self.cfg.top_k, dim=-1)  # (BN, k)
        gates = topv / topv.sum(-1, keepdim=True)
        counts = []
        for ei, expert in enumerate(self.experts):
            hit = (topi == ei) & v[:, None]  # (BN, k)
            rows, slot = hit.nonzero(as_tuple=True)
            counts.append(rows.numel())
            if rows.numel():
                y = y.index_add(0, rows, gates[rows, slot, None] * expert(flat[rows]))
        nv = max(int(v.sum()), 1)
        load = torch.tensor(counts, dtype=torch.float32, device=x.device) / (nv * self.cfg.top_k)
        p_mean = (scores * v[:, None].float()).sum(0) / nv
        aux = self.cfg.n_routed * (load.detach() * p_mean).sum()
        return y.view(b, n, d), FFNStats(aux, load)


class DenseFFN(nn.Module):
    def __init__(self, cfg: FusionConfig, dim: int) -> None:
        super().__init__()
        self.mlp = Mlp(dim, cfg.dense_hidden)

    def forward(self, x: Tensor, valid: Tensor) -> tuple[Tensor, FFNStats]:
        return self.mlp(x), FFNStats(x.new_zeros(()), None)


class FusionBlock(nn.Module):
    """Joint self-attention over [queries; CT tokens; EMR memory] + MoE / dense FFN."""

    def __init__(self, cfg: FusionConfig, dim: int) -> None:
        super().__init__()
        self.n1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, cfg.heads)
        self.n2 = nn.LayerNorm(dim)
        self.ffn: MoEFFN | DenseFFN = MoEFFN(cfg, dim) if cfg.moe else DenseFFN(cfg, dim)

    def forward(self, x: Tensor, key_bias: Tensor, valid: Tensor) -> tuple[Tensor, FFNStats]:
        """x (B, L, D); key_bias (B, 1, 1, L) float (-inf = masked); valid (B, L) bool."""
        x = x + self.attn(self.n1(x), mask=key_bias)
        y, stats = self.ffn(self.n2(x), valid)
        return x + y, stats


def modality_key_bias(log_w: Tensor, segments: list[tuple[int, Tensor]],
                      n_queries: int) -> tuple[Tensor, Tensor]:
    """Attention key bias from modality log-weights (no log(0) in the graph).

    log_w (B, M); segments: per modality (length, valid (B, len)).  Key bias of a modality's
    tokens is log(w_m * M_available): equal weights give 0, weight 0 gives -inf (masked).
    Returns (bias (B, 1, 1, L), valid (B, L))."""
    b = log_w.shape[0]
    avail = torch.isfinite(log_w)  # (B, M)
    n_avail = avail.sum(-1, keepdim=True).float()  # (B, 1)
    parts = [log_w.new_zeros(b, n_queries)]
    valids = [torch.ones(b, n_queries, dtype=torch.bool, device=log_w.device)]
    for mi, (length, valid) in enumerate(segments):
        ok = valid & avail[:, mi: mi + 1]
        lw = log_w[:, mi: mi + 1] + torch.log(n_avail)  # (B, 1)
        part = lw.expand(b, length).masked_fill(~ok, float("-inf"))
        parts.append(part)
        valids.append(ok)
    bias = torch.cat(parts, 1)
    return bias[:, None, None, :], torch.cat(valids, 1)


def load_report(stats: list[FFNStats]) -> Tensor | None:
    """(depth, E) expert load per fusion block, or None for dense."""
    loads = [s.load for s in stats if s.load is not None]
    return torch.stack(loads) if loads else None


def total_aux(stats: list[FFNStats]) -> Tensor:
    return torch.stack([s.aux_loss for s in stats]).sum()


