"""The cardiothoracic ratio measured on the CT.

A called cardiomegaly's size is the cardiothoracic ratio (the heart's largest transverse width
over the thorax's largest inner width).  The size head regresses it to about 0.1; the decoder
writes a typical value.  This module measures it on the HU volume of the model grid
(:class:`multimodal.config.MeasureConfig`, ``ratio_labels``):

1. Lung: voxels below ``air_hu`` that are not connected, within their axial slice, to the
   air outside the body (a flood fill from the slice's border through all but the body's
   tissue, so the table's hollow core is not lung; :func:`lung_mask`).
2. Slices: those whose lung area is at least half the largest slice's (the bases, where the
   liver and the diaphragm lie between the lungs, are left out) and that have both lungs (the
   smaller side at least ``_MIN_SIDE_SHARE`` of the larger, either side of the body's
   midline).
   A chest that the grid's field of view cuts through (a large patient: on a slice with lung,
   a lateral edge column of the grid has an air stretch closed by tissue above and below, a
   lung opened by the cut) is not measured rather than measured wrong.
3. Thorax: on each such slice the width of the lungs' outer extent (left to right); its
   largest value is the inner thoracic width.
4. Heart: on each row of the anterior 60 % of the lungs' extent, the non-lung stretch that
   has lung on both sides (the mediastinum on that row); the heart's width on the row is the
   extent of the soft tissue (-30 to 500 HU: not fat, not bone) inside it; the
   largest over rows and slices is the heart's transverse width.

A measurement is taken only if the ratio lies in ``ratio_range``.  Everything is numpy on
the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from multimodal.errors import ShapeError

_SOFT_MAX_HU = 500.0  # above: bone or contrast-dense bone marrow
_MIN_SOFT_HU = -30.0  # below: fat
_ANTERIOR = 0.6  # share of the lungs' antero-posterior extent searched for the heart
_MIN_SIDE_SHARE = 0.3  # a slice has both lungs: the smaller side's area over the larger's
#: a slice's piece of tissue at least this share of its largest is the patient's body
_BODY_PIECE_SHARE = 0.25


@dataclass(frozen=True)
class CardiacMeasurement:
    """The cardiothoracic ratio of one CT."""

    ratio: float
    heart_width_mm: float
    thoracic_width_mm: float
    heart_slice: int  # z index of the model grid where the heart is widest
    thoracic_slice: int  # z index where the thorax is widest


def components(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """(N, Y, X) bool -> labels: 0 outside, each 4-connected piece of a slice its own number
    (unique over all slices, not consecutive).  The straight runs along x are the nodes; runs
    of adjacent rows of a slice that share a column are joined (label propagation to the
    smallest run number, with pointer jumping, until nothing changes)."""
    m = np.ascontiguousarray(mask, dtype=bool)
    if m.ndim != 3:
        raise ShapeError(f"mask must be (N, Y, X), got shape {m.shape}")
    start = m.copy()
    start[..., 1:] &= ~m[..., :-1]  # a run begins here (every row's first column included)
    run = np.cumsum(start.ravel(), dtype=np.int64).reshape(m.shape)  # 1.. where m
    n = int(run.flat[-1]) if m.size else 0
    both = m[:, 1:, :] & m[:, :-1, :]  # the same column of two adjacent rows
    pair = run[:, :-1, :] * (n + 1) + run[:, 1:, :]  # (N, Y-1, X) the two rows' runs
    # along x a pair repeats while both runs go on: its first column stands for the rest
    first = both.copy()
    first[..., 1:] &= ~(both[..., :-1] & (pair[..., 1:] == pair[..., :-1]))
    key = np.unique(pair[first])
    a, b = key // (n + 1), key % (n + 1)  # joined runs
    lab = join_labels(np.arange(n + 1, dtype=np.int64), a, b)  # each run's root run
    out: npt.NDArray[np.int64] = np.where(m, lab[run], 0)
    return out


def join_labels(labels: npt.NDArray[np.int64], a: npt.NDArray[np.int64],
                b: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``labels`` (each label's own number, ``arange``) with the pairs ``(a[i], b[i])``
    joined: per label, the smallest label it is joined to, directly or through others (label
    propagation to the smallest number, with pointer jumping, until nothing changes)."""
    lab = labels
    while a.size:
        la, lb = lab[a], lab[b]
        low = np.minimum(la, lb)
        new = lab.copy()
        np.minimum.at(new, la, low)  # hook both roots onto the smaller label
        np.minimum.at(new, lb, low)
        while True:  # pointer jumping: every label straight to its root
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, lab):
            break
        lab = new
    return lab


