"""A pericardial effusion found and measured on the CT.

The presence head ranks pericardial effusion well (held-out AUROC about 0.9) but no threshold
fitted on the validation cases calls it: four percent of cases have one, and the head's
probabilities are never high.  An effusion is plain to see, though: a band of fluid density
(0 to 20 HU) between the heart and the fat or lung around it, where a normal heart has its
fat pad (-100 HU) or touches lung directly.  This module looks for that band on the HU volume
of the model grid (:class:`multimodal.config.MeasureConfig`, ``fluid_*``):

1. Lung: air inside the body (:func:`multimodal.cardiac.lung_mask`, seeded from the anterior
   and posterior borders only, so that a lung the field of view cuts laterally stays lung).
2. Heart sections: on each slice with both lungs (the smaller side at least 0.3 of the larger)
   and at least half the largest lung area, the soft tissue (-30 to 500 HU) between the lungs
   in the anterior 60 % of their extent, opened with a square of 2r + 1 voxels, r the voxels
   in 8 mm (7 voxels, 19 mm, on the demo grid: the chest wall's thin layers and the vessels
   fall away); the largest piece of at least 15 cm^2 whose centre
   lies within 45 mm of a point 15 mm left of the body's midline is the heart's section (the
   liver's dome, on the right, is not).  The heart's slices are the run around the largest
   section whose sections are at least half that; a run with fewer than 150 scored rays
   (step 3) is not the heart (on a real chest the liver's dome between the lung bases can be
   the largest section), and the run around the largest section left is tried (three at
   most).
3. Bands: 48 rays from each section's centre over its anterior half (the posterior half
   meets the aorta and the oesophagus), sampled every half voxel; where a ray leaves the
   heart (below -30 HU, within 2 voxels of its section), the run of samples in ``fluid_hu``
   just inside is the band, if denser tissue (the myocardium) closes it.
4. The share of rays whose band is at least ``fluid_band_mm`` thick is the finding's score;
   the effusion's thickness is the 75th percentile of the bands of that thickness (a ray
   from the centre crosses the band obliquely at the heart's sides, so the largest bands
   overstate it).

Everything is numpy / torch on the CPU (about 0.2 to 0.3 s a case on the demo grid:
``bench/pericardium.py``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from multimodal.cardiac import (
    body_midline,
    chest_slices,
    components,
    flanking_lung,
    lung_mask,
)
from multimodal.errors import ShapeError

_SOFT_HU = (-30.0, 500.0)  # soft tissue and fluid: not fat, not bone
_EDGE_HU = -30.0  # a ray has left the heart (fat or lung)
_OPEN_MM = 8.0  # opening half-width: cuts the heart off the chest wall and the vessels
_MIN_SECTION_MM2 = 1500.0
_LEFT_OF_MIDLINE_MM = 15.0
_MAX_OFFSET_MM = 45.0
_ANTERIOR = 0.6
_N_RAYS = 48
_MAX_RAY_MM = 120.0
_MIN_RAYS = 8  # a section with fewer closed rays is not scored
_MIN_RUN_RAYS = 150  # fewer over the run's slices: not the heart (about 25 per slice)
_RUN_TRIES = 3
_THICKNESS_PCT = 75.0  # of the bands at least band_mm thick (validation MAE 1.60 mm:
#                        bench/pericardium.py --val 480)


@dataclass(frozen=True)
class PericardialFluid:
    """The fluid band around the heart of one CT."""

    share: float  # rays with a band of fluid_band_mm or more, over the rays scored
    thickness_mm: float  # the 75th percentile of those bands (0 without any)
    n_rays: int  # rays scored (closed by the myocardium)
    slices: tuple[int, int]  # the heart's z range [k0, k1] on the model grid
    #: [k0, i0, j0, k1, i1, j1] (inclusive) around the bands' samples, or the heart's sections
    #: where no ray has a band
    box_voxels: tuple[int, int, int, int, int, int]
    #: the same around the whole sac: the heart's sections (the fluid, of soft-tissue density,
    #: is part of them) on its slices and those beyond whose sections overlap theirs (the rays
    #: score the anterior half only, and the fluid lies all round the heart), reaching back to
    #: the sections cut at ``sac_depth`` on the heart's slices; the band box where no band was
    #: scored
    sac_box_voxels: tuple[int, int, int, int, int, int]


def _box_count(mask: npt.NDArray[np.bool_], r: int) -> npt.NDArray[np.int32]:
    """(N, Y, X) -> per voxel, the True voxels of its slice within a (2r+1)^2 square (the
    grid's outside counts as False)."""
    k = 2 * r + 1
    c = np.pad(mask.astype(np.int32), ((0, 0), (r + 1, r), (r + 1, r))).cumsum(1).cumsum(2)
    out: npt.NDArray[np.int32] = c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]
    return out


def _open(mask: npt.NDArray[np.bool_], r: int) -> npt.NDArray[np.bool_]:
    """Morphological opening of each slice with a (2r+1)^2 square: the pieces narrower than
    it fall away."""
    core = _box_count(mask, r) == (2 * r + 1) ** 2
    return (_box_count(core, r) > 0) & mask


