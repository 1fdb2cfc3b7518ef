"""Post-training fits of the side rule: the per-label cut-off that makes a sided finding
bilateral (:func:`multimodal.heads.side_from_probs`), fitted on the validation cases."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from multimodal.config import LATERALITY, CTStemConfig, HeadsConfig
from multimodal.heads import side_from_probs, side_probs
from multimodal.outputs import ModelOutput

#: candidate cut-offs of :func:`fit_bilateral` (besides the configured default): 0.05 to 0.95
#: by 0.025, then 0.96 to 0.995, where the per-side multiple-instance probabilities of a
#: large finding saturate (stop 51: the validation cases' bilateral effusions read 0.983 or
#: more on both sides, a one-sided one 0.963 on its other side, which no cut-off up to 0.95
#: told apart)
BILATERAL_GRID: tuple[float, ...] = (*(round(0.05 + 0.025 * i, 3) for i in range(37)),
                                     0.96, 0.97, 0.98, 0.99, 0.995)


def fit_bilateral(left: Sequence[float], right: Sequence[float], truth: Sequence[str],
                  default: float, min_each: int = 3) -> float | None:
    """The cut-off that states the most reference sides right on these sided positives.

    ``left`` / ``right``: each positive's per-side pooled probability; ``truth``: its
    reference side ("left", "right" or "bilateral").  Candidates are :data:`BILATERAL_GRID`
    and ``default``; ties go to the candidate nearest ``default``.  None (keep the default)
    with fewer than ``min_each`` bilateral or fewer than ``min_each`` one-sided positives:
    too few to move the rule either way."""
    if not len(left) == len(right) == len(truth):
        raise ValueError("left, right and truth must have the same length")
    bad = sorted(set(truth) - {"left", "right", "bilateral"})
    if bad:
        raise ValueError(f"reference sides must be left, right or bilateral, not {bad}")
    n_bi = sum(t == "bilateral" for t in truth)
    if n_bi < min_each or len(truth) - n_bi < min_each:
        return None

    return max((*BILATERAL_GRID, default),
               key=lambda c: (_hits(left, right, truth, c), -abs(c - default)))


def _hits(left: Sequence[float], right: Sequence[float], truth: Sequence[str],
          cutoff: float) -> int:
    """How many reference sides :func:`side_from_probs` states right at ``cutoff``."""
    return sum(side_from_probs(lp, rp, cutoff) == t
               for lp, rp, t in zip(left, right, truth, strict=True))


def side_samples(outs: Sequence[ModelOutput], samples: Sequence[Mapping[str, Any]],
                 heads: HeadsConfig, ct: CTStemConfig,
                 ) -> dict[str, tuple[list[float], list[float], list[str]]]:
    """Per evidence-side label, (left, right, reference side) of each case with CT where the
    reference has the finding on a side.  ``outs``: eval-mode outputs over ``samples`` in
    order (e.g. :func:`multimodal.training.predict`)."""
    res: dict[str, tuple[list[float], list[float], list[str]]] = {
        lab: ([], [], []) for lab in heads.evidence_side_labels}
    idx = [heads.labels.index(lab) for lab in heads.evidence_side_labels]
    i = 0
    for o in outs:
        if o.patch_logits is None or o.mil_affine is None:
            raise ValueError("the bilateral cut-off needs MIL patch logits (heads.mil)")
        for b in range(o.patch_logits.shape[0]):
            s = samples[i]
            i += 1
            if not bool(o.ct_used[b]):
                continue
            mid = float(o.ct_midline[b]) if o.ct_midline is not None else \
                (ct.grid_shape[2] - 1) / 2
            lp, rp, _ = side_probs(
                o.patch_logits[b].detach().float().cpu().reshape(-1, *ct.patch_grid),
                o.mil_affine[0].detach().float().cpu(), o.mil_affine[1].detach().float().cpu(),
                mid, ct.patch[2])
            for lab, f in zip(heads.evidence_side_labels, idx, strict=True):
                if float(s["present"][f]) <= 0.5:
                    continue
                truth = LATERALITY[int(s["laterality"][f])]
                if truth != "none":
                    res[lab][0].append(float(lp[f]))
                    res[lab][1].append(float(rp[f]))
                    res[lab][2].append(truth)
    if i != len(samples):
        raise ValueError(f"{i} outputs for {len(samples)} samples")
    return res


def fit_bilateral_cutoffs(outs: Sequence[ModelOutput], samples: Sequence[Mapping[str, Any]],
                          heads: HeadsConfig, ct: CTStemConfig, min_each: int = 3,
                          ) -> tuple[Tensor, dict[str, Any]]:
    """(F,) cut-offs for ``FindingsHead.bilateral_min`` (-1: the configured default) and a
    report.  Each evidence-side label is fitted on its own positives
    (:func:`fit_bilateral`); a label with too few takes the cut-off fitted on all of them
    pooled, or keeps the default when even those are too few."""
    per = side_samples(outs, samples, heads, ct)
    pooled: tuple[list[float], list[float], list[str]] = ([], [], [])
    for lp, rp, t in per.values():
        pooled[0].extend(lp)
        pooled[1].extend(rp)
        pooled[2].extend(t)
    shared = fit_bilateral(*pooled, default=heads.bilateral_min_prob, min_each=min_each)
    cut = torch.full((len(heads.labels),), -1.0)
    report: dict[str, Any] = {}
    for lab, (lp, rp, t) in per.items():
        own = fit_bilateral(lp, rp, t, default=heads.bilateral_min_prob, min_each=min_each)
        c = own if own is not None else shared
        if c is not None:
            cut[heads.labels.index(lab)] = c
        report[lab] = {"cutoff": c, "fitted_on": "label" if own is not None else
                       "pooled" if shared is not None else "default",
                       "n": len(t), "n_bilateral": sum(x == "bilateral" for x in t),
                       "right_at_default": _hits(lp, rp, t, heads.bilateral_min_prob),
                       "right_at_cutoff": _hits(lp, rp, t, heads.bilateral_min_prob
                                                if c is None else c)}
    return cut, report


__all__ = ["BILATERAL_GRID", "fit_bilateral", "fit_bilateral_cutoffs", "side_samples"]