def _body(hu: npt.NDArray[np.floating], air_hu: float) -> npt.NDArray[np.bool_]:
    """(Z, Y, X) the patient's body on each axial slice: its pieces of tissue (``air_hu`` or
    denser, 4-connected) at least :data:`_BODY_PIECE_SHARE` of the slice's largest (a body
    wider than the field of view comes in two halves); the table, arms and other small pieces
    are left out."""
    lab = components(np.asarray(hu >= air_hu))
    size = np.bincount(lab.ravel())
    size[0] = 0
    piece = size[lab.reshape(lab.shape[0], -1)]  # (Z, Y*X): each voxel's piece's size
    body: npt.NDArray[np.bool_] = (piece > 0) \
        & (piece >= _BODY_PIECE_SHARE * piece.max(1, keepdims=True))
    return body.reshape(lab.shape)


def lung_mask(hu: npt.NDArray[np.floating], air_hu: float, lateral: bool = True
              ) -> npt.NDArray[np.bool_]:
    """(Z, Y, X) voxels below ``air_hu`` enclosed by the body within their axial slice: not in
    a 4-connected piece of everything but the body (:func:`_body`) that reaches the slice's
    border.  Air that other tissue encloses (the table's hollow core, air between an arm and
    the chest) is reached through that tissue and is not lung.  With ``lateral`` False only
    the anterior and posterior borders count: a lung that the field of view cuts at its left
    or right edge stays lung (the air beside the body still reaches those borders)."""
    return body_and_lungs(hu, air_hu, lateral)[1]


def body_and_lungs(hu: npt.NDArray[np.floating], air_hu: float, lateral: bool = True
                   ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(Z, Y, X) the body (:func:`_body`) and the lungs (:func:`lung_mask`) of one scan, the
    body labelled once for both."""
    air = np.asarray(hu < air_hu)
    body = _body(hu, air_hu)
    lab = components(~body)
    edges = [lab[:, 0, :], lab[:, -1, :]]
    if lateral:
        edges += [lab[:, :, 0], lab[:, :, -1]]
    outside = np.unique(np.concatenate([e.ravel() for e in edges]))
    out: npt.NDArray[np.bool_] = air & ~np.isin(lab, outside[outside > 0])
    return body, out


def _runs(row: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """[start, end) of each stretch of True in a 1-D mask."""
    d = np.diff(np.concatenate(([0], row.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(),
                    strict=True))


def _cut_off(air: npt.NDArray[np.bool_], rows: tuple[int, int]) -> bool:
    """One slice's (Y, X) air mask: does a lateral edge column of the grid cross a lung (an
    air stretch of 3 voxels or more with tissue above and below it, mostly within the
    ``rows`` [first, last] the slice's lungs span; the air between the back and the table
    lies below them)?"""
    y_end = air.shape[0]
    for x in (0, air.shape[1] - 1):
        for a, b in _runs(air[:, x]):
            inside = min(b, rows[1] + 1) - max(a, rows[0])
            if a > 0 and b < y_end and b - a >= 3 and inside >= 0.5 * (b - a):
                return True
    return False


def flanking_lung(lung: npt.NDArray[np.bool_]
                  ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(..., X) lung mask -> per voxel the x of the nearest lung voxel at or to its left (-1:
    none) and at or to its right (X: none), along its row."""
    x_end = lung.shape[-1]
    xs = np.arange(x_end)
    left = np.maximum.accumulate(np.where(lung, xs, -1), axis=-1)
    right = np.minimum.accumulate(np.where(lung, xs, x_end)[..., ::-1], axis=-1)[..., ::-1]
    return left, right


