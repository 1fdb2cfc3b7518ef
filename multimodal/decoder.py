"""Report decoder: autoregressive Transformer with cross-attention to the fused memory,
a KV cache, greedy and beam decoding, batched generation."""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multimodal.config import LATERALITY, DecoderConfig
from multimodal.errors import ShapeError
from multimodal.layers import Attention, Mlp, attn_bias
from multimodal.outputs import FindingPrediction
from multimodal.tokenizer import BOS, EOS, PAD, UNK

# never generated: a draft must not say "[UNK]" or restart mid-sentence
_BANNED: tuple[int, ...] = (PAD, UNK, BOS)
_LOG_MAX_MM = math.log1p(200.0)  # the conditioning's size scale (heads.size_max_mm's default)


def _ban(logits: Tensor) -> Tensor:
    """(B, V) next-token logits with PAD, UNK and BOS set to -inf (a new tensor)."""
    out = logits.clone()
    out[:, list(_BANNED)] = float("-inf")
    return out


@dataclass(frozen=True)
class RepeatGuard:
    """No word n-gram of length ``n`` twice within one sentence of the generated text; a
    sentence ends at any token of ``breaks`` (the tokenizer's ".", ";")."""

    n: int
    breaks: frozenset[int]

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"RepeatGuard.n must be >= 2, got {self.n}")

    @classmethod
    def for_vocab(cls, n: int, vocab: typing.Sequence[str]) -> RepeatGuard | None:
        """The guard of ``decoder.no_repeat_ngram`` ``n`` (0: None) over a tokenizer's
        vocabulary, whose "." and ";" end a sentence."""
        if n == 0:
            return None
        return cls(n, frozenset(i for i, t in enumerate(vocab) if t in (".", ";")))

    def banned(self, row: list[int]) -> list[int]:
        """The tokens that would repeat an n-gram of the current sentence of ``row``."""
        start = max((i + 1 for i, t in enumerate(row) if t in self.breaks), default=0)
        sent = row[start:]
        k = self.n - 1
        if len(sent) < k:
            return []
        prefix = sent[len(sent) - k:]
        return [sent[i + k] for i in range(len(sent) - k) if sent[i:i + k] == prefix]

    def apply(self, logits: Tensor, seqs: Tensor) -> Tensor:
        """(R, V) next-token logits of the rows ``seqs`` (R, t) with the banned tokens -inf
        (a new tensor)."""
        out = logits.clone()
        for r, row in enumerate(seqs.tolist()):
            ban = self.banned(row)
            if ban:
                out[r, ban] = float("-inf")
        return out


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.n1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads)
        self.n2 = nn.LayerNorm(dim)
        self.cross = Attention(dim, heads)
        self.n3 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))


class FindingConditioner(nn.Module):
    """One memory token per finding type stating a decision: label + present/absent + side
    embeddings (decoder.condition), plus, for the findings with an EMR context slot
    (``context_slots``: slot k qualifies label index ``context_slots[k]``, with
    ``n_context`` classes at most), the stated context class of a present finding; with
    ``n_locations`` (decoder.condition_location) the stated location of a present finding."""

    def __init__(self, n_labels: int, dim: int, context_slots: tuple[int, ...] = (),
                 n_context: int = 0, size: bool = False, n_locations: int = 0) -> None:
        super().__init__()
        self.label = nn.Parameter(torch.randn(n_labels, dim) * 0.02)
        #: decoder.condition_size: log1p(mm) / log1p(200) -> (D,), added for a present
        #: finding with a size
        self.size: nn.Linear | None = nn.Linear(1, dim) if size else None
        self.present = nn.Embedding(2, dim)
        self.side = nn.Embedding(len(LATERALITY), dim)
        nn.init.normal_(self.present.weight, std=0.02)
        nn.init.normal_(self.side.weight, std=0.02)
        self.register_buffer("slot_label", torch.tensor(context_slots, dtype=torch.long),
                             persistent=False)
        self.context: nn.Parameter | None = nn.Parameter(
            torch.randn(len(context_slots), n_context, dim) * 0.02) if context_slots else None
        self.location: nn.Embedding | None = None
        if n_locations:
            self.location = nn.Embedding(n_locations, dim)
            nn.init.normal_(self.location.weight, std=0.02)

    def forward(self, present: Tensor, side: Tensor, context: Tensor | None = None,
                size: Tensor | None = None, location: Tensor | None = None) -> Tensor:
        """present (B, F) bool, side (B, F) int (LATERALITY index; < 0 means none), context
        (B, K) int (class per slot; < 0 means none), size (B, F) float mm (<= 0: none; read
        with decoder.condition_size only), location (B, F) int (heads.locations index; <= 0,
        "none", means none; read with decoder.condition_location only) -> (B, F, D)."""
        if present.shape != side.shape or present.shape[-1] != self.label.shape[0]:
            raise ShapeError(f"present and side must be (B, {self.label.shape[0]})")
        side = side.clamp_min(0) * present.long()  # an absent finding has no side
        out: Tensor = self.label + self.present(present.long()) + self.side(side)
        if self.size is not None and size is not None:
            if size.shape != present.shape:
                raise ShapeError(f"size must be (B, {self.label.shape[0]})")
            stated = (present & (size > 0)).to(out.dtype)[..., None]  # (B, F, 1)
            scaled = torch.log1p(size.clamp_min(0.0)).to(out.dtype)[..., None] / _LOG_MAX_MM
            out = out + self.size(scaled) * stated
        if self.location is not None and location is not None:
            if location.shape != present.shape:
                raise ShapeError(f"location must be (B, {self.label.shape[0]})")
            said = (present & (location > 0)).to(out.dtype)[..., None]  # (B, F, 1)
            idx = location.clamp(0, self.location.num_embeddings - 1)
            out = out + self.location(idx) * said
        if self.context is not None and context is not None:
            k = self.context.shape[0]
            if context.shape != (present.shape[0], k):
                raise ShapeError(f"context must be (B, {k})")
            slot = self.get_buffer("slot_label")  # (K,) label index of each slot
            stated = (context >= 0) & present[:, slot]  # (B, K)
            cls = context.clamp(0, self.context.shape[1] - 1)
            emb = self.context[torch.arange(k, device=cls.device), cls]  # (B, K, D)
            out = out.index_add(1, slot, emb * stated[..., None].to(emb.dtype))
        return out


