"""Dense detector: per-cell finding logits on the CT stem's first feature map.

Small findings (a 6 mm nodule is one or two cells of that map) are hard to learn from one
presence label per case, or one logit per 40 x 44 x 44 mm patch. The dense detector reads
the first conv-stem layer's map (half the pre-pooled grid, e.g. 16 x 32 x 32 cells of
20 x 11 x 11 mm on the demo grid) and is trained cell by cell on the label map with a
class-balanced BCE, which also supervises that stem layer directly. Its maximum over each
patch's cells is added to the MIL patch logits, so presence, side and evidence read it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch.nn.functional as F
from torch import Tensor, nn

from multimodal.config import CTStemConfig
from multimodal.errors import ShapeError
from multimodal.layers import Conv3d


class DenseDetector(nn.Module):
    """(B, C1, z, y, x) first stem map -> (B, F, z, y, x) per-cell finding logits."""

    def __init__(self, cfg: CTStemConfig, n_labels: int) -> None:
        super().__init__()
        if cfg.dense_hidden < 1:
            raise ValueError("DenseDetector needs ct.dense_hidden >= 1")
        c1 = cfg.conv_stem[0] if cfg.conv_stem else cfg.in_channels
        h = cfg.dense_hidden
        self.shape = cfg.dense_shape
        pg = cfg.patch_grid
        self.cells = (self.shape[0] // pg[0], self.shape[1] // pg[1], self.shape[2] // pg[2])
        self.net = nn.Sequential(
            Conv3d(c1, h, 3, padding=1), nn.GroupNorm(1, h), nn.GELU(),
            Conv3d(h, h, 3, padding=1), nn.GELU(), nn.Conv3d(h, n_labels, 1))

    def forward(self, fmap: Tensor) -> Tensor:
        if fmap.ndim != 5 or tuple(fmap.shape[2:]) != self.shape:
            raise ShapeError(f"dense map must be (B, C, {self.shape}), got {tuple(fmap.shape)}")
        out: Tensor = self.net(fmap)
        return out

    def per_patch(self, dense: Tensor) -> Tensor:
        """(B, F, z, y, x) -> (B, F, N_ct): each patch's highest cell logit (patch order as
        the CT tokens: z-major)."""
        return F.max_pool3d(dense, self.cells).flatten(2)


def dense_targets(label_masks: npt.NDArray[np.bool_], block: tuple[int, int, int]
                  ) -> npt.NDArray[np.uint8]:
    """(F, Z, Y, X) bool label masks on the model grid -> (F, z, y, x) uint8: 1 where the
    cell holds any voxel of the finding."""
    f, z, y, x = label_masks.shape
    bz, by, bx = block
    if z % bz or y % by or x % bx:
        raise ShapeError(f"label map {tuple(label_masks.shape[1:])} is not divisible by the "
                         f"dense block {block}")
    m = label_masks.reshape(f, z // bz, bz, y // by, by, x // bx, bx)
    out: npt.NDArray[np.uint8] = np.asarray(m.any(axis=(2, 4, 6)), dtype=np.uint8)
    return out


def balanced_bce(logits: Tensor, target: Tensor, hard_k: int = 0,
                 weight: Tensor | None = None) -> Tensor:
    """Class-balanced BCE of (B, F, ...) logits against 0/1 targets: per finding type, the
    mean loss over its positive cells plus the mean over its negative cells (a label with no
    positive cell in the batch contributes its negative term only), averaged over types.

    With ``hard_k`` > 0, per finding type also the mean over the cases without it of the
    negative loss of the mean of their ``hard_k`` highest cell logits (hard negatives: what
    a case-level maximum reads).  ``weight`` (B, F) 0/1 leaves a case's finding type out
    (its cells are neither positives nor negatives)."""
    if weight is not None and weight.shape != logits.shape[:2]:
        raise ShapeError(f"weight must be (B, F) = {tuple(logits.shape[:2])}, got "
                         f"{tuple(weight.shape)}")
    lg = logits.transpose(0, 1).flatten(1)  # (F, B * cells)
    tg = target.transpose(0, 1).flatten(1).to(lg.dtype)
    if weight is None:
        keep = tg.new_ones(tg.shape)
    else:
        cells = logits[0, 0].numel()
        keep = weight.to(lg.dtype).transpose(0, 1).repeat_interleave(cells, 1)  # (F, B * cells)
    pos_n = (tg * keep).sum(1)
    neg_n = ((1 - tg) * keep).sum(1)
    pos = (F.softplus(-lg) * tg * keep).sum(1) / pos_n.clamp_min(1.0)
    neg = (F.softplus(lg) * (1 - tg) * keep).sum(1) / neg_n.clamp_min(1.0)
    loss = pos + neg  # (F,)
    if hard_k > 0:
        per_case = logits.flatten(2)  # (B, F, cells)
        if hard_k > per_case.shape[2]:
            raise ShapeError(f"dense_hard_k {hard_k} exceeds the {per_case.shape[2]} cells")
        absent = target.flatten(2).amax(2) == 0  # (B, F): no cell of the finding
        if weight is not None:
            absent &= weight > 0
        top = per_case.topk(hard_k, dim=2).values.mean(2)  # (B, F)
        hard = (F.softplus(top) * absent).sum(0) / absent.sum(0).clamp_min(1)
        loss = loss + hard
    return loss.mean()
