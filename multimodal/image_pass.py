"""The image pass (``decoder.image_pass``): the text written from what the CT shows.

The note takes part in every decision the findings head makes (presence and side, through
fusion) and decides the context classes the text is conditioned on.  With
``decoder.image_pass`` the report decoder reads the memory of a second pass of the same
weights over the same batch without the note, and a called finding's location and size
(the heads' own; a size measured on the CT replaces it later, as before) are read off that
pass too.  The note then reaches the text only through those decisions, so how a long note
was compressed (the memory tokens or full attention) cannot change what the text says about
the image: where a finding lies, how large it is, or how it is worded.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from multimodal.config import HeadsConfig, ModelConfig
from multimodal.heads import location_on_side
from multimodal.outputs import FindingPrediction, ModelInput, ModelOutput


def without_note(x: ModelInput) -> ModelInput:
    """``x`` with the note removed from every case (a new input; ``x`` is not changed)."""
    return dataclasses.replace(x, emr_present=torch.zeros_like(x.emr_present), emr_ids=None,
                               emr_mask=None)


def needs_image_pass(cfg: ModelConfig, x: ModelInput) -> bool:
    """A second pass differs from the first: ``decoder.image_pass`` is on, some case of the
    batch has a note, and every case has a CT (a case without one has no image to write
    from; its text reads the only pass there is)."""
    return (cfg.decoder.image_pass and bool(x.emr_present.any())
            and bool(x.ct_present.all()))


@torch.no_grad()
def image_pass(model: nn.Module, cfg: ModelConfig, x: ModelInput, out: ModelOutput
               ) -> ModelOutput:
    """The output the text is written from: ``out`` (the pass over ``x``) where
    :func:`needs_image_pass` says no second pass would differ, else ``model`` over ``x``
    without the note."""
    if not needs_image_pass(cfg, x):
        return out
    return typing.cast(ModelOutput, model(without_note(x)))


def image_pass_outputs(model: nn.Module, cfg: ModelConfig,
                       samples: Sequence[Mapping[str, Any]], outs: Sequence[ModelOutput],
                       batch_size: int = 8) -> list[ModelOutput]:
    """:func:`image_pass` for ``outs``, the outputs of :func:`multimodal.training.predict`
    over ``samples`` in batches of ``batch_size``: ``outs`` itself where a second pass would
    not differ (off, no note, or a case without CT), else the same batches without the
    note."""
    from multimodal.training import predict

    if not (cfg.decoder.image_pass and any(s.get("emr_ids") is not None for s in samples)
            and all(s.get("ct") is not None for s in samples)):
        return list(outs)
    return predict(model, samples, batch_size=batch_size, drop="emr")


def image_geometry(preds: Sequence[Sequence[FindingPrediction]], img: ModelOutput,
                   heads: HeadsConfig) -> list[list[FindingPrediction]]:
    """``preds`` (a batch, from the pass with the note) with each present finding's location
    (a lobe on its stated side, :func:`multimodal.heads.location_on_side`) and size (the size
    head's, mm) read off ``img``, the pass without it; every other field, and every absent
    finding, unchanged.  New predictions: ``preds`` is not changed."""
    if len(preds) != img.size_mm.shape[0]:
        raise ValueError(f"one prediction list per case: {len(preds)} for "
                         f"{img.size_mm.shape[0]} cases")
    loc = img.location_logits.detach().float().cpu()  # (B, F, n_locations)
    size = img.size_mm.detach().float().cpu()  # (B, F)
    res = []
    for b, case in enumerate(preds):
        if len(case) != size.shape[1]:
            raise ValueError(f"case {b}: {len(case)} predictions for {size.shape[1]} labels")
        res.append([dataclasses.replace(
            p, location=location_on_side(loc[b, f], heads.locations, p.laterality),
            size_mm=round(float(size[b, f]), 1)) if p.present else p
            for f, p in enumerate(case)])
    return res


@dataclasses.dataclass(frozen=True)
class CallChange:
    """One finding's presence with the note and without it (the same weights, the image
    pass), as the findings head calls it."""

    label: str
    with_note: float  # presence probability
    without_note: float
    present_with_note: bool
    present_without_note: bool


@dataclasses.dataclass(frozen=True)
class NoteEffect:
    """What a case's note changed in the findings head's calls: ``changed`` the findings whose
    call (present or not) differs without the note, ``largest`` the finding whose presence
    probability moved most (None for a case without findings)."""

    changed: tuple[CallChange, ...]
    largest: CallChange | None


def note_effect(with_note: Sequence[FindingPrediction], without_note: Sequence[FindingPrediction]
                ) -> NoteEffect:
    """Compare one case's findings head calls with the note (``with_note``) and without it
    (``without_note``, :func:`multimodal.heads.predict_findings` of the image pass), label by
    label.  The rules on the CT that come after (a measurement's call or its taking one back)
    read the image alone and are not compared.  Raises ``ValueError`` where the two do not
    list the same labels in the same order."""
    a, b = list(with_note), list(without_note)
    if [p.label for p in a] != [p.label for p in b]:
        raise ValueError(f"the two passes list different findings: {[p.label for p in a]} "
                         f"against {[p.label for p in b]}")
    rows = [CallChange(p.label, round(float(p.probability), 4), round(float(q.probability), 4),
                       bool(p.present), bool(q.present)) for p, q in zip(a, b, strict=True)]
    changed = tuple(r for r in rows if r.present_with_note != r.present_without_note)
    largest = max(rows, key=lambda r: abs(r.with_note - r.without_note), default=None)
    return NoteEffect(changed, largest)
