"""Typed model inputs and outputs (tensor shapes in comments)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from multimodal.config import ModelConfig
from multimodal.errors import ModalityError, ShapeError


@dataclass(frozen=True)
class ModelInput:
    """A batch.  A modality missing for a case has ``*_present`` False: its tokens are masked
    (the tensor slot exists only to keep the batch rectangular).  ``ct`` / ``emr_ids`` are
    None when no case of the batch has that modality."""

    ct_present: Tensor  # (B,) bool
    emr_present: Tensor  # (B,) bool
    ct: Tensor | None = None  # (B, C, Z, Y, X) float32 windowed CT on the model grid
    emr_ids: Tensor | None = None  # (B, T) int64 token ids
    emr_mask: Tensor | None = None  # (B, T) bool: real (non-padding) tokens
    ct_quality: Tensor | None = None  # (B,) float in [0, 1]; default 1
    report_ids: Tensor | None = None  # (B, L) int64 decoder input (BOS ...), teacher forcing
    #: decoder conditioning (decoder.condition), teacher forcing: the true findings
    cond_present: Tensor | None = None  # (B, F) bool
    cond_side: Tensor | None = None  # (B, F) int64 index into LATERALITY
    cond_size: Tensor | None = None  # (B, F) float32 mm, 0 where none (with cond_present)
    #: (B, F) int64 index into heads.locations, <= 0 where none (with cond_present)
    cond_location: Tensor | None = None
    #: true EMR context class per context slot (B, K) int64, -100 where unknown (the slot's
    #: finding absent): the context head's target, and with cond_* the decoder's context
    context: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.ct_present.shape[0])

    def validate(self, cfg: ModelConfig) -> None:
        b = self.batch_size
        for name, t in (("ct_present", self.ct_present), ("emr_present", self.emr_present)):
            if t.dtype != torch.bool or t.shape != (b,):
                raise ShapeError(f"{name} must be a (B,) bool tensor")
        if self.ct is None and bool(self.ct_present.any()):
            raise ModalityError("ct_present is set but no CT tensor was given")
        if self.ct is not None:
            exp = (b, cfg.ct.n_channels, *cfg.ct.grid_shape)
            pooled = (b, cfg.ct.in_channels, *cfg.ct.pooled_shape)
            ok = tuple(self.ct.shape) == exp or (cfg.ct.pooled and tuple(self.ct.shape) == pooled)
            if not ok or not self.ct.is_floating_point():
                also = f" (or pre-pooled {pooled})" if cfg.ct.pooled else ""
                raise ShapeError(f"ct must be float {exp}{also}, got {tuple(self.ct.shape)}")
        if self.emr_ids is None:
            if bool(self.emr_present.any()):
                raise ModalityError("emr_present is set but no EMR ids were given")
        else:
            if self.emr_ids.ndim != 2 or self.emr_ids.shape[0] != b:
                raise ShapeError(f"emr_ids must be (B, T), got {tuple(self.emr_ids.shape)}")
            if self.emr_ids.shape[1] > cfg.emr.max_tokens:
                raise ShapeError(f"EMR longer than emr.max_tokens={cfg.emr.max_tokens}")
            if self.emr_mask is None or self.emr_mask.shape != self.emr_ids.shape \
                    or self.emr_mask.dtype != torch.bool:
                raise ShapeError("emr_mask must be a bool tensor shaped like emr_ids")
        if self.ct_quality is not None and self.ct_quality.shape != (b,):
            raise ShapeError("ct_quality must be (B,)")
        n = len(cfg.heads.labels)
        if (self.cond_present is None) != (self.cond_side is None):
            raise ShapeError("cond_present and cond_side are given together or not at all")
        if self.cond_present is not None and self.cond_side is not None and (
                self.cond_present.shape != (b, n) or self.cond_present.dtype != torch.bool
                or self.cond_side.shape != (b, n) or self.cond_side.is_floating_point()):
            raise ShapeError(f"cond_present must be (B, {n}) bool and cond_side (B, {n}) int")
        if self.cond_size is not None and (
                self.cond_present is None or self.cond_size.shape != (b, n)
                or not self.cond_size.is_floating_point()):
            raise ShapeError(f"cond_size must be (B, {n}) float, given with cond_present")
        if self.cond_location is not None and (
                self.cond_present is None or self.cond_location.shape != (b, n)
                or self.cond_location.is_floating_point()):
            raise ShapeError(f"cond_location must be (B, {n}) int, given with cond_present")
        k = len(cfg.context.labels)
        if self.context is not None and (self.context.shape != (b, k)
                                         or self.context.is_floating_point()):
            raise ShapeError(f"context must be (B, {k}) int (context.labels)")
        if self.report_ids is not None and (self.report_ids.ndim != 2
                                            or self.report_ids.shape[0] != b):
            raise ShapeError("report_ids must be (B, L)")


@dataclass
class ModelOutput:
    presence_logits: Tensor  # (B, F) calibrated (temperature-scaled) logits
    laterality_logits: Tensor  # (B, F, 4) over config.LATERALITY
    location_logits: Tensor  # (B, F, n_locations)
    size_log: Tensor  # (B, F) predicted log1p(size_mm)
    loc_logits: Tensor | None  # (B, F, N_ct) patch localisation logits (-inf: no CT)
    emr_attr: Tensor | None  # (B, F, T) attribution over EMR tokens (sums to 1 or 0)
    modality_weights: Tensor  # (B, 2): (ct, emr); 0 exactly for a missing modality
    ct_used: Tensor  # (B,) bool, after modality dropout
    emr_used: Tensor  # (B,) bool, after modality dropout
    align_loss: Tensor  # () InfoNCE CT vs EMR (0 if < 2 paired cases)
    aux_loss: Tensor  # () MoE load-balance loss (0 for dense)
    expert_load: Tensor | None  # (depth, E) share of routed assignments per expert
    memory: Tensor  # (B, L, D) fused memory for the decoder
    memory_mask: Tensor  # (B, L) bool
    lm_logits: Tensor | None = None  # (B, L_r, V) when report_ids were given
    patch_logits: Tensor | None = None  # (B, F, N_ct) per-patch finding logits (heads.mil)
    dense_logits: Tensor | None = None  # (B, F, z, y, x) dense detector (ct.dense_hidden)
    ct_midline: Tensor | None = None  # (B,) body midline, x voxel index of the model grid
    thresholds: Tensor | None = None  # (F,) fitted decision thresholds on presence_prob
    #: (F,) fitted per-label bilateral cut-off of the per-side MIL probabilities (-1: not
    #: fitted, heads.bilateral_min_prob applies)
    bilateral_min: Tensor | None = None
    #: (scale (F,), bias (F,)) of the MIL pooling (heads.mil): per-side presence
    mil_affine: tuple[Tensor, Tensor] | None = None
    #: EMR context head (context.labels): logits (B, K, C) and attention over the note's
    #: tokens (B, K, T) (None without a note in the batch)
    context_logits: Tensor | None = None
    context_attn: Tensor | None = None

    @property
    def presence_prob(self) -> Tensor:
        return torch.sigmoid(self.presence_logits)

    @property
    def size_mm(self) -> Tensor:
        return torch.expm1(self.size_log).clamp_min(0.0)


@dataclass(frozen=True)
class FindingPrediction:
    """One finding type for one case, post-processed (plain Python values)."""

    label: str
    present: bool
    probability: float
    laterality: str | None
    location: str | None
    size_mm: float | None
    #: slice range [k0, k1] and box [k0, i0, j0, k1, i1, j1] (inclusive) in model-grid voxels
    slices: tuple[int, int] | None
    box_voxels: tuple[int, int, int, int, int, int] | None
    #: token index spans [t0, t1) with the highest attribution
    emr_token_spans: tuple[tuple[int, int], ...]
    #: EMR context (model.context) of a present finding whose note was used: the class the
    #: decoder states and the note's token spans the context head attended to most
    context: str | None = None
    context_token_spans: tuple[tuple[int, int], ...] = ()
    #: where ``size_mm`` comes from: "head" (the size head) or "image" (measured on the CT,
    #: :mod:`multimodal.measure`)
    size_source: str = "head"
    #: a nodule or mass measured on the CT: (long axis, short axis) of its largest axial
    #: section and its craniocaudal extent, mm (:class:`multimodal.measure.Measurement`)
    size_axes_mm: tuple[float, float, float] | None = None
    #: what decided ``present``: "head" (the presence probability against the label's
    #: threshold) or "image" (a measurement on the CT found the finding, or found the heart
    #: and no fluid band around it: :mod:`multimodal.pericardium`)
    present_source: str = "head"
    #: what decided ``context``: "head" (the context head) or "note" (the history the note
    #: states, read by rule: medassist.history.CONTEXT_FACTS)
    context_source: str = "head"
    #: a present finding whose side was read off the image per side (MIL,
    #: :func:`multimodal.heads.side_probs`): the pooled presence of its left and right
    #: patches, the evidence the side rests on
    side_evidence: tuple[float, float] | None = None
    #: its stated side (left or right) rests on near-equal evidence on both sides (odds
    #: within ``heads.min_side_odds_ratio``, :func:`multimodal.heads.side_is_uncertain`)
    side_uncertain: bool = False
    #: the location head's codes for this label, most likely first (every case with a CT,
    #: present or not): where a finding the CT alone calls (:mod:`multimodal.islands`) takes
    #: its lobe from
    location_order: tuple[str, ...] = ()
    #: the tighter box (same convention as ``box_voxels``) that the draft shows in place of
    #: ``box_voxels`` once the rules on the CT have read the latter (``heads.evidence_box``
    #: "cells": :func:`multimodal.measure.focus_evidence`); None: ``box_voxels`` is shown
    focus_box: tuple[int, int, int, int, int, int] | None = None
