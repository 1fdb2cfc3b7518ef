"""Which note tokens a finding's presence rests on: gradient x input on the EMR embeddings.

The findings head's own EMR attention (``ModelOutput.emr_attr``: the finding's query against
the note's token states) has no loss: no training step moves its two projections, so the
tokens it ranks first say nothing about what the model read.  :func:`emr_attribution`
attributes instead each finding's presence logit to the note's tokens by gradient x input
(the logit's gradient with respect to each token's embedding, dotted with that embedding: a
first-order estimate of how much the logit would fall without the token), through
everything the note passes (the long-EMR memory, fusion, the modality gate).  Only tokens
that raise the logit count as its evidence; ``bench/emr_attribution.py`` measures how much
the logit falls when the tokens each method ranks first are masked.

It runs a second forward pass with gradients and one backward pass per finding asked for,
so :func:`note_spans` (the drafts' EMR evidence) asks only for the called findings whose
presence the note raises by ``heads.emr_evidence_min_logit`` or more, against the same pass
without the note; on the demo checkpoint, whose image findings do not rest on the note, that
is none, and a draft costs nothing more.  A model whose linear layers are dynamically
quantised (int8) has no gradient: :func:`emr_attribution` refuses it (``ValueError``), and
:func:`note_spans` gives its findings no spans.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from multimodal.config import HeadsConfig
from multimodal.heads import top_spans
from multimodal.outputs import FindingPrediction, ModelInput, ModelOutput


def _quantised(model: nn.Module) -> bool:
    return any("quantized" in type(m).__module__ for m in model.modules())


def emr_attribution(model: nn.Module, x: ModelInput, labels: Sequence[int]) -> Tensor:
    """(B, F, T) attribution of each finding's presence logit (the indices ``labels``; the
    other findings' rows stay 0) to the note's T tokens (``x.emr_ids``): gradient x input on
    the token embeddings, positive part only (a token that lowers the logit is no evidence
    for the finding), 0 on padding and where a case has no note.  The input is not modified
    and the model is left in the mode it was in."""
    if x.emr_ids is None or x.emr_mask is None:
        raise ValueError("emr_attribution needs a batch with EMR token ids")
    if _quantised(model):
        raise ValueError("emr_attribution needs gradients: a dynamically quantised (int8) "
                         "model has none; attribute with the fp32 weights")
    b, t = x.emr_ids.shape
    emb = model.get_submodule("stems.emr.tok")
    seen: list[Tensor] = []  # the token embeddings of each segment, in the note's order
    hook = emb.register_forward_hook(lambda _m, _i, o: seen.append(o))
    try:
        with torch.enable_grad():
            out = model(x)
    finally:
        hook.remove()
    n_labels = int(out.presence_logits.shape[1])
    if any(not 0 <= f < n_labels for f in labels):
        raise ValueError(f"label indices must be in [0, {n_labels}), got {list(labels)}")
    attr = torch.zeros(b, n_labels, t)
    if not seen or not labels:
        return attr
    # segments run in order, and a segment no case has a token in is skipped: the calls
    # cover the note's first tokens
    e = torch.cat(seen, 1)  # (B, T', D)
    valid = (x.emr_mask & x.emr_present[:, None])[:, : e.shape[1]].cpu()
    for f in sorted(set(labels)):
        grads = torch.autograd.grad(out.presence_logits[:, f].sum(), seen, retain_graph=True,
                                    allow_unused=True)
        g = torch.cat([gr if gr is not None else torch.zeros_like(s)
                       for gr, s in zip(grads, seen, strict=True)], 1)
        contrib = (g * e).sum(-1).detach().float().cpu()  # (B, T')
        attr[:, f, : e.shape[1]] = contrib.clamp_min(0.0) * valid
    return attr


def note_spans(model: nn.Module, heads: HeadsConfig, x: ModelInput, out: ModelOutput,
               preds: Sequence[Sequence[FindingPrediction]],
               without: ModelOutput | None = None) -> list[list[FindingPrediction]]:
    """``preds`` (one list per case of ``x``, from ``out``) with each finding's
    ``emr_token_spans`` the note's tokens its presence rests on: for a called finding of a
    case with a note whose presence logit with the note is at least
    ``heads.emr_evidence_min_logit`` above the one without it (``without``: the pass over
    ``x`` without the note; computed here where None), the first ``heads.n_emr_spans``
    tokens by :func:`emr_attribution`, merged into spans; for every other finding, and on a
    quantised model, none.  New predictions: ``preds`` is not changed."""
    if len(preds) != x.batch_size:
        raise ValueError(f"one prediction list per case: {len(preds)} for {x.batch_size}")
    gain = torch.zeros(x.batch_size, int(out.presence_logits.shape[1]))
    if x.emr_ids is not None and bool(out.emr_used.any()):
        if without is None or without is out:
            from multimodal.image_pass import without_note

            with torch.no_grad():
                without = typing.cast(ModelOutput, model(without_note(x)))
        gain = (out.presence_logits - without.presence_logits).detach().float().cpu()
    want = [[p.present and bool(out.emr_used[b]) and float(gain[b, f])
             >= heads.emr_evidence_min_logit for f, p in enumerate(case)]
            for b, case in enumerate(preds)]
    labels = sorted({f for row in want for f, w in enumerate(row) if w})
    attr = None
    if labels and heads.n_emr_spans > 0 and not _quantised(model):
        attr = emr_attribution(model, x, labels)
    return [[dataclasses.replace(p, emr_token_spans=top_spans(attr[b, f], heads.n_emr_spans)
                                 if attr is not None and want[b][f] else ())
             for f, p in enumerate(case)] for b, case in enumerate(preds)]