def _sections(hu: npt.NDArray[np.floating], lung: npt.NDArray[np.bool_],
              spacing: tuple[float, float, float], air_hu: float,
              anterior: float = _ANTERIOR) -> dict[int, npt.NDArray[np.bool_]]:
    """z -> the heart's (Y, X) section on the slices where one is found (step 2; the soft
    tissue in the ``anterior`` share of the lungs' extent)."""
    x_end = hu.shape[2]
    mid = body_midline(hu, air_hu)
    zs = chest_slices(lung, round(mid))
    if zs.size == 0:
        return {}
    rows = lung[zs]  # (N, Y, X)
    xs = np.arange(x_end)
    lft, rgt = flanking_lung(rows)
    cand = (lft >= 0) & (rgt < x_end) & ~rows \
        & (hu[zs] > _SOFT_HU[0]) & (hu[zs] < _SOFT_HU[1])
    ys = np.arange(rows.shape[1])
    for i in range(zs.size):  # the anterior share of the slice's lung extent
        yl = ys[rows[i].any(1)]
        cand[i, int(yl[0] + anterior * (yl[-1] - yl[0] + 1)):] = False
    lab = components(_open(cand, max(1, round(_OPEN_MM / spacing[2]))))
    n = int(lab.max())
    size = np.bincount(lab.ravel(), minlength=n + 1)
    cx = np.bincount(lab.ravel(), weights=np.broadcast_to(xs, lab.shape).ravel(),
                     minlength=n + 1) / np.maximum(size, 1)
    target = mid + _LEFT_OF_MIDLINE_MM / spacing[2]  # DICOM LPS: x grows to the left
    ok = (size * spacing[1] * spacing[2] >= _MIN_SECTION_MM2) \
        & (np.abs(cx - target) * spacing[2] <= _MAX_OFFSET_MM)
    ok[0] = False
    out: dict[int, npt.NDArray[np.bool_]] = {}
    for i, z in enumerate(zs.tolist()):
        pieces = np.unique(lab[i])
        pieces = pieces[ok[pieces]]
        if pieces.size:
            out[z] = lab[i] == pieces[np.argmax(size[pieces])]
    return out


def _heart_runs(sections: dict[int, npt.NDArray[np.bool_]]) -> Iterator[list[int]]:
    """Candidate heart slices, best first: the consecutive slices around the largest section
    left whose sections are at least half its area; then the same among the slices left."""
    left = {z: int(s.sum()) for z, s in sections.items()}
    while left:
        top = max(left, key=lambda z: left[z])
        run = [top]
        for step in (-1, 1):
            z = top + step
            while z in left and left[z] >= 0.5 * left[top]:
                run.append(z)
                z += step
        yield sorted(run)
        for z in run:
            del left[z]


def _bands(hu2: npt.NDArray[np.floating], section: npt.NDArray[np.bool_], sx: float,
           fluid_hu: tuple[float, float]) -> tuple[list[float], list[tuple[float, float]]]:
    """Band thickness (mm) on each closed ray of one section, and each band's outer end
    (y, x) in voxels (step 3)."""
    ys, xs = np.nonzero(section)
    cy, cx = float(ys.mean()), float(xs.mean())
    img = torch.from_numpy(np.ascontiguousarray(hu2, dtype=np.float32))[None, None]
    h, w = hu2.shape
    t = np.arange(0.0, _MAX_RAY_MM / sx, 0.5)  # half-voxel steps
    ang = np.linspace(-math.pi, 0.0, _N_RAYS)  # y < 0 is anterior
    py = cy + np.sin(ang)[:, None] * t[None, :]  # (R, T)
    px = cx + np.cos(ang)[:, None] * t[None, :]
    grid = torch.from_numpy(np.stack([2 * px / (w - 1) - 1, 2 * py / (h - 1) - 1], -1)
                            ).float()[None]
    v = F.grid_sample(img, grid, mode="bilinear", padding_mode="border",
                      align_corners=True)[0, 0].numpy()  # (R, T)
    inside = (py >= 0) & (py <= h - 1) & (px >= 0) & (px <= w - 1)
    # the heart's section grown by 2 voxels: an edge further out (a ray that ran on through
    # the mediastinum into the chest wall) is not the heart's
    near = _box_count(section[None], 2)[0] > 0
    iy = np.clip(np.rint(py), 0, h - 1).astype(np.int64)
    ix = np.clip(np.rint(px), 0, w - 1).astype(np.int64)
    bands: list[float] = []
    ends: list[tuple[float, float]] = []
    for r in range(_N_RAYS):
        out = np.flatnonzero((v[r] < _EDGE_HU) & inside[r])
        if out.size == 0 or not near[iy[r, out[0]], ix[r, out[0]]]:
            continue
        k = int(out[0]) - 1
        n = 0
        while k >= 0 and fluid_hu[0] <= v[r, k] <= fluid_hu[1]:
            n += 1
            k -= 1
        if k >= 0 and v[r, k] > fluid_hu[1]:  # closed by the myocardium
            bands.append(n * 0.5 * sx)
            ends.append((float(py[r, int(out[0])]), float(px[r, int(out[0])])))
    return bands, ends


