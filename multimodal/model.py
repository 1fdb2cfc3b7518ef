"""The DeepSeek-MM fusion model: stems -> shared encoder (align shallow) -> gating ->
deep fusion with MoE (fuse deep) -> findings head + report decoder."""

from __future__ import annotations

import typing

import torch
from torch import Tensor, nn

from multimodal.config import ModelConfig
from multimodal.context import NO_CONTEXT, ContextHead, context_decisions
from multimodal.decoder import (
    FindingConditioner,
    RepeatGuard,
    ReportDecoder,
    head_decisions,
    stated_decisions,
    stated_locations,
    stated_sizes,
)
from multimodal.dense import DenseDetector
from multimodal.encoder import (
    MODALITIES,
    LongEMREncoder,
    SharedEncoder,
    info_nce,
    log_quality,
    masked_mean,
)
from multimodal.fusion import (
    FusionBlock,
    ModalityGate,
    load_report,
    modality_key_bias,
    total_aux,
)
from multimodal.heads import FindingsHead, body_midline_x
from multimodal.outputs import FindingPrediction, ModelInput, ModelOutput
from multimodal.stems import CTStem, EMRStem


def modality_dropout(ct: Tensor, emr: Tensor, p_emr: float, p_ct: float
                     ) -> tuple[Tensor, Tensor]:
    """Training-time modality dropout on cases that have both (never drops both)."""
    both = ct & emr
    r = torch.rand(ct.shape[0], device=ct.device)
    drop_emr = both & (r < p_emr)
    drop_ct = both & (r >= p_emr) & (r < p_emr + p_ct)
    return ct & ~drop_ct, emr & ~drop_emr


def build_unimodal(cfg: ModelConfig) -> tuple[nn.ModuleDict, SharedEncoder, LongEMREncoder]:
    """The modality stems, the shared encoder and the long-EMR encoder.

    The fusion model and the late-fusion baseline build these the same way, so that the
    baseline differs only in how it fuses.
    """
    d = cfg.dim
    stems = nn.ModuleDict({
        "ct": CTStem(cfg.ct, d, cfg.encoder.heads),
        "emr": EMRStem(cfg.emr, d, cfg.long_emr.segment_len)})
    return stems, SharedEncoder(cfg.encoder, d), LongEMREncoder(cfg.long_emr, d)


