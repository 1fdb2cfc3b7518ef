"""Training losses of the fusion model (and of the late-fusion baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from multimodal.config import ModelConfig
from multimodal.dense import balanced_bce
from multimodal.outputs import ModelOutput
from multimodal.tokenizer import PAD

IGNORE = -100


@dataclass(frozen=True)
class Targets:
    present: Tensor  # (B, F) float 0/1
    laterality: Tensor  # (B, F) int64 index into LATERALITY; -100 where absent
    location: Tensor  # (B, F) int64 index into heads.locations; -100 where absent
    size_mm: Tensor  # (B, F) float; NaN where absent
    loc_map: Tensor | None = None  # (B, F, N_ct) patch occupancy of the finding (0 if none)
    report_targets: Tensor | None = None  # (B, L) next-token ids (PAD = ignore)
    context: Tensor | None = None  # (B, K) int64 EMR context class per slot; -100 = unknown
    dense_map: Tensor | None = None  # (B, F, z, y, x) uint8 cell occupancy (ct.dense_hidden)


def presence_weight(cfg: ModelConfig, present: Tensor, size_mm: Tensor) -> Tensor:
    """(B, F) 0/1 float: 0 where ``cfg.presence_min_mm`` leaves a case's label out of the
    losses (present, but its largest reference size below the label's limit or unknown),
    else 1."""
    w = torch.ones(present.shape, dtype=torch.float32, device=present.device)
    for lab, mm in cfg.presence_min_mm:
        f = cfg.heads.labels.index(lab)
        small = (present[:, f] > 0.5) & ~(torch.nan_to_num(size_mm[:, f], nan=0.0) >= mm)
        w[:, f] = (~small).float()
    return w


def compute_losses(out: ModelOutput, t: Targets, cfg: ModelConfig) -> dict[str, Tensor]:
    """Per-term losses and ``total``.  Image-finding and report terms skip cases without CT
    (after modality dropout): without CT the model abstains, it is not taught to guess.
    Labels that ``cfg.presence_min_mm`` leaves out of a case (too small to see) are left out
    of its presence, per-patch, dense and attribute terms."""
    ct = out.ct_used.float()[:, None]  # (B, 1)
    n_ct = ct.sum().clamp_min(1.0) * t.present.shape[1]
    w = presence_weight(cfg, t.present, t.size_mm).to(out.presence_logits.dtype)  # (B, F)
    bce = F.binary_cross_entropy_with_logits(out.presence_logits, t.present, reduction="none")
    losses: dict[str, Tensor] = {"presence": (bce * ct * w).sum() / n_ct}
    keep = out.ct_used[:, None].expand_as(t.laterality) & (w > 0)
    lat_t = t.laterality.masked_fill(~keep, IGNORE)
    loc_t = t.location.masked_fill(~keep, IGNORE)
    zero = out.presence_logits.sum() * 0.0
    losses["laterality"] = F.cross_entropy(out.laterality_logits.flatten(0, 1), lat_t.flatten(),
                                           ignore_index=IGNORE) if bool((lat_t >= 0).any()) \
        else zero
    losses["location"] = F.cross_entropy(out.location_logits.flatten(0, 1), loc_t.flatten(),
                                         ignore_index=IGNORE) if bool((loc_t >= 0).any()) \
        else zero
    sz = ~torch.isnan(t.size_mm) & keep
    losses["size"] = F.smooth_l1_loss(out.size_log[sz], torch.log1p(t.size_mm[sz]), beta=0.1) \
        if bool(sz.any()) else zero
    losses["loc"] = zero
    if t.loc_map is not None and out.loc_logits is not None:
        mass = t.loc_map.sum(-1)  # (B, F)
        ok = (mass > 0) & keep
        if bool(ok.any()):
            target = t.loc_map[ok] / mass[ok][:, None]
            logp = torch.log_softmax(out.loc_logits[ok], -1).clamp_min(-1e4)
            losses["loc"] = -(target * logp).sum(-1).mean()
    losses["lm"] = zero
    if t.report_targets is not None and out.lm_logits is not None:
        tgt = t.report_targets.masked_fill(~out.ct_used[:, None], PAD)
        if bool((tgt != PAD).any()):
            losses["lm"] = F.cross_entropy(out.lm_logits.flatten(0, 1), tgt.flatten(),
                                           ignore_index=PAD)
    losses["patch"] = zero
    if t.loc_map is not None and out.patch_logits is not None:
        sel = out.ct_used
        if bool(sel.any()):
            ptgt = (t.loc_map[sel] > 0).to(out.patch_logits.dtype)  # (b, F, N)
            pw = torch.tensor(cfg.patch_pos_weight, device=ptgt.device, dtype=ptgt.dtype)
            pl = F.binary_cross_entropy_with_logits(out.patch_logits[sel], ptgt,
                                                    pos_weight=pw, reduction="none")
            pl = pl * w[sel][:, :, None]
            if cfg.patch_confusers:
                mult = torch.ones_like(pl)
                for lab, conf, wt in cfg.patch_confusers:
                    a, c = cfg.heads.labels.index(lab), cfg.heads.labels.index(conf)
                    hard = (ptgt[:, a] == 0) & (t.loc_map[sel][:, c] > 0)  # (b, N)
                    mult[:, a] = torch.where(hard, wt, 1.0)
                pl = pl * mult
            losses["patch"] = pl.mean()
    losses["dense"] = zero
    if t.dense_map is not None and out.dense_logits is not None and bool(out.ct_used.any()):
        sel = out.ct_used
        losses["dense"] = balanced_bce(out.dense_logits[sel], t.dense_map[sel],
                                       cfg.dense_hard_k, weight=w[sel])
    losses["context"] = zero
    if t.context is not None and out.context_logits is not None:
        # what the note says: learnt from the cases whose note was used
        ctx_t = t.context.masked_fill(~out.emr_used[:, None], IGNORE)
        if bool((ctx_t >= 0).any()):
            logits = out.context_logits.masked_fill(torch.isinf(out.context_logits), -1e4)
            losses["context"] = F.cross_entropy(logits.flatten(0, 1), ctx_t.flatten(),
                                                ignore_index=IGNORE)
    losses["align"] = out.align_loss
    losses["moe_balance"] = out.aux_loss
    attr = losses["laterality"] + losses["location"] + losses["size"]
    losses["total"] = (losses["presence"] + cfg.attr_weight * attr
                       + cfg.patch_weight * losses["patch"] + cfg.loc_weight * losses["loc"]
                       + cfg.lm_weight * losses["lm"] + cfg.align_weight * losses["align"]
                       + cfg.fusion.balance_coef * losses["moe_balance"]
                       + cfg.context.weight * losses["context"]
                       + cfg.dense_weight * losses["dense"])
    return losses
