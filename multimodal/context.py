"""EMR context head: what the note adds to an image finding.

The impression of a finding often depends on the patient, not the image: a nodule in a patient
with a known cancer is "suspicious for metastatic disease", consolidation with fever and
leukocytosis is "pneumonia", an effusion with heart failure is "likely cardiogenic".  The head
reads that off the EMR tokens: per context slot (a finding label, :class:`ContextConfig`) a
learned query attends over the note's tokens, and the pooled vector together with the
finding's fused query state gives logits over the slot's classes.  Class 0 means the note adds
nothing; without a note the decision is class 0 (nothing is guessed).

The decoder reads the decision on that finding's conditioning token
(:class:`multimodal.decoder.FindingConditioner`): training teacher-forces the true class,
inference states the head's.  The attention weights are the EMR evidence of the decision.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from multimodal.config import ContextConfig
from multimodal.errors import ShapeError
from multimodal.heads import top_spans
from multimodal.outputs import FindingPrediction, ModelOutput

#: a slot whose finding is not stated (absent): no context
NO_CONTEXT = -1


class ContextHead(nn.Module):
    def __init__(self, cfg: ContextConfig, labels: tuple[str, ...], dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        k, c = len(cfg.labels), cfg.n_classes
        self.register_buffer("label_index", torch.tensor(
            [labels.index(lab) for lab in cfg.labels], dtype=torch.long), persistent=False)
        valid = torch.zeros(k, c, dtype=torch.bool)
        for i, cls in enumerate(cfg.classes):
            valid[i, : len(cls)] = True
        self.register_buffer("class_valid", valid, persistent=False)
        self.query = nn.Parameter(torch.randn(k, dim) * 0.02)
        self.key = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.LayerNorm(2 * dim), nn.Linear(2 * dim, cfg.hidden),
                                 nn.GELU(), nn.Linear(cfg.hidden, k * c))

    def forward(self, finding_q: Tensor, emr_tok: Tensor | None, tok_valid: Tensor | None
                ) -> tuple[Tensor, Tensor | None]:
        """finding_q (B, F, D) fused finding queries, emr_tok (B, T, D) and tok_valid (B, T)
        (None without any note in the batch) -> logits (B, K, C) (classes a slot does not have:
        -inf) and attention (B, K, T) over the note's tokens (rows of a case without a note
        are 0)."""
        b, _f, d = finding_q.shape
        class_valid = self.get_buffer("class_valid")  # (K, C)
        k, c = class_valid.shape
        pooled = finding_q.new_zeros(b, k, d)
        attn = None
        if emr_tok is not None and tok_valid is not None:
            if emr_tok.shape[:2] != tok_valid.shape or emr_tok.shape[0] != b:
                raise ShapeError("emr_tok (B, T, D) and tok_valid (B, T) must match the batch")
            scores = torch.einsum("kd,btd->bkt", self.query, self.key(emr_tok)) / math.sqrt(d)
            scores = scores.masked_fill(~tok_valid[:, None, :], float("-inf"))
            has = tok_valid.any(1)  # (B,)
            attn = torch.softmax(scores.masked_fill(~has[:, None, None], 0.0), -1)
            attn = attn * has[:, None, None]  # (B, K, T); 0 for a case without a note
            pooled = torch.einsum("bkt,btd->bkd", attn, emr_tok)
        fq = finding_q[:, self.get_buffer("label_index")]  # (B, K, D)
        logits = self.mlp(torch.cat([pooled, fq], -1))  # (B, K, K * C)
        idx = torch.arange(k, device=logits.device)
        logits = logits.view(b, k, k, c)[:, idx, idx]  # slot k's own C outputs: (B, K, C)
        return logits.masked_fill(~class_valid, float("-inf")), attn


def context_decisions(logits: Tensor, emr_used: Tensor) -> Tensor:
    """Per slot the predicted class (B, K) int64; class 0 for a case whose note was not
    used (no note, or removed)."""
    return logits.detach().argmax(-1) * emr_used[:, None].to(torch.long)


def with_context(out: ModelOutput, cfg: ContextConfig, preds: list[list[FindingPrediction]],
                 n_spans: int) -> list[list[FindingPrediction]]:
    """``preds`` (from :func:`multimodal.heads.predict_findings`) with the EMR context of each
    present finding that has a slot: the class the decoder is given (:meth:`FusionModel.
    generate`) and, when the note was used, its top ``n_spans`` attended tokens."""
    if out.context_logits is None or not cfg.labels:
        return preds
    dec = context_decisions(out.context_logits, out.emr_used).cpu()
    slot_of = {lab: k for k, lab in enumerate(cfg.labels)}
    res = []
    for b, case in enumerate(preds):
        row = []
        for p in case:
            k = slot_of.get(p.label)
            if k is None or not p.present:
                row.append(p)
                continue
            spans: tuple[tuple[int, int], ...] = ()
            if out.context_attn is not None and bool(out.emr_used[b]):
                spans = top_spans(out.context_attn[b, k].detach().float().cpu(), n_spans)
            row.append(dataclasses.replace(p, context=cfg.classes[k][int(dec[b, k])],
                                           context_token_spans=spans))
        res.append(row)
    return res


__all__ = ["NO_CONTEXT", "ContextHead", "context_decisions", "with_context"]
