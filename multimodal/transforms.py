"""MONAI-style transforms: array transforms and dictionary ``...d`` versions.

Dictionary samples look like ``{"ct": (z, y, x) HU array, "ct_spacing": (sz, sy, sx),
"emr": str}``.  A missing modality is absent (or ``None``) and stays so: with
``allow_missing_keys`` the transform skips it, otherwise it raises
:class:`~multimodal.errors.ModalityError`.  Nothing is ever zero-filled, and inputs are never
mutated (every transform returns a new dict / array).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor

from multimodal.errors import ModalityError, ShapeError
from multimodal.tokenizer import WordTokenizer

F32 = npt.NDArray[np.float32]


def centre_start(size: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """Per axis, the voxel of an array of ``size`` at voxel 0 of a centred ``shape`` (negative
    where ``shape`` is larger and pads before it)."""
    return tuple((n - m) // 2 if n >= m else -((m - n) // 2)
                 for n, m in zip(size, shape, strict=True))


def crop_or_pad(a: F32, shape: Sequence[int], pad: float,
                start: Sequence[int] | None = None) -> F32:
    """Crop / pad a 3D array to ``shape``: the output's voxel 0 is ``a``'s voxel ``start``
    along each axis (negative: padding before it); the centre by default."""
    if start is None:
        start = centre_start(a.shape, shape)
    out = np.full(tuple(shape), pad, dtype=np.float32)
    src, dst = [], []
    for n, m, s in zip(a.shape, shape, start, strict=True):
        lo, hi = max(s, 0), min(s + m, n)  # the part of a inside the output
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = a[tuple(src)]
    return out


@dataclass(frozen=True)
class GridPlacement:
    """Where the model grid lies on a resampled scan, and how much of the lungs it holds.

    ``start``: the resampled scan's voxel at the grid's voxel 0 per axis (z, y, x; negative
    where the grid pads before the scan).  ``lung_slices``: the lungs' first and last slice in
    the resampled scan (None where no lung was found).  ``lung_in_grid``: the share of the lung
    voxels inside the grid (1.0 without lungs), and ``grid_cuts_lung`` where the grid leaves
    some out ("inferior", "superior", "in-plane": its in-plane field, fixed in mm, narrower
    than a large chest).  ``scan_cuts_lung``: the scan's own ends that cut through the lungs
    ("inferior": its first slice, "superior": its last), so that part of the chest was not
    imaged at all.  ``lung_in_z``: the share in the grid's slices, in-plane losses left
    aside (what the move looks at).  ``lung_ml``: the lungs' volume in the scan (0 where no
    lung was found; a chest CT holds litres).  ``midline_air``: on the slices with the most
    lung (half the largest area or more), the median share of the body's midline that is
    "lung" (:func:`midline_air`): a chest has its mediastinum there, an air-filled phantom or
    object does not."""

    start: tuple[int, int, int]
    lung_slices: tuple[int, int] | None = None
    lung_in_grid: float = 1.0
    scan_cuts_lung: tuple[str, ...] = ()
    grid_cuts_lung: tuple[str, ...] = ()
    lung_in_z: float = 1.0
    lung_ml: float = 0.0
    midline_air: float = 0.0


_LUNG_AIR_HU = -400.0  # below: air or lung
_LUNG_RUN_SHARE = 0.02  # a slice is in the lungs' run with this share of the largest area
_SCAN_CUT_SHARE = 0.1  # lung on the scan's end slice with this share of the largest area
_CHEST_SLICE_SHARE = 0.5  # the slices with the most lung: this share of the largest area
_MIDLINE_BAND = 0.05  # the body's midline: this share of its width on the slice


def midline_air(lung: npt.NDArray[np.bool_], body: npt.NDArray[np.bool_]) -> float:
    """(Z, Y, X) lung and body masks of one scan -> on the slices whose lung area is at least
    half the largest, the median over slices of the share of the body's midline that is lung:
    the columns within :data:`_MIDLINE_BAND` of the body's width around its middle (the
    centre of its left and right edges on that slice), from its front to its back.  A
    chest's midline is mostly mediastinum (0.05 on the generated chests, 0.21 on the shared
    real A0001: ``bench/placement.py``); the air inside a hollow phantom or object crosses
    it.  0.0 without lung."""
    area = lung.sum(axis=(1, 2))
    if area.max(initial=0) == 0:
        return 0.0
    shares = []
    for z in np.flatnonzero(area >= _CHEST_SLICE_SHARE * area.max()):
        cols = np.flatnonzero(body[z].any(axis=0))
        if cols.size == 0:
            continue
        half = max(1, round(_MIDLINE_BAND * (cols[-1] - cols[0] + 1) / 2))
        mid = (int(cols[0]) + int(cols[-1])) // 2
        band = slice(max(mid - half, 0), mid + half + 1)
        rows = np.flatnonzero((body[z, :, band] | lung[z, :, band]).any(axis=1))
        inside = slice(int(rows[0]), int(rows[-1]) + 1)
        shares.append(float(lung[z, inside, band].mean()))
    return round(float(np.median(shares)), 4) if shares else 0.0


def place_grid(a: F32, shape: Sequence[int], placement: str = "lungs",
               max_loss: float = 0.0, voxel_ml: float = 0.0) -> GridPlacement:
    """Where to put a grid of ``shape`` on the resampled scan ``a`` (z, y, x ascending, z
    towards the head).  ``"centre"``: the scan's centre.  ``"lungs"``: the centre too, unless
    that leaves more than ``max_loss`` of the lungs outside along z (a scan longer than the
    grid: a chest and abdomen, a large patient); then the grid moves along z as little as it
    takes to hold them, or is centred on them where they are longer than the grid.  In-plane
    the grid stays centred (the scan's field of view is centred on the patient; the
    laterality rules read the body's midline).

    The lungs: air inside the body (:func:`multimodal.cardiac.lung_mask`, filled from the
    anterior and posterior borders, so that a lung the scan's field of view cuts at its side
    stays lung) on the run of slices around the largest lung area whose area is at least 2 %
    of it (gas in the bowel below is left out).  The move looks at the lungs along z only;
    the share reported counts what the in-plane field leaves out too.  ``voxel_ml``: the
    volume of one voxel of ``a`` (for ``lung_ml``)."""
    from multimodal.cardiac import body_and_lungs

    if placement not in ("centre", "lungs"):
        raise ValueError(f"placement must be 'centre' or 'lungs', got {placement!r}")
    if not 0.0 <= max_loss < 1.0:
        raise ValueError(f"max_loss must be in [0, 1), got {max_loss!r}")
    centre = centre_start(a.shape, shape)
    body, lung = body_and_lungs(a, _LUNG_AIR_HU, lateral=False)
    area = lung.sum(axis=(1, 2))
    if area.max(initial=0) == 0:
        return GridPlacement(start=(centre[0], centre[1], centre[2]))
    top = int(np.argmax(area))
    keep = area >= _LUNG_RUN_SHARE * area[top]
    k0 = top
    while k0 > 0 and keep[k0 - 1]:
        k0 -= 1
    k1 = top
    while k1 < len(area) - 1 and keep[k1 + 1]:
        k1 += 1
    # the scan's end slice within the lungs' run, with lung on it (not bowel gas below them)
    cut = tuple(name for name, k, end in (("inferior", k0, 0), ("superior", k1, len(area) - 1))
                if k == end and area[end] >= _SCAN_CUT_SHARE * area[top])
    g, n = int(shape[0]), a.shape[0]
    total = float(area[k0:k1 + 1].sum())

    def held(z: int) -> float:  # the share of the lungs inside the grid starting at z
        lo, hi = max(z, k0), min(z + g, k1 + 1)
        return float(area[lo:hi].sum()) / total if hi > lo else 0.0

    z = centre[0]
    if placement == "lungs" and n > g and held(z) < 1.0 - max_loss:
        if k1 - k0 + 1 > g:  # longer than the grid: centred on them
            z = (k0 + k1 + 1) // 2 - g // 2
        elif k0 < z:  # cut below: the grid starts at their lowest slice
            z = k0
        else:  # cut above: the grid ends at their highest slice
            z = k1 - g + 1
        z = min(max(z, 0), n - g)
    # the lungs inside the grid's in-plane field, per slice of its z range
    y0, x0 = max(centre[1], 0), max(centre[2], 0)
    zs = slice(max(z, k0), max(min(z + g, k1 + 1), max(z, k0)))
    inside = float(lung[zs, y0:centre[1] + int(shape[1]), x0:centre[2] + int(shape[2])].sum())
    grid_cuts = tuple(name for name, c in (
        ("inferior", z > k0), ("superior", z + g - 1 < k1),
        ("in-plane", inside < float(area[zs].sum()))) if c)
    return GridPlacement(start=(z, centre[1], centre[2]), lung_slices=(k0, k1),
                         lung_in_grid=round(inside / total, 4), scan_cuts_lung=cut,
                         grid_cuts_lung=grid_cuts, lung_in_z=round(held(z), 4),
                         lung_ml=round(total * voxel_ml, 1),
                         midline_air=midline_air(lung, body))


class ResampleToGrid:
    """Resample a (z, y, x) HU volume from ``spacing`` to ``target_spacing`` (trilinear,
    centre-aligned) and crop / pad it to ``target_shape`` (padding with ``pad_hu``), the grid
    placed by :func:`place_grid` (``placement``: "centre", or "lungs": the centre unless that
    leaves more than ``max_loss`` of the lungs out along z)."""

    def __init__(self, target_spacing: Sequence[float], target_shape: Sequence[int],
                 pad_hu: float = -1024.0, placement: str = "centre",
                 max_loss: float = 0.0) -> None:
        if len(target_spacing) != 3 or len(target_shape) != 3:
            raise ShapeError("target_spacing and target_shape need 3 values")
        if placement not in ("centre", "lungs"):
            raise ValueError(f"placement must be 'centre' or 'lungs', got {placement!r}")
        self.target_spacing = tuple(float(s) for s in target_spacing)
        self.target_shape = tuple(int(s) for s in target_shape)
        if not 0.0 <= max_loss < 1.0:
            raise ValueError(f"max_loss must be in [0, 1), got {max_loss!r}")
        self.pad_hu = pad_hu
        self.placement = placement
        self.max_loss = max_loss

    def __call__(self, hu: npt.ArrayLike, spacing: Sequence[float]) -> F32:
        return self.place(hu, spacing)[0]

    def place(self, hu: npt.ArrayLike, spacing: Sequence[float]
              ) -> tuple[F32, GridPlacement]:
        """The volume on the grid and where the grid lies on the resampled scan."""
        a = np.asarray(hu, dtype=np.float32)
        if a.ndim != 3 or len(spacing) != 3 or min(a.shape) < 1:
            raise ShapeError(f"expected a (z, y, x) volume and 3 spacings, got {a.shape}")
        if any(s <= 0 for s in spacing):
            raise ShapeError(f"spacing must be > 0, got {tuple(spacing)}")
        size = tuple(max(1, round(n * s / t))
                     for n, s, t in zip(a.shape, spacing, self.target_spacing, strict=True))
        if size != a.shape:
            # a read-only view (a flipped scan) is copied: torch needs a writable array
            t = torch.from_numpy(np.require(a, requirements=["C", "W"]))[None, None]
            a = F.interpolate(t, size=size, mode="trilinear", align_corners=False)[0, 0].numpy()
        where = place_grid(a, self.target_shape, self.placement, self.max_loss,
                           voxel_ml=math.prod(self.target_spacing) / 1000.0)
        return crop_or_pad(a, self.target_shape, self.pad_hu, where.start), where


class MultiWindow:
    """(z, y, x) HU -> (C, z, y, x) float32 in [0, 1], one channel per (centre, width)."""

    def __init__(self, windows: Sequence[tuple[float, float]]) -> None:
        if not windows or any(w <= 0 for _c, w in windows):
            raise ShapeError("windows must be (centre, width > 0) pairs")
        self.windows = tuple((float(c), float(w)) for c, w in windows)

    def __call__(self, hu: npt.ArrayLike) -> F32:
        a = np.asarray(hu, dtype=np.float32)
        if a.ndim != 3:
            raise ShapeError(f"expected a (z, y, x) volume, got shape {a.shape}")
        chans = [np.clip((a - (c - w / 2)) / w, 0.0, 1.0) for c, w in self.windows]
        return np.stack(chans).astype(np.float32)


def _gauss(sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2.0 * sigma * sigma))
    return g / g.sum()


def gaussian_smooth(a: torch.Tensor, sd_voxels: Sequence[float]) -> torch.Tensor:
    """(1, 1, Z, Y, X) smoothed by a separable Gaussian of ``sd_voxels`` (z, y, x) voxels,
    edges replicated; an axis whose SD is below 0.3 voxel is left as it is."""
    for ax in range(3):
        sd = float(sd_voxels[ax])
        if sd < 0.3:
            continue
        k = _gauss(sd)
        n = k.numel()
        shape = [1, 1, 1, 1, 1]
        shape[2 + ax] = n
        pad = [0] * 6
        pad[2 * (2 - ax)] = pad[2 * (2 - ax) + 1] = n // 2
        a = F.conv3d(F.pad(a, pad, mode="replicate"), k.view(shape))
    return a


class BlobEnhance:
    """(z, y, x) HU -> (S, z, y, x) float32 in [0, 1]: one dot-enhancement channel per scale.

    At scale s (mm) the HU volume, clipped to ``hu_range`` and divided by 1000, is smoothed
    by a Gaussian of SD s mm along each axis (in voxels: s / spacing; none below 0.3 voxel),
    and the Hessian is taken by central differences in mm and normalised by s^2.  The
    response is the cube root of minus its determinant where all three curvatures are
    negative (determinant and trace below zero), else 0: the determinant-of-Hessian blob
    detector (Lindeberg), restricted to bright blobs.  A bright sphere of radius about
    s * sqrt(3) responds most; a tube (one curvature near 0) and a plate (two) hardly do,
    which is what sets a nodule apart from a vessel seen in cross-section.  The channel is
    the response divided by ``full_scale``, clipped to [0, 1].
    """

    def __init__(self, spacing_mm: Sequence[float], scales_mm: Sequence[float],
                 full_scale: float = 0.25,
                 hu_range: tuple[float, float] = (-1000.0, 200.0)) -> None:
        sp = tuple(float(s) for s in spacing_mm)
        if len(sp) != 3 or any(s <= 0 for s in sp):
            raise ShapeError(f"spacing_mm must be 3 values > 0, got {tuple(spacing_mm)}")
        if not scales_mm or any(s <= 0 for s in scales_mm):
            raise ShapeError(f"scales_mm must be values > 0, got {tuple(scales_mm)}")
        if full_scale <= 0 or hu_range[1] <= hu_range[0]:
            raise ShapeError(f"bad full_scale {full_scale} or hu_range {hu_range}")
        self.spacing = sp
        self.scales = tuple(float(s) for s in scales_mm)
        self.full_scale = float(full_scale)
        self.hu_range = (float(hu_range[0]), float(hu_range[1]))

    def _smooth(self, a: torch.Tensor, scale: float) -> torch.Tensor:
        # a: (1, 1, Z, Y, X), separable along z, y, x
        return gaussian_smooth(a, [scale / s for s in self.spacing])

    def response(self, hu: npt.ArrayLike, scale: float) -> torch.Tensor:
        """The raw (unnormalised) response (z, y, x) at one scale (mm)."""
        lo, hi = self.hu_range
        a = torch.as_tensor(np.asarray(hu, dtype=np.float32)).clamp(lo, hi) / 1000.0
        a = self._smooth(a[None, None], scale)
        p = F.pad(a, (1, 1, 1, 1, 1, 1), mode="replicate")[0, 0]  # (Z + 2, Y + 2, X + 2)
        z, y, x = a.shape[2:]

        def at(dz: int, dy: int, dx: int) -> torch.Tensor:
            return p[1 + dz:1 + dz + z, 1 + dy:1 + dy + y, 1 + dx:1 + dx + x]

        hz, hy, hx = self.spacing
        c2 = 2.0 * at(0, 0, 0)
        s2 = scale * scale
        dzz = (at(1, 0, 0) - c2 + at(-1, 0, 0)) * (s2 / hz**2)
        dyy = (at(0, 1, 0) - c2 + at(0, -1, 0)) * (s2 / hy**2)
        dxx = (at(0, 0, 1) - c2 + at(0, 0, -1)) * (s2 / hx**2)
        dzy = (at(1, 1, 0) - at(1, -1, 0) - at(-1, 1, 0) + at(-1, -1, 0)) * (s2 / (4 * hz * hy))
        dzx = (at(1, 0, 1) - at(1, 0, -1) - at(-1, 0, 1) + at(-1, 0, -1)) * (s2 / (4 * hz * hx))
        dyx = (at(0, 1, 1) - at(0, 1, -1) - at(0, -1, 1) + at(0, -1, -1)) * (s2 / (4 * hy * hx))
        det = (dzz * (dyy * dxx - dyx * dyx) - dzy * (dzy * dxx - dyx * dzx)
               + dzx * (dzy * dyx - dyy * dzx))
        bright = (det < 0) & (dzz + dyy + dxx < 0)
        return torch.where(bright, (-det).clamp_min(0.0).pow(1.0 / 3.0), 0.0)

    def __call__(self, hu: npt.ArrayLike) -> F32:
        a = np.asarray(hu, dtype=np.float32)
        if a.ndim != 3:
            raise ShapeError(f"expected a (z, y, x) volume, got shape {a.shape}")
        if min(a.shape) < 2:
            raise ShapeError(f"the volume needs >= 2 voxels along each axis, got {a.shape}")
        with torch.no_grad():
            out = [(self.response(a, s) / self.full_scale).clamp(0.0, 1.0).numpy()
                   for s in self.scales]
        return np.stack(out).astype(np.float32)


def ct_channels(hu: npt.ArrayLike, windows: Sequence[tuple[float, float]],
                spacing_mm: Sequence[float], blob_scales_mm: Sequence[float] = (),
                blob_full_scale: float = 0.25) -> F32:
    """(z, y, x) HU on the model grid -> (C, z, y, x) model input: the :class:`MultiWindow`
    channels, then (with ``blob_scales_mm``) the :class:`BlobEnhance` channels."""
    ch = MultiWindow(windows)(hu)
    if not blob_scales_mm:
        return ch
    blob = BlobEnhance(spacing_mm, blob_scales_mm, blob_full_scale)(hu)
    return np.concatenate([ch, blob]).astype(np.float32)


_REDUCE: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mean": torch.add, "max": torch.maximum, "min": torch.minimum}


def block_stats(ct: Tensor, block: tuple[int, int, int], stats: Sequence[str]) -> Tensor:
    """(B, C, Z, Y, X) -> (B, C * len(stats), Z/bz, Y/by, X/bx): each non-overlapping block
    summarised by ``stats`` ("mean", "max", "min"), window-major channel order.

    The blocks are reduced one axis at a time (z, y, x) over the strided slices i, i + b, ...,
    the reduction of :class:`BlockPool` (the training storage) and of the CT stem at
    inference (:meth:`multimodal.stems.CTStem.pool`), so a drafted volume is pooled to the
    same float values as a training case; 0.0020 s against 0.0179 s for ``avg_pool3d`` + two
    ``max_pool3d`` on the demo grid here (``bench/model.py --only latency``: ``pool_s``,
    ``native_pool_s``)."""
    if ct.ndim != 5 or any(n % b for n, b in zip(ct.shape[2:], block, strict=True)):
        raise ShapeError(f"expected (B, C, Z, Y, X) divisible by {block}, "
                         f"got {tuple(ct.shape)}")
    bad = [s for s in stats if s not in _REDUCE]
    if bad or not stats:
        raise ShapeError(f"unknown block statistics {bad or list(stats)}: use mean, max, min")
    outs = []
    for st in stats:
        v = ct
        for ax, b in zip((2, 3, 4), block, strict=True):
            if b == 1:
                continue
            shape = list(v.shape)
            parts = v.reshape(*shape[:ax], shape[ax] // b, b, *shape[ax + 1:]).unbind(ax + 1)
            acc = parts[0]
            for part in parts[1:]:
                acc = _REDUCE[st](acc, part)
            v = acc
        outs.append(v / float(block[0] * block[1] * block[2]) if st == "mean" else v)
    return torch.stack(outs, 2).flatten(1, 2)  # (B, C, S, z, y, x) -> (B, C * S, z, y, x)



class BlockPool:
    """(C, Z, Y, X) -> (C * S, Z/bz, Y/by, X/bx) float32: each non-overlapping block summarised
    by the statistics ``stats`` ("mean", "max", "min"), window-major channel order; the
    reduction of :meth:`multimodal.stems.CTStem.pool` (:func:`block_stats`), done once per
    case (training stores the pooled volume instead of pooling it again at every step)."""

    def __init__(self, block: tuple[int, int, int], stats: Sequence[str]) -> None:
        if any(b < 1 for b in block) or not stats or \
                any(st not in ("mean", "max", "min") for st in stats):
            raise ShapeError(f"bad block {block} or statistics {tuple(stats)}")
        self.block, self.stats = block, tuple(stats)

    def __call__(self, ct: npt.ArrayLike) -> F32:
        a = np.asarray(ct, dtype=np.float32)
        if a.ndim != 4:
            raise ShapeError(f"expected (C, Z, Y, X) divisible by {self.block}, got {a.shape}")
        with torch.no_grad():
            out = block_stats(torch.from_numpy(np.ascontiguousarray(a))[None], self.block,
                              self.stats)[0]
        return np.asarray(out.numpy(), dtype=np.float32)


class TokenizeText:
    """str -> (ids int64 (T,), spans int64 (T, 2)), truncated to ``max_tokens``."""

    def __init__(self, tokenizer: WordTokenizer, max_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    def __call__(self, text: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        if not isinstance(text, str):
            raise ModalityError(f"EMR must be text, got {type(text).__name__}")
        ids, spans = self.tokenizer.encode(text)
        ids, spans = ids[: self.max_tokens], spans[: self.max_tokens]
        return (np.asarray(ids, dtype=np.int64),
                np.asarray(spans, dtype=np.int64).reshape(-1, 2))


class MapTransformd(ABC):
    """Base of the dictionary transforms: applies to ``keys``; handles missing keys."""

    def __init__(self, keys: Sequence[str], allow_missing_keys: bool = False) -> None:
        self.keys = tuple(keys)
        self.allow_missing_keys = allow_missing_keys

    def present(self, data: Mapping[str, Any], key: str) -> bool:
        if data.get(key) is not None:
            return True
        if not self.allow_missing_keys:
            raise ModalityError(f"modality {key!r} is missing (allow_missing_keys=False)")
        return False

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(data)
        for k in self.keys:
            if self.present(data, k):
                out.update(self.apply(k, data))
        return out

    @abstractmethod
    def apply(self, key: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """The new entries for ``key`` (computed from ``data``, never mutating it)."""


class ResampleToGridd(MapTransformd):
    """Reads ``{key}_spacing``; writes the resampled volume and ``{key}_spacing`` = target."""

    def __init__(self, keys: Sequence[str], target_spacing: Sequence[float],
                 target_shape: Sequence[int], pad_hu: float = -1024.0,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.t = ResampleToGrid(target_spacing, target_shape, pad_hu)

    def apply(self, key: str, data: Mapping[str, Any]) -> dict[str, Any]:
        sp = data.get(f"{key}_spacing")
        if sp is None:
            raise ModalityError(f"{key}_spacing is required to resample {key!r}")
        return {key: self.t(data[key], sp), f"{key}_spacing": self.t.target_spacing}


class MultiWindowd(MapTransformd):
    def __init__(self, keys: Sequence[str], windows: Sequence[tuple[float, float]],
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.t = MultiWindow(windows)

    def apply(self, key: str, data: Mapping[str, Any]) -> dict[str, Any]:
        return {key: self.t(data[key])}


class BlobEnhanced(MapTransformd):
    """Writes ``{key}_blob`` (:class:`BlobEnhance` of the HU volume under ``key``); keeps the
    HU volume."""

    def __init__(self, keys: Sequence[str], spacing_mm: Sequence[float],
                 scales_mm: Sequence[float], full_scale: float = 0.25,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.t = BlobEnhance(spacing_mm, scales_mm, full_scale)

    def apply(self, key: str, data: Mapping[str, Any]) -> dict[str, Any]:
        return {f"{key}_blob": self.t(data[key])}


class TokenizeTextd(MapTransformd):
    """Writes ``{key}_ids`` and ``{key}_spans``; keeps the text under ``key``."""

    def __init__(self, keys: Sequence[str], tokenizer: WordTokenizer, max_tokens: int,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.t = TokenizeText(tokenizer, max_tokens)

    def apply(self, key: str, data: Mapping[str, Any]) -> dict[str, Any]:
        ids, spans = self.t(data[key])
        return {f"{key}_ids": ids, f"{key}_spans": spans}


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Mapping[str, Any]], dict[str, Any]]]
                 ) -> None:
        self.transforms = tuple(transforms)

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(data)
        for t in self.transforms:
            out = t(out)
        return out
