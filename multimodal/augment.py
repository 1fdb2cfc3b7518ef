"""Training augmentation: the same chest at another patient size (isotropic zoom), and at
another place in-plane (a shift, as a patient lies higher or lower on the table).

On the fixed physical grid a larger patient is a magnified chest, and the finding sizes grow
with it.  :class:`RandZoom` magnifies (factor > 1) or shrinks a (z, y, x) HU volume and its
label map about the grid centre by the same factor on every axis (isotropic in mm, whatever
the voxel spacing), by trilinear (HU) and nearest (labels) interpolation; in-plane the
surround is air, along z the edge slices continue (a scan is cut from a longer body).  Each
case draws its own factor with a generator seeded by the case, so a training run and its
resume see the same volumes.  MONAI-style: inputs are never mutated, and
:class:`RandZoomd` leaves a missing CT missing.

:class:`RandShift` moves the volume and its label map in-plane by whole voxels (up to
``shift_mm`` along y and along x, air coming in): the generated chests all lie at the grid's
centre, and a findings head trained on them reads a body 33 mm off it as consolidated
(``bench/position.py``, docs/model.md "Thirtieth round").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from multimodal.errors import ModelConfigError, ShapeError
from multimodal.transforms import MapTransformd

F32 = npt.NDArray[np.float32]
AIR = -1024.0


@dataclass(frozen=True)
class AugmentConfig:
    """``p`` 0 (or an empty zoom range) turns augmentation off."""

    #: share of the training cases zoomed (the rest are used as generated)
    p: float = 0.0
    #: the zoom factor's range (drawn log-uniformly): > 1 a larger patient
    zoom: tuple[float, float] = (1.0, 1.0)
    #: a zoom (or shift) is kept only if every finding keeps this share of its voxels on the
    #: grid
    min_kept: float = 0.5
    seed: int = 0
    #: share of the training cases moved in-plane (after any zoom)
    shift_p: float = 0.0
    #: the largest move along y and along x (mm; drawn uniformly per axis, whole voxels)
    shift_mm: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "zoom", tuple(float(x) for x in self.zoom))
        if not 0.0 <= self.p <= 1.0:
            raise ModelConfigError(f"augment.p must be in [0, 1], got {self.p}")
        if len(self.zoom) != 2 or not 0.5 <= self.zoom[0] <= self.zoom[1] <= 2.0:
            raise ModelConfigError("augment.zoom must be [lo, hi] with 0.5 <= lo <= hi <= 2, "
                                   f"got {list(self.zoom)}")
        if not 0.0 <= self.min_kept <= 1.0:
            raise ModelConfigError(f"augment.min_kept must be in [0, 1], got {self.min_kept}")
        if not 0.0 <= self.shift_p <= 1.0:
            raise ModelConfigError(f"augment.shift_p must be in [0, 1], got {self.shift_p}")
        if not 0.0 <= self.shift_mm <= 200.0:
            raise ModelConfigError(f"augment.shift_mm must be in [0, 200], got "
                                   f"{self.shift_mm}")

    @property
    def zoom_active(self) -> bool:
        return self.p > 0.0 and self.zoom != (1.0, 1.0)

    @property
    def shift_active(self) -> bool:
        return self.shift_p > 0.0 and self.shift_mm > 0.0

    @property
    def active(self) -> bool:
        """Anything to do: a zoom or a shift."""
        return self.zoom_active or self.shift_active


def zoom_volume(hu: npt.ArrayLike, factor: float, labels: npt.ArrayLike | None = None
                ) -> tuple[F32, npt.NDArray[np.uint8] | None]:
    """(z, y, x) HU (and label map) magnified by ``factor`` about the grid centre; the same
    shape out.  Outside the source: air in-plane, the edge slice along z."""
    a = np.asarray(hu, np.float32)
    if a.ndim != 3:
        raise ShapeError(f"expected a (z, y, x) HU volume, got shape {a.shape}")
    if labels is not None and np.shape(labels) != a.shape:
        raise ShapeError(f"label map {np.shape(labels)} does not match the volume {a.shape}")
    if factor <= 0:
        raise ValueError(f"zoom factor must be > 0, got {factor}")
    z = a.shape[0]
    m = max(1, int(np.ceil(z * (1.0 / factor - 1.0) / 2.0)) + 1) if factor < 1 else 0
    # output voxel i samples the source at centre + (i - centre) / factor (align_corners)
    axes = []
    for n, pad in zip(a.shape, (m, 0, 0), strict=True):
        c = (n - 1) / 2.0
        src = c + (np.arange(n) - c) / factor + pad  # in the padded source's index
        axes.append(torch.from_numpy(2.0 * src / (n + 2 * pad - 1) - 1.0).float())
    gz, gy, gx = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack([gx, gy, gz], -1)[None]  # (1, z, y, x, 3), x first

    def sample(vol: npt.NDArray[Any], mode: str, shift: float) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(vol, np.float32) - shift)[None, None]
        if m:
            t = F.pad(t, (0, 0, 0, 0, m, m), mode="replicate")
        return F.grid_sample(t, grid, mode=mode, padding_mode="zeros",
                             align_corners=True)[0, 0] + shift

    out = sample(a, "bilinear", AIR).numpy().astype(np.float32)
    lab = None
    if labels is not None:
        lab = sample(np.asarray(labels), "nearest", 0.0).round().numpy().astype(np.uint8)
    return out, lab


class RandZoom:
    """(hu, label map or None, generator) -> (hu, label map, factor or None: left as is)."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def draw(self, rng: np.random.Generator) -> float | None:
        c = self.cfg
        if not c.zoom_active or rng.random() >= c.p:
            return None
        return float(np.exp(rng.uniform(np.log(c.zoom[0]), np.log(c.zoom[1]))))

    def __call__(self, hu: npt.ArrayLike, labels: npt.ArrayLike | None,
                 rng: np.random.Generator
                 ) -> tuple[F32, npt.NDArray[np.uint8] | None, float | None]:
        a = np.asarray(hu, np.float32)
        lab_in = None if labels is None else np.asarray(labels, np.uint8)
        f = self.draw(rng)
        if f is None:
            return _as_is(a, lab_in)
        out, lab = zoom_volume(a, f, lab_in)
        # voxel counts scale by f^3; a finding cut by the grid edge loses more
        if not _findings_kept(lab_in, lab, self.cfg.min_kept * min(f, 1.0) ** 3):
            return _as_is(a, lab_in)
        return out, lab, f


