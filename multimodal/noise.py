"""Image noise on the model grid, measured and brought down to the training cases' level.

A scan noisier than any the model was trained on (low kVp, thin slices, a large patient) makes
the model call findings in the noise: on the generated shift split the 31 scans at 80 kVp with
3 mm slices held 6 of the 6 false pleural effusions, 8 of the 12 false emphysemas and 4 of the
8 false consolidations (docs/model.md "Twenty-eighth round").  :func:`noise_index` measures the
noise in the air around the body; :func:`match_noise` smooths a volume above
``ct.noise_max_index`` in-plane with the smallest Gaussian that brings it to that level (the
noisiest of the checkpoint's validation cases), so that the model reads a scan as noisy as the
ones it learnt from.  Nothing changes at or below the level.  Everything is numpy on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from multimodal.errors import ShapeError
from multimodal.transforms import gaussian_smooth

F32 = npt.NDArray[np.float32]

#: air (outside the body, the airways): where the noise is measured.  Soft tissue is not
#: uniform on a real scan (fat septa, vessels, organ edges): measured there, A0001 read as
#: 15.2 HU, noisier than every generated 80 kVp 7.5 mm scan's median, though its air reads
#: 4.2, within the generator's validation cases (docs/model.md "Twenty-eighth round")
AIR_HU = (-1100.0, -900.0)
#: the in-plane Gaussian widths tried, in voxels, smallest first (0.3 or more: narrower ones
#: leave the scan as it is, :func:`multimodal.transforms.gaussian_smooth`)
SIGMAS = (0.35, 0.45, 0.55, 0.65, 0.8, 1.0, 1.25, 1.5, 2.0)


def noise_index(hu: npt.NDArray[np.floating]) -> float | None:
    """The noise of a (Z, Y, X) volume in HU: the robust SD (1.4826 x the median absolute
    deviation) of each voxel's difference from the mean of its four in-plane neighbours, over
    the voxels that, with those neighbours, are air (:data:`AIR_HU`) and not exactly alike (a
    constant fill outside the reconstructed field holds no noise); None where fewer than
    1,000 are."""
    if hu.ndim != 3:
        raise ShapeError(f"expected hu (Z, Y, X), got {hu.shape}")
    h = np.asarray(hu, np.float32)
    centre = h[:, 1:-1, 1:-1]
    sides = (h[:, :-2, 1:-1], h[:, 2:, 1:-1], h[:, 1:-1, :-2], h[:, 1:-1, 2:])
    air = (centre > AIR_HU[0]) & (centre < AIR_HU[1])
    for s in sides:
        air &= (s > AIR_HU[0]) & (s < AIR_HU[1])
    r = (centre - 0.25 * (sides[0] + sides[1] + sides[2] + sides[3]))[air]
    r = r[r != 0]
    if r.size < 1000:
        return None
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


def match_noise(hu: npt.NDArray[np.floating], max_index: float,
                sigmas: Sequence[float] = SIGMAS, *, index: float | None = None
                ) -> tuple[F32, float]:
    """``hu`` (Z, Y, X) smoothed in-plane with the smallest Gaussian of ``sigmas`` whose result
    has a :func:`noise_index` of ``max_index`` or less (the largest where none does), and that
    width in voxels; unchanged (a float32 copy) and 0.0 where the index is ``max_index`` or
    less, or not measurable.  ``index``: the scan's :func:`noise_index` where the caller has
    it (not measured again).  The input is not modified."""
    h = np.array(hu, np.float32)
    idx = noise_index(h) if index is None else index
    if max_index <= 0 or idx is None or idx <= max_index:
        return h, 0.0
    out, used = h, 0.0
    for s in sigmas:
        t = torch.from_numpy(h)[None, None]
        out, used = gaussian_smooth(t, (0.0, s, s))[0, 0].numpy(), float(s)
        got = noise_index(out)
        if got is not None and got <= max_index:
            break
    return out, used
