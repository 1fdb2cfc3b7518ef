"""A called nodule's or mass's size measured on the image.

The size head regresses a diameter from the fused tokens; for masses it states about the
generator's median whatever the mass's extent (``size_pairs_mm_tp`` in ``medassist eval``).
This module measures instead, on the HU volume of the model grid, inside the finding's evidence
box (:class:`multimodal.config.MeasureConfig`):

1. Centre: candidate voxels (dense enough) are scored by 26 rays each: the share that reach lung
   within ``max_radius_mm`` (enclosure) and the distance to the nearest lung (depth).  Among the
   candidates enclosed enough, the deepest is the lesion's centre: a lesion is tissue surrounded
   by lung, the chest wall and the mediastinum are not.
2. Edge: 256 rays from the centre, sampled every 0.5 mm (trilinear); the edge on each ray is the
   first crossing, interpolated, of the level half way between the lesion's core (the median
   HU within 1 mm) and the lung's (the median of the rays' minima).
3. Ellipsoid: a quadric fitted by least squares to the edge points nearer than 1.5 times their
   median (a ray that ran on through the chest wall would pull it), refitted with the points
   of all rays within ``trim`` of it (spicules, a touching vessel or pleura are left out); its
   centre becomes the next ray origin (up to six rounds, until it moves less than 0.5 mm; a
   centre in air, a bronchus crossing the lesion, keeps the previous round's fit).  The longest
   diameter is the measurement.

A measurement is taken only if the ellipsoid explains ``min_fit_fraction`` of the rays, lies in
the evidence box (5 mm margin), is no longer than 3 depths + 10 mm (an ellipsoid with radii 1 and
0.75 has a longest diameter of 2.7 inscribed radii) and falls in its label's diameter range;
otherwise the size head's estimate stays.  With ``max_wall_share`` above 0, up to that share of
rays without an edge or with one beyond the ellipsoid (into the chest wall or mediastinum) are
left out of the fraction: the lesion is measured from its lung-facing surface (off by default:
``bench/mass_measure.py``).  Everything is numpy / torch on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from multimodal.bronchogram import withdraw_masses
from multimodal.cardiac import body_midline, cardiothoracic_ratio
from multimodal.config import MeasureConfig
from multimodal.errors import ShapeError
from multimodal.heads import LOBE_SIDE
from multimodal.islands import inner_air_share, lung_islands
from multimodal.outputs import FindingPrediction
from multimodal.pericardium import pericardial_fluid

F64 = npt.NDArray[np.float64]

_STEP_MM = 0.5  # edge rays
_SEARCH_STEP_MM = 2.0  # candidate rays
_MAX_CANDIDATES = 8_000
_CHUNK = 2_048
_FIRST_FIT = 1.5  # the first ellipsoid fit uses the edges nearer than this times their median
_ROUNDS = 6  # ray origins: the start, then each fitted centre until it moves < 0.5 mm


@dataclass(frozen=True)
class Measurement:
    """One lesion measured on the model grid."""

    diameter_mm: float  # longest axis of the fitted ellipsoid
    axes_mm: tuple[float, float, float]  # all three diameters, longest first
    centre_voxel: tuple[float, float, float]  # (z, y, x) on the model grid
    #: share of the rays with a lung edge not beyond the ellipsoid that the ellipsoid explains
    fit_fraction: float
    #: share of the other rays: no lung edge, or one beyond the ellipsoid (they ran on into
    #: the chest wall or mediastinum)
    wall_share: float
    #: long and short axis of the ellipsoid's axial section through its centre (its largest
    #: axial section: what a reader measures on the axial slice), and its craniocaudal extent
    axial_mm: tuple[float, float]
    craniocaudal_mm: float
    #: half the ellipsoid's extent along z, y and x (mm): its axis-aligned bounding box
    half_extent_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def box_voxels(self, spacing_mm: Sequence[float], shape: Sequence[int]
                   ) -> tuple[int, int, int, int, int, int]:
        """The voxels (inclusive, clipped to ``shape``) of the ellipsoid's bounding box."""
        c = np.asarray(self.centre_voxel)
        h = np.asarray(self.half_extent_mm) / np.asarray(spacing_mm, np.float64)
        last = np.asarray(shape) - 1
        lo = np.clip(np.floor(c - h + 0.5), 0, last).astype(int)
        hi = np.clip(np.ceil(c + h - 0.5), lo, last).astype(int)
        return (int(lo[0]), int(lo[1]), int(lo[2]), int(hi[0]), int(hi[1]), int(hi[2]))