def head_decisions(presence_logits: Tensor, laterality_logits: Tensor, ct_used: Tensor,
                   thresholds: Tensor | None) -> tuple[Tensor, Tensor]:
    """The head's raw decisions: present (B, F) bool (probability >= the fitted threshold,
    CT present) and side (B, F) int64 (laterality argmax)."""
    thr = thresholds if thresholds is not None else torch.full_like(presence_logits[0], 0.5)
    present = (torch.sigmoid(presence_logits.detach()) >= thr) & ct_used[:, None]
    return present, laterality_logits.detach().argmax(-1)


def stated_decisions(findings: list[list[FindingPrediction]], labels: tuple[str, ...]
                     ) -> tuple[Tensor, Tensor]:
    """Post-processed findings (per case, one per label in ``labels`` order) -> present
    (B, F) bool and side (B, F) int64."""
    for case in findings:
        if [p.label for p in case] != list(labels):
            raise ValueError(f"findings must list the labels {list(labels)} in order")
    present = torch.tensor([[p.present for p in case] for case in findings], dtype=torch.bool)
    side = torch.tensor([[LATERALITY.index(p.laterality) if p.laterality else 0 for p in case]
                         for case in findings], dtype=torch.long)
    return present, side


def stated_locations(findings: list[list[FindingPrediction]], locations: tuple[str, ...]
                     ) -> Tensor:
    """Post-processed findings -> the location each states (B, F) int64 index into
    ``locations`` (heads.locations), 0 ("none") where none or not one of them."""
    return torch.tensor([[locations.index(p.location) if p.present and p.location in locations
                          else 0 for p in case] for case in findings], dtype=torch.long)


def stated_sizes(findings: list[list[FindingPrediction]]) -> Tensor:
    """Post-processed findings -> the size each states (B, F) float mm, 0 where none."""
    return torch.tensor([[float(p.size_mm) if p.present and p.size_mm else 0.0 for p in case]
                         for case in findings], dtype=torch.float32)


@dataclass
class DecodeState:
    cross_kv: list[tuple[Tensor, Tensor]]  # per layer (B, H, M, Dh) x 2
    mem_bias: Tensor  # (B, 1, 1, M) float
    self_kv: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # (B, H, t, Dh) x 2
    length: int = 0

    def reorder(self, idx: Tensor) -> None:
        self.cross_kv = [(k[idx], v[idx]) for k, v in self.cross_kv]
        self.self_kv = [(k[idx], v[idx]) for k, v in self.self_kv]
        self.mem_bias = self.mem_bias[idx]


class ReportDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(1, cfg.max_len, dim))
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.layers = nn.ModuleList(DecoderLayer(dim, cfg.heads, cfg.mlp_ratio)
                                    for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim)

    def logits(self, h: Tensor) -> Tensor:
        out: Tensor = self.norm(h) @ self.tok.weight.t()  # tied output embedding: (B, L, V)
        return out

    def _layers(self) -> list[DecoderLayer]:
        return typing.cast(list[DecoderLayer], list(self.layers))

    def forward(self, ids: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """Teacher forcing: ids (B, L), memory (B, M, D), memory_mask (B, M) -> (B, L, V)."""
        if ids.ndim != 2 or ids.shape[1] > self.cfg.max_len or ids.shape[0] != memory.shape[0]:
            raise ShapeError(f"ids must be (B, <= {self.cfg.max_len}) matching the memory batch")
        x = self.tok(ids) + self.pos[:, : ids.shape[1]]
        mb = attn_bias(memory_mask[:, None, None, :], None)
        for layer in self._layers():
            x = x + layer.self_attn(layer.n1(x), is_causal=True)
            x = x + layer.cross(layer.n2(x), kv=memory, mask=mb)
            x = x + layer.mlp(layer.n3(x))
        return self.logits(x)

    def start(self, memory: Tensor, memory_mask: Tensor) -> DecodeState:
        kv = [layer.cross.project_kv(memory) for layer in self._layers()]
        mb = attn_bias(memory_mask[:, None, None, :], None)
        if mb is None:  # pragma: no cover - mask is never None here
            raise ShapeError("memory mask required")
        return DecodeState(kv, mb)

    def step(self, ids: Tensor, state: DecodeState) -> Tensor:
        """One step with the KV cache: ids (B, 1) -> next-token logits (B, V)."""
        t = state.length
        if t >= self.cfg.max_len:
            raise ShapeError("decoder max_len exceeded")
        x = self.tok(ids) + self.pos[:, t: t + 1]
        new_kv = []
        for li, layer in enumerate(self._layers()):
            h = layer.n1(x)
            k, v = layer.self_attn.project_kv(h)
            if state.self_kv:
                pk, pv = state.self_kv[li]
                k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
            new_kv.append((k, v))
            x = x + layer.self_attn.attend(h, k, v)
            ck, cv = state.cross_kv[li]
            x = x + layer.cross.attend(layer.n2(x), ck, cv, state.mem_bias)
            x = x + layer.mlp(layer.n3(x))
        state.self_kv = new_kv
        state.length = t + 1
        out: Tensor = self.logits(x)[:, -1]
        return out

    @torch.no_grad()
    def greedy(self, memory: Tensor, memory_mask: Tensor, max_new: int,
               use_cache: bool = True, guard: RepeatGuard | None = None) -> Tensor:
        """Batched greedy decoding -> (B, <= max_new) ids (EOS kept, PAD after EOS); with
        ``guard`` no n-gram is written twice within a sentence."""
        b = memory.shape[0]
        max_new = min(max_new, self.cfg.max_len - 1)
        ids = torch.full((b, 1), BOS, dtype=torch.long, device=memory.device)
        done = torch.zeros(b, dtype=torch.bool, device=memory.device)
        state = self.start(memory, memory_mask) if use_cache else None
        for _ in range(max_new):
            if state is not None:
                lg = self.step(ids[:, -1:], state)
            else:
                lg = self.forward(ids, memory, memory_mask)[:, -1]
            lg = _ban(lg)
            if guard is not None:
                lg = guard.apply(lg, ids[:, 1:])
            nxt = lg.argmax(-1).masked_fill(done, PAD)
            ids = torch.cat([ids, nxt[:, None]], 1)
            done |= nxt == EOS
            if bool(done.all()):
                break
        return ids[:, 1:]

    @torch.no_grad()
    def beam(self, memory: Tensor, memory_mask: Tensor, max_new: int, beam_size: int = 4,
             length_penalty: float = 1.0, guard: RepeatGuard | None = None) -> Tensor:
        """Batched beam search (KV cache reordered per step) -> (B, L) best ids; with
        ``guard`` no n-gram is written twice within a sentence."""
        b, m, d = memory.shape
        k = beam_size
        max_new = min(max_new, self.cfg.max_len - 1)
        mem = memory[:, None].expand(b, k, m, d).reshape(b * k, m, d)
        mmask = memory_mask[:, None].expand(b, k, m).reshape(b * k, m)
        state = self.start(mem, mmask)
        seqs = torch.full((b * k, 1), BOS, dtype=torch.long, device=memory.device)
        scores = torch.zeros(b, k, device=memory.device)
        scores[:, 1:] = float("-inf")  # all beams start identical: keep one
        done = torch.zeros(b * k, dtype=torch.bool, device=memory.device)
        lengths = torch.zeros(b * k, device=memory.device)
        for _ in range(max_new):
            lg = _ban(self.step(seqs[:, -1:], state))
            if guard is not None:
                lg = guard.apply(lg, seqs[:, 1:])
            lp = F.log_softmax(lg, -1)  # (B*k, V)
            v = lp.shape[-1]
            # finished beams only extend with PAD at no cost
            fin = torch.full_like(lp, float("-inf"))
            fin[:, PAD] = 0.0
            lp = torch.where(done[:, None], fin, lp)
            cand = (scores.reshape(-1, 1) + lp).reshape(b, k * v)
            top, idx = cand.topk(k, dim=-1)  # (B, k)
            src = (idx // v) + torch.arange(b, device=memory.device)[:, None] * k
            tok = (idx % v).reshape(-1)
            src = src.reshape(-1)
            state.reorder(src)
            seqs = torch.cat([seqs[src], tok[:, None]], 1)
            prev_done = done[src]
            lengths = lengths[src] + (~prev_done).float()
            done = prev_done | (tok == EOS)
            scores = top
            if bool(done.all()):
                break
        norm = scores / lengths.reshape(b, k).clamp_min(1.0) ** length_penalty
        best = norm.argmax(-1) + torch.arange(b, device=memory.device) * k
        return seqs[best, 1:]