def _as_is(hu: F32, labels: npt.NDArray[np.uint8] | None
           ) -> tuple[F32, npt.NDArray[np.uint8] | None, None]:
    """A case left as it was: copies of its volume and label map, nothing drawn."""
    return hu.copy(), None if labels is None else labels.copy(), None


def _findings_kept(before: npt.NDArray[np.uint8] | None, after: npt.NDArray[np.uint8] | None,
                   share: float) -> bool:
    """Every finding of label map ``before`` keeps at least ``share`` of its voxel count in
    ``after`` (True without label maps)."""
    if before is None or after is None:
        return True
    return all((after == v).sum() >= share * (before == v).sum()
               for v in np.unique(before[before > 0]))


def shift_volume(hu: npt.ArrayLike, dy: int, dx: int, labels: npt.ArrayLike | None = None,
                 pad: float = AIR) -> tuple[F32, npt.NDArray[np.uint8] | None]:
    """(z, y, x) HU (and label map) moved by ``dy`` rows (+: towards the back) and ``dx``
    columns in-plane; the same shape out, ``pad`` HU (label 0) where nothing comes in."""
    a = np.asarray(hu, np.float32)
    if a.ndim != 3:
        raise ShapeError(f"expected a (z, y, x) HU volume, got shape {a.shape}")
    if labels is not None and np.shape(labels) != a.shape:
        raise ShapeError(f"label map {np.shape(labels)} does not match the volume {a.shape}")

    def span(d: int, n: int) -> tuple[slice, slice]:  # (source, destination)
        d = max(-n, min(n, d))
        return (slice(0, n - d), slice(d, n)) if d >= 0 else (slice(-d, n), slice(0, n + d))

    (ys, yd), (xs, xd) = span(dy, a.shape[1]), span(dx, a.shape[2])
    out = np.full(a.shape, pad, np.float32)
    out[:, yd, xd] = a[:, ys, xs]
    lab = None
    if labels is not None:
        lab = np.zeros(a.shape, np.uint8)
        lab[:, yd, xd] = np.asarray(labels, np.uint8)[:, ys, xs]
    return out, lab