def _fibonacci_dirs(n: int) -> F64:
    i = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * i / n)
    az = math.pi * (1 + math.sqrt(5.0)) * i
    return np.stack([np.cos(polar), np.sin(polar) * np.sin(az),
                     np.sin(polar) * np.cos(az)], 1)  # (n, 3) unit (z, y, x)


_EDGE_DIRS = _fibonacci_dirs(256)
_NB = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)
                if (a, b, c) != (0, 0, 0)], np.float64)
_SEARCH_DIRS = _NB / np.linalg.norm(_NB, axis=1, keepdims=True)  # (26, 3)


def _sample(vol: torch.Tensor, pts_mm: F64, spacing: F64) -> F64:
    """Trilinear HU at points (..., 3) in mm (z, y, x) of a (1, 1, Z, Y, X) volume; outside
    it the border value."""
    shape = np.asarray(vol.shape[2:], np.float64) - 1
    norm = 2 * (pts_mm.reshape(-1, 3) / spacing) / np.maximum(shape, 1) - 1
    grid = torch.from_numpy(np.ascontiguousarray(norm[:, ::-1], np.float32)).view(1, 1, 1, -1, 3)
    out = F.grid_sample(vol, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return np.asarray(out.numpy(), np.float64).reshape(pts_mm.shape[:-1])


def _candidates(hu: npt.NDArray[np.floating], box: Sequence[int], spacing: F64,
                cfg: MeasureConfig, min_depth_mm: float) -> tuple[F64, F64, F64]:
    """Candidate centres (N, 3) voxels in the inclusive box at least ``min_depth_mm`` deep,
    their enclosure and depth (mm)."""
    z0, y0, x0, z1, y1, x1 = (int(v) for v in box)
    n = (z1 - z0 + 1) * (y1 - y0 + 1) * (x1 - x0 + 1)
    stride = max(1, math.ceil(math.sqrt(n / _MAX_CANDIDATES)))  # in-plane, every slice
    zz, yy, xx = np.meshgrid(np.arange(z0, z1 + 1), np.arange(y0, y1 + 1, stride),
                             np.arange(x0, x1 + 1, stride), indexing="ij")
    grid = np.stack([zz.ravel(), yy.ravel(), xx.ravel()], 1)
    c: F64 = grid[hu[grid[:, 0], grid[:, 1], grid[:, 2]] > cfg.tissue_hu].astype(np.float64)
    t = np.arange(_SEARCH_STEP_MM, cfg.max_radius_mm + 1e-6, _SEARCH_STEP_MM)
    # the candidate rays read the nearest voxel of the air mask (the edge rays interpolate)
    air = (hu < cfg.air_hu).ravel()
    steps = (_SEARCH_DIRS[:, None, :] * t[None, :, None]) / spacing  # (26, T, 3) voxels
    last = np.asarray(hu.shape) - 1
    strides = np.array([hu.shape[1] * hu.shape[2], hu.shape[2], 1])
    # a ray that reaches air short of min_depth_mm makes a candidate too shallow, whatever
    # the rest of its rays read: those few steps first, the whole rays for the others
    near = int(np.searchsorted(t, min_depth_mm))  # the steps t < min_depth_mm
    if near:
        keep = np.ones(len(c), bool)
        for a in range(0, len(c), _CHUNK):
            pts = np.rint(c[a:a + _CHUNK, None, None, :] + steps[None, :, :near]
                          ).astype(np.int64)
            keep[a:a + _CHUNK] = ~air[np.clip(pts, 0, last) @ strides].any((1, 2))
        c = c[keep]
    enc, depth = np.zeros(len(c)), np.zeros(len(c))
    for a in range(0, len(c), _CHUNK):
        pts = np.rint(c[a:a + _CHUNK, None, None, :] + steps[None]).astype(np.int64)
        below = air[np.clip(pts, 0, last) @ strides]  # (n, 26, T)
        hit = below.any(2)
        dist = np.where(hit, t[np.argmax(below, 2)], np.inf)
        enc[a:a + _CHUNK], depth[a:a + _CHUNK] = hit.mean(1), dist.min(1)
    return c, enc, depth


def _fit_ellipsoid(p: F64) -> tuple[F64, F64, F64] | None:
    """Quadric x'Ax + b'x = 1 through points (N, 3) -> centre, A (normalised so that the
    ellipsoid is (x - c)'A(x - c) = 1) and radii; None if not an ellipsoid."""
    z, y, x = p.T
    m = np.stack([z * z, y * y, x * x, 2 * z * y, 2 * z * x, 2 * y * x, z, y, x], 1)
    sol = np.linalg.lstsq(m, np.ones(len(p)), rcond=None)[0]
    a = np.array([[sol[0], sol[3], sol[4]], [sol[3], sol[1], sol[5]],
                  [sol[4], sol[5], sol[2]]])
    try:
        centre = -0.5 * np.linalg.solve(a, sol[6:])
    except np.linalg.LinAlgError:
        return None
    k = 1 + centre @ a @ centre
    if k <= 0:
        return None
    a = a / k
    w = np.linalg.eigvalsh(a)
    if (w <= 0).any():
        return None
    return centre, a, 1 / np.sqrt(w)


def _edge_fit(vol: torch.Tensor, c_mm: F64, spacing: F64, cfg: MeasureConfig
              ) -> tuple[F64, F64, F64, float, float] | None:
    """Rays from ``c_mm`` -> (centre mm, radii mm, the matrix A of (x - c)'A(x - c) = 1 in
    (z, y, x) mm, fit fraction, wall share) of the fitted ellipsoid: the fraction is over the
    rays with a lung edge the ellipsoid does not fall short of, the wall share is the share
    of the others (rays that ran on through tissue: the chest wall or mediastinum)."""
    t = np.arange(0.0, cfg.max_radius_mm + 1e-6, _STEP_MM)
    rows = np.arange(len(_EDGE_DIRS))
    radii = np.zeros(3)
    amat = np.eye(3)
    fraction = wall = 0.0
    for rnd in range(_ROUNDS):
        v = _sample(vol, c_mm[None, None, :] + _EDGE_DIRS[:, None, :] * t[None, :, None],
                    spacing)  # (256, T)
        core = float(np.median(v[:, :3]))
        if core <= cfg.air_hu:
            if rnd == 0:
                return None  # the origin is not inside a lesion
            # the fitted centre lies in air inside the lesion (a bronchus crossing it): the
            # previous round's fit, from an origin in tissue, stands
            break
        level = 0.5 * (core + float(np.median(v.min(1))))
        below = v < level
        k = np.argmax(below, 1)
        kk = np.maximum(k, 1)
        a, b = v[rows, kk - 1], v[rows, kk]
        d = t[kk - 1] + (a - level) / np.where(a == b, 1.0, a - b) * _STEP_MM
        ok = below.any(1) & (k > 0)
        if ok.sum() < 20:
            return None
        med = float(np.median(d[ok]))
        ok &= d < 2 * med
        pts = _EDGE_DIRS * d[:, None]  # edge points relative to the origin (mm)
        # the first fit on the nearer edges: a ray that ran on through the chest wall to the
        # body's surface or a lung beyond would pull the ellipsoid towards the wall
        use = ok & (d < _FIRST_FIT * med)
        for _ in range(4):
            if use.sum() < 20:
                return None
            fit = _fit_ellipsoid(pts[use])
            if fit is None:
                return None
            centre, amat, radii = fit
            q = np.sqrt(np.einsum("ni,ij,nj->n", pts - centre, amat, pts - centre))
            new = ok & (np.abs(q - 1) < cfg.trim)
            if (new == use).all():
                break
            use = new
        # a ray without a lung edge near the lesion, or whose edge lies beyond the ellipsoid,
        # ran on through tissue: the chest wall or mediastinum the lesion touches (no contrast
        # there).  The fit is judged on the others; an edge inside the ellipsoid (lung where
        # the fit puts lesion) counts against it.
        beyond = ~ok | (q > 1 + cfg.trim)
        fraction = float(use.sum() / max(int((~beyond).sum()), 1))
        wall = float(beyond.mean())
        c_mm = c_mm + centre
        if float(np.linalg.norm(centre)) < 0.5:
            break
    return c_mm, radii, amat, fraction, wall


def _reading_axes(amat: F64) -> tuple[tuple[float, float], float]:
    """The axial section through the centre of the ellipsoid (x - c)'A(x - c) = 1 ((z, y, x)
    mm) -> (its long and short axis (dz = 0 leaves the (y, x) block of A), the ellipsoid's
    craniocaudal extent (2 sqrt((A^-1)_zz)))."""
    w = np.linalg.eigvalsh(amat[1:, 1:])  # ascending; positive for an ellipsoid
    axial = (float(2 / math.sqrt(w[0])), float(2 / math.sqrt(w[1])))
    return axial, float(2 * math.sqrt(np.linalg.inv(amat)[0, 0]))


def measure_lesion(hu: npt.NDArray[np.floating], spacing_mm: Sequence[float],
                   box_voxels: Sequence[int], cfg: MeasureConfig,
                   diameter_range_mm: tuple[float, float] = (0.0, math.inf)
                   ) -> Measurement | None:
    """Measure the lesion in ``box_voxels`` (z0, y0, x0, z1, y1, x1, inclusive) of ``hu``
    (Z, Y, X) with voxel ``spacing_mm``; None where no candidate passes the checks."""
    if hu.ndim != 3 or len(spacing_mm) != 3 or len(box_voxels) != 6:
        raise ShapeError(f"expected hu (Z, Y, X), 3 spacings and a 6-value box, got "
                         f"{hu.shape}, {len(spacing_mm)}, {len(box_voxels)}")
    lo = np.clip(np.asarray(box_voxels[:3]), 0, np.asarray(hu.shape) - 1)
    hi = np.clip(np.asarray(box_voxels[3:]), lo, np.asarray(hu.shape) - 1)
    spacing = np.asarray(spacing_mm, np.float64)
    vol = torch.from_numpy(np.ascontiguousarray(hu, np.float32))[None, None]
    # a fit from a candidate of depth d is taken only up to a diameter of 3 d + 10 mm: a
    # candidate too shallow for the range's smallest diameter cannot be measured (they come
    # last in the depth order, so leaving them out changes no result)
    min_depth = max(cfg.min_depth_mm, (diameter_range_mm[0] - 10.0) / 3.0)
    c, enc, depth = _candidates(hu, (*lo, *hi), spacing, cfg, min_depth)
    lo_mm, hi_mm = lo * spacing - 5.0, hi * spacing + 5.0
    fits: dict[int, tuple[F64, F64, F64, float, float] | None] = {}  # per candidate: the
    # fit does not depend on the enclosure level, which only decides who is tried
    for level in cfg.enclosure:
        idx = np.nonzero((enc >= level) & (depth >= min_depth))[0]
        idx = idx[np.argsort(-depth[idx], kind="stable")]
        tried: list[F64] = []
        for j in idx:
            start = c[j] * spacing
            if any(np.linalg.norm(start - q) < 15.0 for q in tried):
                continue
            tried.append(start)
            if int(j) not in fits:
                fits[int(j)] = _edge_fit(vol, start, spacing, cfg)
            m = _accepted(fits[int(j)], float(depth[j]), (lo_mm, hi_mm), spacing, cfg,
                          diameter_range_mm)
            if m is not None:
                return m
            if len(tried) >= cfg.n_tries:
                break
    return None


def _accepted(got: tuple[F64, F64, F64, float, float] | None, depth_mm: float,
              box_mm: tuple[F64, F64], spacing: F64, cfg: MeasureConfig,
              diameter_range_mm: tuple[float, float]) -> Measurement | None:
    """The measurement of a fit (:func:`_edge_fit`) from a candidate ``depth_mm`` deep, if it
    passes the checks: it explains ``cfg.min_fit_fraction`` of the rays, its diameter is at
    most 3 depths + 10 mm and in ``diameter_range_mm``, its centre in ``box_mm`` (lo, hi);
    else None."""
    if got is None:
        return None
    centre, radii, amat, fraction, wall = got
    diameter = float(2 * radii.max())
    # the share of all rays the ellipsoid explains or, up to max_wall_share of rays into the
    # wall, the share of the others
    explained = fraction * (1.0 - wall) if wall > cfg.max_wall_share else fraction
    if not (explained >= cfg.min_fit_fraction and diameter <= 3 * depth_mm + 10.0
            and bool((centre >= box_mm[0]).all() and (centre <= box_mm[1]).all())
            and diameter_range_mm[0] <= diameter <= diameter_range_mm[1]):
        return None
    axes = sorted((float(2 * r) for r in radii), reverse=True)
    cv = centre / spacing
    axial, cc = _reading_axes(amat)
    half = np.sqrt(np.diag(np.linalg.inv(amat)))
    return Measurement(
        diameter_mm=diameter, axes_mm=(axes[0], axes[1], axes[2]),
        centre_voxel=(float(cv[0]), float(cv[1]), float(cv[2])),
        fit_fraction=fraction, wall_share=wall, axial_mm=axial, craniocaudal_mm=cc,
        half_extent_mm=(float(half[0]), float(half[1]), float(half[2])))


def measure_findings(preds: Sequence[FindingPrediction], hu: npt.NDArray[np.floating] | None,
                     spacing_mm: Sequence[float], cfg: MeasureConfig
                     ) -> list[FindingPrediction]:
    """One case's predictions with a mass read in a called consolidation not called
    (:mod:`multimodal.bronchogram`), a label of ``cfg.island_labels`` the head did not call
    called where :func:`find_lesion` finds its lesion on the whole CT (:func:`_island_call`),
    each present lesion's ``size_mm`` measured on ``hu`` where
    the measurement passes its checks (``size_source`` "image"), a present ratio label's
    cardiothoracic ratio, and each fluid label decided on ``hu`` where the heart is found
    (:func:`_fluid_call`); the others unchanged.  ``hu`` None (no CT) measures nothing.  The
    input is not modified."""
    ranges = {les[0]: (les[1], les[2]) for les in cfg.lesions}
    if cfg.enabled and hu is not None and cfg.bronchogram_labels:
        # a mass read in a called consolidation (air bronchograms in its box) is not called
        preds = withdraw_masses(preds, np.asarray(hu), spacing_mm, cfg.bronchogram_labels,
                                cfg.bronchogram_within, cfg.bronchogram_min_voxels,
                                radius_mm=cfg.bronchogram_radius_mm,
                                share=cfg.bronchogram_share, hu_range=cfg.bronchogram_hu)
    out = []
    for p in preds:
        if cfg.enabled and hu is not None and not p.present and p.present_source == "head" \
                and p.label in cfg.island_labels and p.label in ranges:
            # not called by the head (nor taken back above): looked for on the whole CT
            p = _island_call(p, hu, spacing_mm, cfg, ranges[p.label])
        if cfg.enabled and hu is not None and p.present and p.label in ranges \
                and p.box_voxels is not None and p.present_source == "head":
            m = measure_lesion(hu, spacing_mm, p.box_voxels, cfg, ranges[p.label])
            if m is not None:
                p = dataclasses.replace(
                    p, size_mm=round(m.diameter_mm, 1), size_source="image",
                    size_axes_mm=(round(m.axial_mm[0], 1), round(m.axial_mm[1], 1),
                                  round(m.craniocaudal_mm, 1)),
                    # the lesion measured is the tighter evidence (heads.evidence_box cells)
                    focus_box=None if p.focus_box is None
                    else m.box_voxels(spacing_mm, np.shape(hu)))
        elif cfg.enabled and hu is not None and p.present and p.label in cfg.ratio_labels:
            # the size of such a label is a ratio (cardiothoracic), not a length
            c = cardiothoracic_ratio(np.asarray(hu), spacing_mm, ratio_range=cfg.ratio_range)
            if c is not None:
                p = dataclasses.replace(p, size_mm=round(c.ratio, 2), size_source="image")
        elif cfg.enabled and hu is not None and p.label in cfg.fluid_labels:
            p = _fluid_call(p, hu, spacing_mm, cfg)
        out.append(focus_evidence(p))
    return out


def find_lesion(hu: npt.NDArray[np.floating], spacing_mm: Sequence[float],
                cfg: MeasureConfig, diameter_range_mm: tuple[float, float]
                ) -> Measurement | None:
    """A lesion of ``diameter_range_mm`` found on the whole of ``hu`` (Z, Y, X), where no
    evidence box points to one: the first of the islands the lung surrounds
    (:func:`multimodal.islands.lung_islands`, the largest first, at most
    ``cfg.island_max_tries``) in whose box :func:`measure_lesion` measures a lesion with at
    most ``cfg.island_max_air_share`` air inside (:func:`multimodal.islands.inner_air_share`:
    air bronchograms or a cavity say consolidation); None where none does."""
    islands = lung_islands(hu, spacing_mm, air_hu=cfg.air_hu, lung_share=cfg.island_lung_share,
                           min_ml=cfg.island_min_ml)
    for island in islands[:cfg.island_max_tries]:
        m = measure_lesion(hu, spacing_mm, island.box_voxels, cfg, diameter_range_mm)
        if m is not None and inner_air_share(
                hu, m.centre_voxel, m.half_extent_mm, spacing_mm,
                air_hu=cfg.air_hu) <= cfg.island_max_air_share:
            return m
    return None


def _island_call(p: FindingPrediction, hu: npt.NDArray[np.floating],
                 spacing_mm: Sequence[float], cfg: MeasureConfig,
                 diameter_range_mm: tuple[float, float]) -> FindingPrediction:
    """``p`` (not called by the head) called where :func:`find_lesion` finds its lesion
    (``present_source`` "image"): its size measured, its evidence the lesion's box, its side
    where the lesion's centre lies against the body's midline (+x is the patient's left, DICOM
    LPS) and its lobe the location head's likeliest on that side; else ``p``."""
    m = find_lesion(hu, spacing_mm, cfg, diameter_range_mm)
    if m is None:
        return p
    side = "left" if m.centre_voxel[2] > body_midline(np.asarray(hu), cfg.air_hu) else "right"
    lobe = next((loc for loc in p.location_order if LOBE_SIDE.get(loc) == side), None)
    box = m.box_voxels(spacing_mm, np.shape(hu))
    return dataclasses.replace(
        p, present=True, present_source="image", laterality=side, location=lobe,
        size_mm=round(m.diameter_mm, 1), size_source="image",
        size_axes_mm=(round(m.axial_mm[0], 1), round(m.axial_mm[1], 1),
                      round(m.craniocaudal_mm, 1)),
        slices=(box[0], box[3]), box_voxels=box, focus_box=None)


def focus_evidence(p: FindingPrediction) -> FindingPrediction:
    """``p`` with its evidence box and slices its ``focus_box`` where it has one (the rules
    on the CT above read the wider ``box_voxels`` first; a box the fluid call found is the
    fluid's own); else ``p``."""
    if p.focus_box is None or p.present_source == "image":
        return p
    f = p.focus_box
    return dataclasses.replace(p, box_voxels=f, slices=(f[0], f[3]), focus_box=None)


def _fluid_call(p: FindingPrediction, hu: npt.NDArray[np.floating],
                spacing_mm: Sequence[float], cfg: MeasureConfig) -> FindingPrediction:
    """A fluid label decided on the CT (``present_source`` "image"): called where the band is
    found, its size the band's thickness and its evidence the band's slices and box; absent
    where the heart is found without a band, unless the head calls it (then the head's call
    stands); where no heart is found, the head's decision stands."""
    f = pericardial_fluid(np.asarray(hu), spacing_mm, fluid_hu=cfg.fluid_hu,
                          band_mm=cfg.fluid_band_mm, sac_depth=cfg.fluid_sac_depth,
                          sac_min_share=cfg.fluid_min_share)
    if f is None:
        return p
    if f.share < cfg.fluid_min_share or f.thickness_mm <= 0:
        return p if p.present else dataclasses.replace(p, present_source="image")
    box = f.sac_box_voxels if cfg.fluid_box == "sac" else f.box_voxels
    return dataclasses.replace(
        p, present=True, size_mm=round(f.thickness_mm, 1), size_source="image",
        slices=(box[0], box[3]), box_voxels=box, laterality="none", location="pericardium",
        size_axes_mm=None, present_source="image")


def _measured(preds: Sequence[FindingPrediction]) -> dict[str, float]:
    """Label -> size of each present finding whose size was measured on the CT."""
    return {p.label: float(p.size_mm) for p in preds
            if p.present and p.size_source == "image" and p.size_mm}


def measured_sizes(preds: Sequence[FindingPrediction], ratio_labels: Sequence[str] = ()
                   ) -> dict[str, float]:
    """Label -> size (mm) of each present finding whose size was measured on the CT; the
    labels in ``ratio_labels`` (a ratio, not a length) are left out."""
    return {lab: v for lab, v in _measured(preds).items() if lab not in ratio_labels}


def measured_ratios(preds: Sequence[FindingPrediction], ratio_labels: Sequence[str]
                    ) -> dict[str, float]:
    """Label -> ratio of each present finding of ``ratio_labels`` measured on the CT."""
    return {lab: v for lab, v in _measured(preds).items() if lab in ratio_labels}