def body_midline(hu: npt.NDArray[np.floating], air_hu: float) -> float:
    """The body's midline (x, voxels): the centroid column of everything denser than air."""
    col = (hu >= air_hu).sum((0, 1)).astype(np.float64)
    return float((col * np.arange(col.size)).sum() / max(col.sum(), 1.0))


def chest_slices(lung: npt.NDArray[np.bool_], mid: int) -> npt.NDArray[np.int64]:
    """The z of the slices with both lungs (the smaller side, either side of column ``mid``,
    at least ``_MIN_SIDE_SHARE`` of the larger) and at least half the largest lung area."""
    area = lung.sum((1, 2))
    right, left = lung[:, :, :mid].sum((1, 2)), lung[:, :, mid:].sum((1, 2))
    both = np.minimum(right, left) >= _MIN_SIDE_SHARE * np.maximum(right, left)
    return np.flatnonzero((area >= 0.5 * area.max()) & both & (area > 0))


def _heart_width(lung: npt.NDArray[np.bool_], soft: npt.NDArray[np.bool_]) -> int:
    """Widest soft-tissue extent (voxels) inside a between-the-lungs stretch of one slice's
    anterior rows (y: anterior first, DICOM LPS): per row, the non-lung voxels with lung on
    both sides, grouped by the lung voxel that closes their stretch on the left."""
    ys = np.flatnonzero(lung.any(1))
    y0 = int(ys[0])
    rows = lung[y0: y0 + int(_ANTERIOR * (ys[-1] - ys[0] + 1))]  # (R, X)
    x_end = rows.shape[1]
    left, right = flanking_lung(rows)
    r, x = np.nonzero(~rows & (left >= 0) & (right < x_end) & soft[y0: y0 + rows.shape[0]])
    if r.size == 0:
        return 0
    _keys, stretch = np.unique(r * (x_end + 1) + left[r, x], return_inverse=True)
    lo = np.full(_keys.size, x_end)
    hi = np.full(_keys.size, -1)
    np.minimum.at(lo, stretch, x)
    np.maximum.at(hi, stretch, x)
    return int((hi - lo).max()) + 1


def cardiothoracic_ratio(hu: npt.NDArray[np.floating], spacing_mm: Sequence[float],
                         air_hu: float = -400.0, ratio_range: tuple[float, float] = (0.3, 0.85)
                         ) -> CardiacMeasurement | None:
    """The cardiothoracic ratio of a (Z, Y, X) HU volume with ``spacing_mm`` (z, y, x), or
    None where no lung is found or the ratio falls outside ``ratio_range``."""
    if hu.ndim != 3:
        raise ShapeError(f"hu must be (Z, Y, X), got shape {hu.shape}")
    if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
        raise ValueError(f"spacing_mm must be three positive values (z, y, x), got "
                         f"{tuple(spacing_mm)}")
    lung = lung_mask(hu, air_hu)
    area = lung.sum((1, 2))
    if int(area.max()) == 0:
        return None
    air = hu < air_hu
    for z in np.flatnonzero(area > 0).tolist():
        ys = np.flatnonzero(lung[z].any(1))
        if _cut_off(air[z], (int(ys[0]), int(ys[-1]))):
            return None  # the field of view cuts through the chest: its width is not known
    soft = (hu > _MIN_SOFT_HU) & (hu < _SOFT_MAX_HU)
    sx = float(spacing_mm[2])
    thorax = (0.0, -1)
    heart = (0.0, -1)
    for z in chest_slices(lung, round(body_midline(hu, air_hu))).tolist():
        xs = np.flatnonzero(lung[z].any(0))
        thorax = max(thorax, (float(xs[-1] - xs[0] + 1) * sx, z))
        heart = max(heart, (_heart_width(lung[z], soft[z]) * sx, z))
    if thorax[0] <= 0 or heart[0] <= 0:
        return None
    ratio = heart[0] / thorax[0]
    if not ratio_range[0] <= ratio <= ratio_range[1]:
        return None
    return CardiacMeasurement(ratio, heart[0], thorax[0], heart[1], thorax[1])