def pericardial_fluid(hu: npt.NDArray[np.floating], spacing_mm: Sequence[float],
                      fluid_hu: tuple[float, float] = (-15.0, 28.0), band_mm: float = 4.0,
                      air_hu: float = -400.0, sac_depth: float = _ANTERIOR,
                      sac_min_share: float = 0.0) -> PericardialFluid | None:
    """The fluid band around the heart of a (Z, Y, X) HU volume with ``spacing_mm`` (z, y,
    x), or None where no heart is found or the grid's in-plane spacing is coarser than
    ``band_mm``.  ``sac_depth`` (more than the sections' 0.6): the sac box reaches back to
    the heart's sections cut at that share of the lungs' extent instead, on the heart's own
    slices (the sections behind the 0.6 line hold the back of the heart and its fluid, which
    the rays leave out; those of the slices beyond could hold the liver's dome), where the
    share of rays with a band reaches ``sac_min_share`` (the finding is called: its box is
    shown; elsewhere the second look is skipped)."""
    if not _ANTERIOR <= sac_depth <= 1:
        raise ValueError(f"sac_depth must be in [{_ANTERIOR}, 1], got {sac_depth}")
    if hu.ndim != 3:
        raise ShapeError(f"hu must be (Z, Y, X), got shape {hu.shape}")
    if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
        raise ValueError(f"spacing_mm must be three positive values (z, y, x), got "
                         f"{tuple(spacing_mm)}")
    sp = (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]))
    if max(sp[1], sp[2]) > band_mm:
        return None  # a grid coarser than the band cannot show it
    vol = np.asarray(hu, dtype=np.float32)
    lung = lung_mask(vol, air_hu, lateral=False)
    if not lung.any():
        return None
    sections = _sections(vol, lung, sp, air_hu)
    if not sections:
        return None
    # the largest section's run is the heart's unless it is too short to hold the heart (the
    # liver's dome between the lung bases of a real chest): then the next run
    for run in itertools.islice(_heart_runs(sections), _RUN_TRIES):
        bands: list[float] = []
        pts: list[tuple[int, float, float]] = []
        for z in run:
            b, e = _bands(vol[z], sections[z], sp[2], fluid_hu)
            if len(b) < _MIN_RAYS:
                continue
            bands += b
            pts += [(z, y, x) for (y, x), bb in zip(e, b, strict=True) if bb >= band_mm]
        if len(bands) >= _MIN_RUN_RAYS:
            break
    else:
        return None
    arr = np.asarray(bands)
    thick = arr[arr >= band_mm]
    if pts:
        p = np.asarray(pts)
        lo, hi = np.floor(p.min(0)).astype(int), np.ceil(p.max(0)).astype(int)
    else:
        _, ii, jj = np.nonzero(np.stack([sections[z] for z in run]))
        lo = np.array([run[0], ii.min(), jj.min()])
        hi = np.array([run[-1], ii.max(), jj.max()])
    box = (int(lo[0]), int(lo[1]), int(lo[2]), int(hi[0]), int(hi[1]), int(hi[2]))
    sac = box
    share = float((arr >= band_mm).mean())
    if pts:
        sac = _sac_box(sections, run)
        if sac_depth > _ANTERIOR and share >= sac_min_share:
            deep = _sections(vol, lung, sp, air_hu, sac_depth)
            back = [int(np.nonzero(deep[z].any(1))[0].max()) for z in run if z in deep]
            sac = (*sac[:4], max([sac[4], *back]), sac[5])
    return PericardialFluid(
        share=share,
        thickness_mm=float(np.percentile(thick, _THICKNESS_PCT)) if thick.size else 0.0,
        n_rays=int(arr.size), slices=(run[0], run[-1]), box_voxels=box,
        sac_box_voxels=sac)


def _sac_box(sections: dict[int, npt.NDArray[np.bool_]], run: list[int]
             ) -> tuple[int, int, int, int, int, int]:
    """The box around the heart's sections on the ``run`` slices and on the slices beyond
    it, up and down, whose section overlaps theirs (the apex and the base, smaller than the
    run's half-area rule keeps): the fluid, of soft-tissue density, is part of them."""
    ref = np.logical_or.reduce([sections[z] for z in run])
    zs = list(run)
    for step, end in ((-1, run[0]), (1, run[-1])):
        z = end + step
        while z in sections and bool((sections[z] & ref).any()):
            zs.append(z)
            z += step
    zs.sort()
    _, ii, jj = np.nonzero(np.stack([sections[z] for z in zs]))
    return (zs[0], int(ii.min()), int(jj.min()), zs[-1], int(ii.max()), int(jj.max()))
