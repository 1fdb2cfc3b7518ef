"""Air bronchograms: air that dense tissue encloses within an axial slice.

A consolidation fills the air spaces of the lung and leaves its bronchi aerated: on the CT,
dark branching lines or dots inside the opacity.  A mass replaces the lung and the bronchi
with it, and is solid.  The findings head calls a mass in many consolidations of the
generated chests (before this rule, 10 of the 10 and 15 of the 16 false mass calls of
``medassist eval`` on the body test splits came with a consolidation: docs/model.md
"Seventeenth round", "Twenty-eighth round"); :func:`withdraw_masses` takes back a
mass call whose evidence box holds air bronchograms where a consolidation is called too, so
the region is reported once, as the consolidation (``present_source`` "image").

A voxel counts when it is air (below ``hu[0]``) and at least ``share`` of the square of side
``2 r + 1`` around it in its slice is dense (above ``hu[1]``), ``r`` the radius in voxels:
a bronchus inside an opacity.  Lung beside a lesion's flat or convex surface sees half of its
square dense at most.  With the defaults (radius 5.5 mm, two voxels of the model grid; share
0.7) a bronchus about one voxel wide counts; a wider lucency (a cavity, a large bronchus) has
too much air in its square and does not.  Everything is numpy on the CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from multimodal.errors import ShapeError
from multimodal.outputs import FindingPrediction


def _square_counts(mask: npt.NDArray[np.bool_], r: int) -> npt.NDArray[np.int32]:
    """(Z, Y, X) -> per voxel, the True voxels of the (2r + 1)^2 square around it in its slice
    (outside the array counts as False)."""
    k = 2 * r + 1
    pad = np.pad(mask.astype(np.int32), ((0, 0), (r + 1, r), (r + 1, r)))
    c = pad.cumsum(1).cumsum(2)
    out: npt.NDArray[np.int32] = c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]
    return out


def air_bronchograms(hu: npt.NDArray[np.floating], spacing_mm: Sequence[float],
                     box_voxels: Sequence[int], *, radius_mm: float, share: float,
                     hu_range: tuple[float, float]) -> int:
    """The air voxels in ``box_voxels`` (z0, y0, x0, z1, y1, x1, inclusive) of ``hu`` (Z, Y, X)
    that dense tissue encloses in their slice (the module's description)."""
    if hu.ndim != 3 or len(spacing_mm) != 3 or len(box_voxels) != 6:
        raise ShapeError(f"expected hu (Z, Y, X), 3 spacings and a 6-value box, got "
                         f"{hu.shape}, {len(spacing_mm)}, {len(box_voxels)}")
    r = max(1, round(radius_mm / min(float(spacing_mm[1]), float(spacing_mm[2]))))
    last = np.asarray(hu.shape) - 1
    lo = np.clip(np.asarray(box_voxels[:3]), 0, last)
    hi = np.clip(np.asarray(box_voxels[3:]), lo, last)
    # the box with a margin of r in-plane, so that its edge voxels see their whole square
    y0, x0 = max(int(lo[1]) - r, 0), max(int(lo[2]) - r, 0)
    sub = np.asarray(hu[lo[0]:hi[0] + 1, y0:hi[1] + r + 1, x0:hi[2] + r + 1])
    dense = _square_counts(sub > hu_range[1], r)
    enclosed = (sub < hu_range[0]) & (dense >= share * (2 * r + 1) ** 2)
    inner = enclosed[:, lo[1] - y0:hi[1] - y0 + 1, lo[2] - x0:hi[2] - x0 + 1]
    return int(inner.sum())


def withdraw_masses(preds: Sequence[FindingPrediction], hu: npt.NDArray[np.floating],
                    spacing_mm: Sequence[float], labels: Sequence[str], within: str,
                    min_voxels: int, *, radius_mm: float, share: float,
                    hu_range: tuple[float, float]) -> list[FindingPrediction]:
    """``preds`` with each present finding of ``labels`` whose evidence box holds at least
    ``min_voxels`` air bronchograms not called (``present_source`` "image") where the label
    ``within`` (a consolidation) is called; the others unchanged.  The input is not
    modified."""
    if not any(p.label == within and p.present for p in preds):
        return list(preds)
    out = []
    for p in preds:
        if p.label in labels and p.present and p.box_voxels is not None \
                and air_bronchograms(hu, spacing_mm, p.box_voxels, radius_mm=radius_mm,
                                     share=share, hu_range=hu_range) >= min_voxels:
            p = dataclasses.replace(p, present=False, present_source="image")
        out.append(p)
    return out
