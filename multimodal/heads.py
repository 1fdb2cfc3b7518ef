"""Findings head (presence, laterality, location, size, localisation, EMR attribution) and
its post-processing into :class:`FindingPrediction`."""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from multimodal.config import LATERALITY, CTStemConfig, HeadsConfig
from multimodal.errors import ShapeError
from multimodal.outputs import FindingPrediction, ModelOutput


class FindingsHead(nn.Module):
    """Reads one fused query per finding type."""

    def __init__(self, cfg: HeadsConfig, dim: int) -> None:
        super().__init__()
        n = len(cfg.labels)
        self.cfg = cfg
        self.norm = nn.LayerNorm(dim)
        self.presence_w = nn.Parameter(torch.randn(n, dim) * 0.02)
        self.presence_b = nn.Parameter(torch.zeros(n))
        self.laterality = nn.Linear(dim, len(LATERALITY))
        self.location = nn.Linear(dim, len(cfg.locations))
        self.size = nn.Linear(dim, 1)
        self.loc_q = nn.Linear(dim, dim)
        self.loc_k = nn.Linear(dim, dim)
        self.emr_q = nn.Linear(dim, dim)
        self.emr_k = nn.Linear(dim, dim)
        #: evidence pooling: CT features under the localisation map feed every sub-head
        self.pool_v = nn.Linear(dim, dim)
        #: presence temperature (calibration, fitted after training)
        self.register_buffer("temperature", torch.ones(()))
        #: per-label decision thresholds on the calibrated probability (fitted on the
        #: validation cases after training; 0.5 until then)
        self.register_buffer("thresholds", torch.full((n,), 0.5))
        #: per-label prevalence on the validation cases (fitted with the temperature): the
        #: presence probability stated for a case without CT, where the image findings
        #: abstain; -1 until fitted (the network's output is kept)
        self.register_buffer("prior", torch.full((n,), -1.0))
        #: per-label presence AUROC on the same validation cases (fitted with the
        #: temperature): -1 until fitted, NaN where the label had too few positives there
        self.register_buffer("val_auroc", torch.full((n,), -1.0))
        #: per-label cut-off above which both sides' pooled probabilities make a sided finding
        #: bilateral (fitted on the validation cases, :func:`multimodal.training.
        #: fit_bilateral`); -1 until fitted: ``heads.bilateral_min_prob`` applies
        self.register_buffer("bilateral_min", torch.full((n,), -1.0))
        self.patch: nn.Module | None = None
        if cfg.mil:
            lin = nn.Linear(dim, n)
            nn.init.constant_(lin.bias, -4.0)  # patches are rarely abnormal
            self.patch = nn.Sequential(nn.LayerNorm(dim), lin)
            self.mil_scale = nn.Parameter(torch.ones(n))
            self.mil_bias = nn.Parameter(torch.full((n,), -6.0))

    def without_ct(self, presence_logits: Tensor, ct_used: Tensor) -> Tensor:
        """(B, F) calibrated presence logits -> the same with the fitted prior's logit for
        the cases without CT (``ct_used`` (B,) False): without the image the model knows no
        more than the prevalence, and says so."""
        prior = self.get_buffer("prior")
        if bool((prior < 0).any()):  # not fitted
            return presence_logits
        lp = torch.logit(prior.clamp(1e-4, 1 - 1e-4)).to(presence_logits.dtype)
        return torch.where(ct_used[:, None], presence_logits, lp.expand_as(presence_logits))

    def unreliable(self, labels: Sequence[str], min_auroc: float) -> frozenset[str]:
        """The labels whose fitted validation AUROC is below ``min_auroc`` or could not be
        measured (NaN); none before the AUROC is fitted or with ``min_auroc`` 0."""
        auc = self.get_buffer("val_auroc")
        if min_auroc <= 0 or bool((auc == -1).all()):
            return frozenset()
        return frozenset(lab for lab, a in zip(labels, auc.tolist(), strict=True)
                         if math.isnan(a) or a < min_auroc)

    def never_called(self, labels: Sequence[str]) -> frozenset[str]:
        """The labels whose fitted threshold is above 1 (``fit_thresholds`` objective
        "micro_f1": their calls lowered the validation micro-F1), so never called present."""
        thr = self.get_buffer("thresholds")
        return frozenset(lab for lab, t in zip(labels, thr.tolist(), strict=True) if t > 1.0)

    def decision_fields(self) -> dict[str, typing.Any]:
        """The :class:`ModelOutput` fields that post-processing reads from the head: fitted
        thresholds, the bilateral cut-offs and the MIL pooling affine."""
        aff = (self.mil_scale, self.mil_bias) if self.patch is not None else None
        return {"thresholds": self.get_buffer("thresholds"),
                "bilateral_min": self.get_buffer("bilateral_min"), "mil_affine": aff}

    def patch_logits(self, ct_patch: Tensor | None, ct_valid: Tensor | None,
                     dense: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Per-patch finding logits (B, F, N) (-1e4 where masked) and their logsumexp-pooled
        (multiple-instance) presence score (B, F); (None, None) without MIL or CT.
        ``dense`` (B, F, N): the dense detector's per-patch maximum, added."""
        if self.patch is None or ct_patch is None or ct_valid is None:
            return None, None
        logits = self.patch(ct_patch).transpose(1, 2)  # (B, F, N)
        if dense is not None:
            logits = logits + dense
        logits = logits.masked_fill(~ct_valid[:, None, :], -1e4)
        return logits, pool_mil(logits, self.mil_scale, self.mil_bias, ct_valid.any(-1))

    def forward(self, q: Tensor, ct_tok: Tensor | None, ct_valid: Tensor | None,
                emr_tok: Tensor | None, emr_valid: Tensor | None,
                mil: Tensor | None = None,
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """q (B, F, D); ct_tok (B, N, D); emr_tok (B, T, D) -> presence (B, F), laterality
        (B, F, 4), location (B, F, C), size_log (B, F), loc_logits (B, F, N), attr (B, F, T).
        ``mil`` (B, F): pooled multiple-instance score added to presence (see
        :meth:`patch_logits`)."""
        h = self.norm(q)
        scale = 1.0 / math.sqrt(h.shape[-1])
        loc_logits = None
        if ct_tok is not None and ct_valid is not None:
            raw = torch.einsum("bfd,bnd->bfn", self.loc_q(h), self.loc_k(ct_tok)) * scale
            # pooled evidence (finite fill: no NaN gradient for cases without CT)
            a = torch.softmax(raw.masked_fill(~ct_valid[:, None, :], -1e4), -1)
            a = a * ct_valid.any(-1).to(a.dtype)[:, None, None]
            h = h + torch.einsum("bfn,bnd->bfd", a, self.pool_v(ct_tok))
            loc_logits = raw.masked_fill(~ct_valid[:, None, :], float("-inf"))
        temp = self.get_buffer("temperature")
        pres = (h * self.presence_w).sum(-1) + self.presence_b
        if mil is not None:
            pres = pres + mil
        pres = pres / temp
        lat = self.laterality(h)
        loc = self.location(h)
        size = self.size(h)[..., 0]
        attr = None
        if emr_tok is not None and emr_valid is not None and emr_tok.shape[1] > 0:
            a = torch.einsum("bfd,btd->bft", self.emr_q(h), self.emr_k(emr_tok)) * scale
            a = a.masked_fill(~emr_valid[:, None, :], float("-inf"))
            attr = torch.nan_to_num(torch.softmax(a, -1), nan=0.0)
        return pres, lat, loc, size, loc_logits, attr


def _box(mask: Tensor, patch: tuple[int, int, int]) -> tuple[int, int, int, int, int, int]:
    """Bounding box (inclusive voxels) of True patches of a (gz, gy, gx) mask."""
    idx = mask.nonzero()
    lo = idx.min(0).values.tolist()
    hi = idx.max(0).values.tolist()
    return (lo[0] * patch[0], lo[1] * patch[1], lo[2] * patch[2],
            (hi[0] + 1) * patch[0] - 1, (hi[1] + 1) * patch[1] - 1, (hi[2] + 1) * patch[2] - 1)


def cell_clusters(sel: Tensor) -> Tensor:
    """(z, y, x) bool cells -> (z, y, x) int64: 0 outside, each 26-connected cluster of True
    cells one number (the largest of its cells' flat indices + 1: label propagation by 3x3x3
    maximum until nothing changes)."""
    if sel.dim() != 3:
        raise ShapeError(f"cells must be (z, y, x), got shape {tuple(sel.shape)}")
    m = sel.bool()
    # float64 holds every flat index exactly
    lab = torch.where(m, torch.arange(1, m.numel() + 1, dtype=torch.float64).reshape(m.shape),
                      torch.zeros((), dtype=torch.float64))
    while True:
        grown = torch.nn.functional.max_pool3d(lab[None, None], 3, 1, 1)[0, 0]
        new = torch.where(m, grown, lab)
        if torch.equal(new, lab):
            return lab.long()
        lab = new


def cells_box(dense: Tensor, patches: Tensor, block: tuple[int, int, int],
              min_prob: float = 0.5, min_peak: float = 0.0
              ) -> tuple[int, int, int, int, int, int] | None:
    """One finding's dense cell logits (z, y, x) and its selected patches, a (gz, gy, gx) bool
    mask -> the bounding box (inclusive model-grid voxels; ``block``: voxels per cell) of the
    cells inside those patches with probability ``min_prob`` or more; None where there is
    none.  With ``min_peak`` > 0 only the clusters of those cells (26-connected,
    :func:`cell_clusters`) whose most probable cell reaches ``min_peak`` are boxed: a weak
    cluster apart from the finding's confident ones does not stretch the box; where no
    cluster reaches it, every cluster is."""
    rep = [c // g for c, g in zip(dense.shape, patches.shape, strict=True)]
    if any(r < 1 or r * g != c for r, g, c in zip(rep, patches.shape, dense.shape, strict=True)):
        raise ShapeError(f"dense cells {tuple(dense.shape)} do not tile the patch grid "
                         f"{tuple(patches.shape)}")
    if not 0 <= min_peak < 1:
        raise ValueError(f"min_peak must be in [0, 1), got {min_peak}")
    inside = patches.repeat_interleave(rep[0], 0).repeat_interleave(rep[1], 1) \
        .repeat_interleave(rep[2], 2)  # (z, y, x)
    sel = (dense >= math.log(min_prob / (1 - min_prob))) & inside
    if not bool(sel.any()):
        return None
    if min_peak > 0:
        lab = cell_clusters(sel)  # (z, y, x)
        ids = lab[sel]
        peak = torch.full((lab.numel() + 1,), -math.inf, dtype=dense.dtype)
        peak = peak.scatter_reduce(0, ids, dense[sel], reduce="amax")
        strong = peak >= math.log(min_peak / (1 - min_peak))  # per cluster number
        if bool(strong.any()):
            sel = strong[lab] & sel
    return _box(sel, block)


def top_spans(attr: Tensor, n: int) -> tuple[tuple[int, int], ...]:
    """Top-n tokens by attribution, merged into contiguous [t0, t1) spans."""
    if n == 0 or attr.numel() == 0 or float(attr.sum()) <= 0:
        return ()
    # tokens of no attribution are no evidence (gradient x input is 0 below the positive)
    top = sorted(t for t in attr.topk(min(n, attr.numel())).indices.tolist()
                 if float(attr[t]) > 0)
    spans: list[list[int]] = []
    for t in top:
        if spans and t == spans[-1][1]:
            spans[-1][1] = t + 1
        else:
            spans.append([t, t + 1])
    return tuple((a, b) for a, b in spans)


def body_midline_x(ct: Tensor, cfg: CTStemConfig) -> Tensor:
    """(B, C, Z, Y, X) windowed CT (full grid, or pre-pooled) -> (B,) x voxel index of the
    model grid at the body's centroid (voxels denser than -500 HU in the first window
    channel, its mean statistic when pooled); the grid centre where nothing is."""
    c, w = cfg.windows[0]
    thr = min(max((-500.0 - (c - w / 2)) / w, 0.05), 0.95)
    m = (ct[:, 0] > thr).float()  # (B, Z, Y, X)
    col = m.sum((1, 2))  # (B, X)
    xs = torch.arange(col.shape[1], device=ct.device, dtype=col.dtype)
    tot = col.sum(1)
    mid = (col * xs).sum(1) / tot.clamp_min(1.0)
    mid = torch.where(tot > 0, mid, torch.full_like(mid, (col.shape[1] - 1) / 2))
    f = cfg.grid_shape[2] // col.shape[1]  # 1, or the pre-pool factor along x
    return mid * f + (f - 1) / 2


def side_from_map(weights: Tensor, midline_x: float, patch_x: int,
                  margin: float = 0.25) -> str:
    """Laterality of the evidence: ``weights`` (gz, gy, gx) over the patch grid; a patch
    column's share left of the body midline (+x is the patient's left, DICOM LPS) counts as
    left.  Share >= 1 - margin: left; <= margin: right; between: bilateral."""
    col = weights.sum((0, 1))  # (gx,)
    tot = float(col.sum())
    if tot <= 0:
        return "none"
    j = torch.arange(col.shape[0], dtype=torch.float32)
    # voxel extent of column j: [j * px - 0.5, (j + 1) * px - 0.5)
    left_frac = (((j + 1) * patch_x - 0.5 - midline_x) / patch_x).clamp(0.0, 1.0)
    share = float((col.float() * left_frac).sum()) / tot
    if share >= 1 - margin:
        return "left"
    if share <= margin:
        return "right"
    return "bilateral"


def pool_mil(patch_logits: Tensor, mil_scale: Tensor, mil_bias: Tensor, has_ct: Tensor
             ) -> Tensor:
    """The multiple-instance presence part (B, F) of per-patch logits (B, F, N): their
    logsumexp, scaled and shifted per finding.  A case without CT (``has_ct`` (B,) False)
    gets no image evidence from this path, only the learned bias (the score of "no abnormal
    patch"), so its presence stays on the calibrated scale."""
    pooled = torch.logsumexp(patch_logits, -1) * mil_scale + mil_bias
    return torch.where(has_ct[:, None], pooled, mil_bias.expand_as(pooled))


def side_probs(patch_logits: Tensor, mil_scale: Tensor, mil_bias: Tensor, midline_x: float,
               patch_x: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-side multiple-instance presence of each finding.

    ``patch_logits`` (F, gz, gy, gx) of one case -> (left (F,), right (F,), left_columns
    (gx,) bool): the logsumexp over the patches of one side of the body midline, scaled and
    shifted like the whole-volume MIL score, as a probability.  A patch column whose centre
    lies at larger x than the midline is on the patient's left (DICOM LPS); a side with no
    column scores 0."""
    gx = patch_logits.shape[-1]
    centre = (torch.arange(gx, dtype=torch.float32) + 0.5) * patch_x - 0.5
    left_cols = centre > midline_x

    def pooled(cols: Tensor) -> Tensor:
        if not bool(cols.any()):
            return torch.zeros(patch_logits.shape[0])
        lse = torch.logsumexp(patch_logits[..., cols].flatten(1), -1)  # (F,)
        return torch.sigmoid(lse * mil_scale + mil_bias)

    return pooled(left_cols), pooled(~left_cols), left_cols


def side_from_probs(left: float, right: float, bilateral_min: float) -> str:
    """``bilateral`` when both sides reach ``bilateral_min``, else the stronger side."""
    if left >= bilateral_min and right >= bilateral_min:
        return "bilateral"
    return "left" if left > right else "right"


def side_odds_ratio(side: str, left: float, right: float) -> float:
    """The pooled odds of ``side`` (left or right) over the other side's, each probability
    clipped to [1e-6, 1 - 1e-6]."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be left or right, got {side!r}")

    def log_odds(p: float) -> float:
        p = min(max(p, 1e-6), 1 - 1e-6)
        return math.log(p / (1 - p))

    margin = log_odds(left) - log_odds(right)
    return math.exp(margin if side == "left" else -margin)


def side_is_uncertain(side: str, left: float, right: float, min_odds_ratio: float) -> bool:
    """A one-sided call (``side`` left or right) whose side's pooled odds are less than
    ``min_odds_ratio`` times the other side's: the side rests on near-equal evidence.
    Bilateral (or no side) is never uncertain this way; ``min_odds_ratio`` 1 never flags."""
    return side in ("left", "right") and \
        side_odds_ratio(side, left, right) < min_odds_ratio


LOBE_SIDE = {"RUL": "right", "RML": "right", "RLL": "right", "LUL": "left", "LLL": "left"}


def location_on_side(logits: Tensor, locations: tuple[str, ...], side: str | None) -> str:
    """The most likely location; a lobe on the other side than the finding's stated side
    (left or right) is not chosen while a lobe of that side is a candidate."""
    order: list[int] = logits.argsort(descending=True).tolist()
    best = locations[order[0]]
    if side not in ("left", "right") or LOBE_SIDE.get(best, side) == side:
        return best
    for i in order:
        if LOBE_SIDE.get(locations[i]) == side:
            return locations[i]
    return best


def predict_findings(out: ModelOutput, heads: HeadsConfig, ct: CTStemConfig,
                     threshold: float | None = None, side_from_evidence: bool | None = None,
                     ) -> list[list[FindingPrediction]]:
    """Post-process a batch: per case, one :class:`FindingPrediction` per label.

    ``threshold`` None uses the model's fitted per-label thresholds (``out.thresholds``),
    else one threshold for every label.  Without CT for a case the image findings abstain:
    ``present`` False, no laterality / location / size / evidence (the probability is still
    reported).  With ``heads.side_from_evidence`` (or ``side_from_evidence`` True), a sided
    finding (the laterality head says left, right or bilateral) takes its side from where its
    evidence lies relative to the body midline (:func:`side_from_map`): the side is read off
    the image evidence that the draft shows; with MIL, from the per-side pooled patch scores
    (:func:`side_probs`), and the evidence box keeps that side's patches.  A lobe location
    agrees with the stated side (:func:`location_on_side`)."""
    by_evidence = heads.side_from_evidence if side_from_evidence is None else side_from_evidence
    prob = out.presence_prob.detach().float().cpu()
    lat = out.laterality_logits.argmax(-1).cpu()
    loc_all = out.location_logits.detach().float().cpu()
    size = out.size_mm.detach().float().cpu()
    n = prob.shape[1]
    if threshold is not None:
        thr = [float(threshold)] * n
    elif out.thresholds is not None:
        thr = [float(t) for t in out.thresholds.detach().float().cpu()]
    else:
        thr = [0.5] * n
    bmin = [heads.bilateral_min_prob] * n
    if out.bilateral_min is not None:
        bmin = [float(v) if v >= 0 else heads.bilateral_min_prob
                for v in out.bilateral_min.detach().float().cpu().tolist()]
    grid = ct.patch_grid
    res: list[list[FindingPrediction]] = []
    for b in range(prob.shape[0]):
        has_ct = bool(out.ct_used[b])
        mid = float(out.ct_midline[b]) if out.ct_midline is not None else \
            (ct.grid_shape[2] - 1) / 2
        sides = None
        if by_evidence and has_ct and out.patch_logits is not None \
                and out.mil_affine is not None:
            sides = side_probs(out.patch_logits[b].detach().float().cpu().reshape(-1, *grid),
                               out.mil_affine[0].detach().float().cpu(),
                               out.mil_affine[1].detach().float().cpu(), mid, ct.patch[2])
        case = []
        for f, label in enumerate(heads.labels):
            p = float(prob[b, f])
            present = has_ct and p >= thr[f]
            side = LATERALITY[int(lat[b, f])]
            fixed = label in heads.evidence_side_labels
            use_ev = by_evidence and present and (
                fixed or (not heads.evidence_side_labels and side != "none"))
            slices = box = focus = None
            weights = None
            side_ev: tuple[float, float] | None = None
            if present and out.patch_logits is not None:
                m = torch.sigmoid(out.patch_logits[b, f].detach().float()).reshape(grid).cpu()
                keep = torch.ones(grid, dtype=torch.bool)
                if use_ev and sides is not None:
                    side_ev = (float(sides[0][f]), float(sides[1][f]))
                    side = side_from_probs(*side_ev, bmin[f])
                    if side != "bilateral":  # the box shows the stated side's evidence
                        cols = sides[2] if side == "left" else ~sides[2]
                        keep = keep & cols.view(1, 1, -1)
                sel = (m >= 0.5) & keep
                if not bool(sel.any()):
                    sel = (m >= heads.rel_threshold * (m * keep).max()) & keep
                box = _box(sel, ct.patch)
                slices = (box[0], box[3])
                weights = m * sel
                if heads.evidence_box == "cells" and out.dense_logits is not None:
                    focus = cells_box(out.dense_logits[b, f].detach().float().cpu(), sel,
                                      ct.dense_block, heads.cell_prob(label),
                                      heads.min_peak(label))
            elif present and out.loc_logits is not None:
                m = torch.softmax(out.loc_logits[b, f].detach().float(), -1).reshape(grid).cpu()
                sel = m >= heads.rel_threshold * m.max()
                box = _box(sel, ct.patch)
                slices = (box[0], box[3])
                weights = m * sel
            if use_ev and sides is None and weights is not None:
                side = side_from_map(weights, mid, ct.patch[2])
            case.append(FindingPrediction(
                label=label, present=present, probability=p,
                laterality=side if present else None,
                location=location_on_side(loc_all[b, f], heads.locations, side)
                if present else None,
                size_mm=round(float(size[b, f]), 1) if present else None,
                # the note's evidence: multimodal.attribution.note_spans (out.emr_attr, the
                # head's own EMR attention, has no loss and ranks no evidence)
                slices=slices, box_voxels=box, emr_token_spans=(), side_evidence=side_ev,
                side_uncertain=side_ev is not None and side_is_uncertain(
                    side, *side_ev, heads.min_side_odds_ratio),
                focus_box=focus,
                location_order=tuple(heads.locations[i] for i in
                                     loc_all[b, f].argsort(descending=True).tolist())
                if has_ct else ()))
        res.append(case)
    return res