class RandShift:
    """(hu, label map or None, generator) -> (hu, label map, (dy, dx) in voxels, or None: left
    as is); ``spacing_mm`` the grid's (z, y, x) voxel size."""

    def __init__(self, cfg: AugmentConfig, spacing_mm: Sequence[float]) -> None:
        if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
            raise ShapeError(f"spacing_mm must be 3 values > 0, got {tuple(spacing_mm)}")
        self.cfg = cfg
        self.spacing = tuple(float(s) for s in spacing_mm)

    def draw(self, rng: np.random.Generator) -> tuple[int, int] | None:
        c = self.cfg
        if not c.shift_active or rng.random() >= c.shift_p:
            return None
        dy, dx = (round(float(rng.uniform(-c.shift_mm, c.shift_mm)) / s)
                  for s in self.spacing[1:])
        return (dy, dx) if (dy, dx) != (0, 0) else None

    def __call__(self, hu: npt.ArrayLike, labels: npt.ArrayLike | None,
                 rng: np.random.Generator
                 ) -> tuple[F32, npt.NDArray[np.uint8] | None, tuple[int, int] | None]:
        a = np.asarray(hu, np.float32)
        lab_in = None if labels is None else np.asarray(labels, np.uint8)
        d = self.draw(rng)
        if d is None:
            return _as_is(a, lab_in)
        out, lab = shift_volume(a, d[0], d[1], lab_in)
        if not _findings_kept(lab_in, lab, self.cfg.min_kept):
            return _as_is(a, lab_in)
        return out, lab, d


def case_rng(seed: int, data_seed: int, index: int) -> np.random.Generator:
    """The generator of training case ``index``: the same draw in every run and on resume."""
    return np.random.default_rng([seed, data_seed, index])


class _RandMapd(MapTransformd):
    """Applies the array transform ``t`` ((hu, label map, generator) -> (hu, label map, what
    it drew)) to the HU volume under each key and ``{key}_labels`` when present, with
    ``data["rng"]``; writes ``{key}_{name}`` (what it drew, or None)."""

    name = ""

    def __init__(self, keys: Sequence[str], t: Any, allow_missing_keys: bool) -> None:
        super().__init__(keys, allow_missing_keys)
        self.t = t

    def apply(self, key: str, data: Mapping[str, Any]) -> dict[str, Any]:
        rng = data.get("rng")
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"{type(self).__name__} needs data['rng'], a numpy Generator")
        hu, lab, drawn = self.t(data[key], data.get(f"{key}_labels"), rng)
        out: dict[str, Any] = {key: hu, f"{key}_{self.name}": drawn}
        if lab is not None:
            out[f"{key}_labels"] = lab
        return out


class RandZoomd(_RandMapd):
    """Zooms (:class:`RandZoom`); writes ``{key}_zoom`` (the factor or None)."""

    name = "zoom"

    def __init__(self, keys: Sequence[str], cfg: AugmentConfig,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, RandZoom(cfg), allow_missing_keys)


class RandShiftd(_RandMapd):
    """Moves in-plane (:class:`RandShift`); writes ``{key}_shift`` ((dy, dx) or None)."""

    name = "shift"

    def __init__(self, keys: Sequence[str], cfg: AugmentConfig, spacing_mm: Sequence[float],
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, RandShift(cfg, spacing_mm), allow_missing_keys)


__all__ = ["AugmentConfig", "RandShift", "RandShiftd", "RandZoom", "RandZoomd", "case_rng",
           "shift_volume", "zoom_volume"]
