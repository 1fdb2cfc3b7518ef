"""Late-fusion baseline: the same stems and shared encoder; pooled CT and EMR vectors are
concatenated (a missing modality is zero-filled, as a traditional model does) and an MLP
sized to about the fusion stage's parameter count feeds the same heads and decoder."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from multimodal.config import ModelConfig
from multimodal.decoder import RepeatGuard, ReportDecoder
from multimodal.dense import DenseDetector
from multimodal.encoder import MODALITIES, masked_mean
from multimodal.fusion import FusionBlock
from multimodal.heads import FindingsHead, body_midline_x
from multimodal.model import build_unimodal, encode_ct_dense, modality_dropout
from multimodal.outputs import ModelInput, ModelOutput


def fusion_param_count(cfg: ModelConfig) -> int:
    """Parameters of the fused model's fusion stage (blocks, queries, gate approx.)."""
    blocks = sum(p.numel() for _ in range(cfg.fusion.depth)
                 for p in FusionBlock(cfg.fusion, cfg.dim).parameters())
    return blocks + (len(cfg.heads.labels) + cfg.fusion.n_extra_queries) * cfg.dim


class LateFusionModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.stems, self.encoder, self.long_emr = build_unimodal(cfg)
        self.n_labels = len(cfg.heads.labels)
        hidden = max(d, fusion_param_count(cfg) // (3 * d + 1))
        self.mlp = nn.Sequential(nn.Linear(2 * d, hidden), nn.GELU(), nn.Linear(hidden, d))
        self.label_embed = nn.Parameter(torch.randn(1, self.n_labels, d) * 0.02)
        self.to_memory = nn.ModuleDict({m: nn.Linear(d, d) for m in MODALITIES})
        self.findings = FindingsHead(cfg.heads, d)
        # the same optional dense detector as the fusion model, so a comparison is like for like
        self.dense = DenseDetector(cfg.ct, self.n_labels) if cfg.ct.dense_hidden else None
        self.decoder = ReportDecoder(cfg.decoder, d, cfg.emr.vocab_size)

    def forward(self, x: ModelInput) -> ModelOutput:
        x.validate(self.cfg)
        b, d, dev = x.batch_size, self.cfg.dim, x.ct_present.device
        ct_used, emr_used = x.ct_present.clone(), x.emr_present.clone()
        if self.training:
            ct_used, emr_used = modality_dropout(ct_used, emr_used, self.cfg.gating.drop_emr,
                                                 self.cfg.gating.drop_ct)
        ct_tok = None
        ct_vec = torch.zeros(b, d, device=dev)
        ct_valid = dense = dense_patch = None
        if x.ct is not None:
            ct_tok, dense, dense_patch = encode_ct_dense(self.stems, self.encoder, self.dense,
                                                         x.ct)
            ct_valid = ct_used[:, None].expand(-1, ct_tok.shape[1])
            ct_vec = masked_mean(ct_tok, ct_valid)
        emr_vec = torch.zeros(b, d, device=dev)
        emr_tok = tok_valid = None
        if x.emr_ids is not None and x.emr_mask is not None:
            enc = self.long_emr(self.stems["emr"], self.encoder, x.emr_ids, x.emr_mask,
                                emr_used)
            emr_vec = masked_mean(enc.memory, enc.memory_mask)
            emr_tok, tok_valid = enc.tokens, enc.token_mask & emr_used[:, None]
        fused: Tensor = self.mlp(torch.cat([ct_vec, emr_vec], -1))  # (B, D)
        q = fused[:, None] + self.label_embed  # (B, F, D)
        patch, mil = self.findings.patch_logits(ct_tok, ct_valid, dense_patch)
        pres, lat, loc, size, loc_logits, attr = self.findings(q, ct_tok, ct_valid, emr_tok,
                                                               tok_valid, mil)
        pres = self.findings.without_ct(pres, ct_used)
        memory = torch.stack([self.to_memory["ct"](ct_vec), self.to_memory["emr"](emr_vec)],
                             1)  # (B, 2, D)
        mmask = torch.ones(b, 2, dtype=torch.bool, device=dev)
        n = (ct_used.float() + emr_used.float()).clamp_min(1.0)
        weights = torch.stack([ct_used.float(), emr_used.float()], -1) / n[:, None]
        lm = self.decoder(x.report_ids, memory, mmask) if x.report_ids is not None else None
        zero = torch.zeros((), device=dev)
        return ModelOutput(
            presence_logits=pres, laterality_logits=lat, location_logits=loc, size_log=size,
            loc_logits=loc_logits, emr_attr=attr, modality_weights=weights, ct_used=ct_used,
            emr_used=emr_used, align_loss=zero, aux_loss=zero, expert_load=None,
            memory=memory, memory_mask=mmask, lm_logits=lm, patch_logits=patch,
            dense_logits=dense,
            ct_midline=None if x.ct is None or self.training  # only post-processing reads it
            else body_midline_x(x.ct, self.cfg.ct),
            **self.findings.decision_fields())

    @torch.no_grad()
    def generate(self, out: ModelOutput, max_new: int = 200, beam_size: int = 1,
                 use_cache: bool = True, findings: object = None,
                 guard: RepeatGuard | None = None, context: object = None) -> Tensor:
        """Report token ids (B, L); ``findings`` and ``context`` are accepted for the fusion
        model's interface and not used (the baseline's decoder is not conditioned)."""
        if beam_size > 1:
            return self.decoder.beam(out.memory, out.memory_mask, max_new, beam_size,
                                     guard=guard)
        return self.decoder.greedy(out.memory, out.memory_mask, max_new, use_cache, guard)