def encode_ct_dense(stems: nn.ModuleDict, encoder: SharedEncoder, dense: DenseDetector | None,
                    ct: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """CT tokens (B, N, D) after the shared encoder and, with a dense detector, its cell
    logits (B, F, *ct.dense_shape) and their per-patch maximum (B, F, N). Shared by the
    fusion model and the late-fusion baseline."""
    stem = typing.cast(CTStem, stems["ct"])
    tok, first = stem.forward_map(ct)
    out: Tensor = encoder(tok, "ct", None, stem.bias())
    if dense is None:
        return out, None, None
    cells = dense(first)
    return out, cells, dense.per_patch(cells)


class FusionModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.stems, self.encoder, self.long_emr = build_unimodal(cfg)
        self.align = nn.ModuleDict({m: nn.Linear(d, d) for m in MODALITIES})
        self.gate = ModalityGate(cfg.gating, d, MODALITIES)
        self.n_labels = len(cfg.heads.labels)
        self.queries = nn.Parameter(
            torch.randn(1, self.n_labels + cfg.fusion.n_extra_queries, d) * 0.02)
        self.fusion = nn.ModuleList(FusionBlock(cfg.fusion, d) for _ in range(cfg.fusion.depth))
        self.fusion_norm = nn.LayerNorm(d)
        self.findings = FindingsHead(cfg.heads, d)
        self.dense = DenseDetector(cfg.ct, self.n_labels) if cfg.ct.dense_hidden else None
        self.decoder = ReportDecoder(cfg.decoder, d, cfg.emr.vocab_size)
        ctx = cfg.context
        self.context_head = ContextHead(ctx, cfg.heads.labels, d) if ctx.labels else None
        self.condition = FindingConditioner(
            self.n_labels, d, tuple(cfg.heads.labels.index(lab) for lab in ctx.labels),
            ctx.n_classes, cfg.decoder.condition_size,
            len(cfg.heads.locations) if cfg.decoder.condition_location else 0) \
            if cfg.decoder.condition else None

    def decoder_memory(self, memory: Tensor, mask: Tensor, present: Tensor, side: Tensor,
                       context: Tensor | None = None, size: Tensor | None = None,
                       location: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The fused memory (B, M, D) plus, with decoder.condition, one token per finding type
        stating ``present`` / ``side`` (B, F), the EMR ``context`` class per context slot
        (B, K), (decoder.condition_size) the stated ``size`` (B, F) mm and
        (decoder.condition_location) the stated ``location`` (B, F) index -> (B, M [+ F], D)
        and its mask."""
        if self.condition is None:
            return memory, mask
        dev = memory.device
        tok = self.condition(present.to(dev), side.to(dev),
                             None if context is None else context.to(dev),
                             None if size is None else size.to(dev),
                             None if location is None else location.to(dev))  # (B, F, D)
        return (torch.cat([memory, tok], 1),
                torch.cat([mask, torch.ones(present.shape, dtype=torch.bool,
                                            device=mask.device)], 1))

    def encode_ct(self, ct: Tensor) -> Tensor:
        """(B, C, Z, Y, X) -> (B, N, D) CT tokens after the shared encoder."""
        return self.encode_ct_dense(ct)[0]

    def encode_ct_dense(self, ct: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """CT tokens, dense cell logits and their per-patch maximum (`encode_ct_dense`)."""
        return encode_ct_dense(self.stems, self.encoder, self.dense, ct)

    def forward(self, x: ModelInput) -> ModelOutput:
        x.validate(self.cfg)
        b = x.batch_size
        d = self.cfg.dim
        dev = x.ct_present.device
        ct_tok = emr_mem = emr_tok = emr_valid = emr_mem_valid = dense = dense_patch = None
        if x.ct is not None:
            ct_tok, dense, dense_patch = self.encode_ct_dense(x.ct)
        if x.emr_ids is not None and x.emr_mask is not None:
            full = None
            if self.training and self.cfg.long_emr.full_attention_p > 0:
                # one draw per batch: memory tokens or every token handed to fusion
                full = bool(torch.rand(()) < self.cfg.long_emr.full_attention_p)
            enc = self.long_emr(self.stems["emr"], self.encoder, x.emr_ids, x.emr_mask,
                                x.emr_present, full)
            emr_mem, emr_tok, emr_valid = enc.memory, enc.tokens, enc.token_mask
            emr_mem_valid = enc.memory_mask
        ct_used, emr_used = x.ct_present.clone(), x.emr_present.clone()
        if self.training:
            ct_used, emr_used = modality_dropout(ct_used, emr_used, self.cfg.gating.drop_emr,
                                                 self.cfg.gating.drop_ct)
        zeros = torch.zeros(b, d, device=dev)
        ct_sum = masked_mean(ct_tok, ct_used[:, None].expand(-1, ct_tok.shape[1])) \
            if ct_tok is not None else zeros
        emr_sum = masked_mean(emr_mem, emr_mem_valid) \
            if emr_mem is not None and emr_mem_valid is not None else zeros
        # alignment: cases that have both modalities (before dropout)
        align = torch.zeros((), device=dev)
        both = x.ct_present & x.emr_present
        if int(both.sum()) >= 2 and ct_tok is not None:
            ct_all = masked_mean(ct_tok, x.ct_present[:, None].expand(-1, ct_tok.shape[1]))
            align = info_nce(self.align["ct"](ct_all[both]), self.align["emr"](emr_sum[both]),
                             self.cfg.align_temperature)
        ct_q = x.ct_quality if x.ct_quality is not None else torch.ones(b, device=dev)
        n_tok = x.emr_mask.sum(1) if x.emr_mask is not None else torch.zeros(b, device=dev)
        log_w = self.gate({"ct": ct_sum, "emr": emr_sum}, {"ct": ct_used, "emr": emr_used},
                            {"ct": ct_q, "emr": log_quality(n_tok)})  # (B, 2)
        weights = log_w.exp()
        q = self.queries.expand(b, -1, -1)
        parts, segs = [q], []
        n_ct = 0
        ct_valid = None
        if ct_tok is not None:
            n_ct = ct_tok.shape[1]
            ct_valid = ct_used[:, None].expand(-1, n_ct)
            parts.append(ct_tok)
            segs.append((n_ct, ct_valid))
        else:
            segs.append((0, torch.zeros(b, 0, dtype=torch.bool, device=dev)))
        if emr_mem is not None and emr_mem_valid is not None:
            parts.append(emr_mem)
            segs.append((emr_mem.shape[1], emr_mem_valid & emr_used[:, None]))
        else:
            segs.append((0, torch.zeros(b, 0, dtype=torch.bool, device=dev)))
        h = torch.cat(parts, 1)  # (B, Q + N_ct + M, D)
        bias, valid = modality_key_bias(log_w, segs, q.shape[1])
        stats = []
        for blk in self.fusion:
            h, st = blk(h, bias, valid)
            stats.append(st)
        h = self.fusion_norm(h)
        nq = q.shape[1]
        mem_valid = valid  # (B, Q + N_ct + M): what the decoder may attend to
        if not self.cfg.decoder.emr_memory:
            mem_valid = valid.clone()
            mem_valid[:, nq + n_ct:] = False  # the note's tokens: fusion has read them
        fused_ct = h[:, nq: nq + n_ct] if ct_tok is not None else None
        tok_valid = None
        if emr_valid is not None:
            tok_valid = emr_valid & emr_used[:, None]
        # MIL path: per-patch logits on the CT encoder tokens (image evidence only: the
        # note cannot switch an image finding on through this path)
        patch, mil = self.findings.patch_logits(ct_tok, ct_valid, dense_patch)
        pres, lat, loc, size, loc_logits, attr = self.findings(
            h[:, : self.n_labels], fused_ct, ct_valid, emr_tok, tok_valid, mil)
        pres = self.findings.without_ct(pres, ct_used)
        ctx_logits = ctx_attn = None
        if self.context_head is not None:
            ctx_logits, ctx_attn = self.context_head(h[:, : self.n_labels], emr_tok, tok_valid)
        lm = None
        if x.report_ids is not None:
            mem, mask = h, mem_valid
            if self.condition is not None:
                if x.cond_present is not None and x.cond_side is not None:
                    # teacher forcing: the true findings (and sizes) and EMR context
                    cond = (x.cond_present, x.cond_side)
                    stated = x.cond_size
                    where = x.cond_location
                    ctx = None if x.context is None else x.context.clamp_min(NO_CONTEXT)
                else:
                    cond = head_decisions(pres, lat, ct_used,
                                          self.findings.get_buffer("thresholds"))
                    stated = torch.expm1(size.detach()).clamp_min(0.0)
                    where = loc.detach().argmax(-1)
                    ctx = None if ctx_logits is None else context_decisions(ctx_logits,
                                                                            emr_used)
                mem, mask = self.decoder_memory(h, mem_valid, *cond, ctx, stated, where)
            lm = self.decoder(x.report_ids, mem, mask)
        return ModelOutput(
            presence_logits=pres, laterality_logits=lat, location_logits=loc, size_log=size,
            loc_logits=loc_logits, emr_attr=attr, modality_weights=weights, ct_used=ct_used,
            emr_used=emr_used, align_loss=align, aux_loss=total_aux(stats),
            expert_load=load_report(stats), memory=h, memory_mask=mem_valid, lm_logits=lm,
            patch_logits=patch, dense_logits=dense, context_logits=ctx_logits,
            context_attn=ctx_attn,
            ct_midline=None if x.ct is None or self.training  # only post-processing reads it
            else body_midline_x(x.ct, self.cfg.ct),
            **self.findings.decision_fields())

    @torch.no_grad()
    def generate(self, out: ModelOutput, max_new: int = 200, beam_size: int = 1,
                 use_cache: bool = True,
                 findings: list[list[FindingPrediction]] | None = None,
                 guard: RepeatGuard | None = None, context: Tensor | None = None) -> Tensor:
        """Report token ids (B, L) from the fused memory of ``out``.  With decoder.condition
        the text is conditioned on ``findings`` (the post-processed decisions the draft
        states), else on the head's raw decisions; ``context`` (B, K) int64, one class per
        context slot, replaces the context head's decisions (the draft's, where the note's
        history read by rule decides a class)."""
        if findings is not None:
            cond = stated_decisions(findings, self.cfg.heads.labels)
            size = stated_sizes(findings)
            where = stated_locations(findings, self.cfg.heads.locations)
        else:
            cond = head_decisions(out.presence_logits, out.laterality_logits, out.ct_used,
                                  out.thresholds)
            size = out.size_mm.detach()
            where = out.location_logits.detach().argmax(-1)
        ctx = None if out.context_logits is None else context_decisions(out.context_logits,
                                                                        out.emr_used)
        if context is not None:
            if ctx is None or context.shape != ctx.shape:
                want = None if ctx is None else tuple(ctx.shape)
                raise ValueError(f"context must be (B, K) = {want} (the context head's "
                                 f"decisions), got {tuple(context.shape)}")
            ctx = context.to(device=ctx.device, dtype=ctx.dtype)
        mem, mask = self.decoder_memory(out.memory, out.memory_mask, *cond, ctx, size, where)
        if beam_size > 1:
            return self.decoder.beam(mem, mask, max_new, beam_size, guard=guard)
        return self.decoder.greedy(mem, mask, max_new, use_cache, guard)
