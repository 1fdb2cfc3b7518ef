"""Fast path: the same phantom rendered straight onto the model input grid (no DICOM).

The model grid (``fast_path.shape`` / ``spacing_mm``, array order z, y, x) is centred on the
centre of the acquired DICOM volume, or placed on the lungs along z as the DICOM path places
it (``fast_path.placement`` "lungs", :func:`placed_grid`); outside the acquired slab it holds
``pad_hu`` and label 0, as the DICOM path does after resampling.

The reference for the equivalence test is :func:`resample_to_grid`: a documented trilinear
resampler with Gaussian anti-aliasing (SD = (factor - 1) / 2 source voxels along each axis
that is down-sampled, as in scikit-image), applied to the volume read back from DICOM.
Tolerance (``tests/synth/test_synth_fast_path.py``): noise-free, mean absolute difference
< 25 HU over the body, and the noise SD of the two paths within 35% of each other.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from medassist.synth.config import FastPathConfig
from medassist.synth.phantom import (
    F32,
    Grid,
    Physics,
    _gauss_kernel,
    blur_axis,
    correlated_noise,
    render,
)

if TYPE_CHECKING:
    from medassist.synth.case import Case


def model_grid(case: Case, fp: FastPathConfig) -> Grid:
    """The model grid centred on the acquired volume."""
    c = case.acquisition.grid.center()
    origin = tuple(c[i] - fp.spacing_mm[i] * (fp.shape[i] - 1) / 2 for i in range(3))
    return Grid(origin, fp.spacing_mm, fp.shape)  # type: ignore[arg-type]


#: in-plane coarsening of the render that finds the lungs for ``placement`` "lungs" (2: about
#: 0.12 s a case on the demo grid; the grid start agrees with the DICOM path's within one slice
#: on 100 of 100 chest-and-abdomen scans, ``bench/placement.py --fast-path``; 1 on 100 too, at
#: 0.6 s; 4 on 94, some small lungs lost in the coarser voxels)
PLACEMENT_COARSEN = 2


def _noise_free(ph: Any) -> Physics:
    return Physics(kvp=ph.kvp, mas=ph.mas, thickness_mm=ph.thickness_mm, kernel_sharp=False,
                   psf_fwhm_mm=ph.psf_fwhm_mm, noise_ref_hu=ph.noise_ref_hu,
                   noise_scale=ph.noise_scale, beam_hardening_hu=ph.beam_hardening_hu,
                   noise=False)


def placed_grid(case: Case, fp: FastPathConfig) -> Grid:
    """The model grid where the DICOM path puts it: :func:`model_grid`, or with
    ``fp.placement`` "lungs" on a scan longer than the grid, moved along z by whole grid
    slices where :func:`multimodal.transforms.place_grid` moves it.  The lungs are found as
    on the DICOM path, on a noise-free render of the whole acquired length at the grid's z
    spacing and :data:`PLACEMENT_COARSEN` times its in-plane spacing; in-plane the grid stays
    centred, as there."""
    grid = model_grid(case, fp)
    sz = case.acquisition.grid.axes()[0]
    dz, g = fp.spacing_mm[0], fp.shape[0]
    extra = math.ceil((float(sz[-1] - sz[0]) - (g - 1) * dz) / (2 * dz) - 1e-6)
    if fp.placement == "centre" or extra <= 0:
        return grid
    from multimodal.transforms import place_grid

    f = PLACEMENT_COARSEN
    ny, nx = math.ceil(fp.shape[1] / f), math.ceil(fp.shape[2] / f)
    sy, sx = fp.spacing_mm[1] * f, fp.spacing_mm[2] * f
    c = grid.center()
    # the centred grid plus ``extra`` slices either side: its centred start is ``extra``
    coarse = Grid((grid.origin[0] - extra * dz, c[1] - sy * (ny - 1) / 2,
                   c[2] - sx * (nx - 1) / 2), (dz, sy, sx), (g + 2 * extra, ny, nx))
    zs, ys, xs = coarse.axes()
    scanned = (zs >= sz[0] - 1e-6) & (zs <= sz[-1] + 1e-6)
    an = case.anatomy
    lung = (an.sd_lung((xs - an.cx)[None, None, :], (ys - an.cy)[None, :, None],
                       (zs[scanned] - an.z_carina)[:, None, None]) < 0).sum(axis=(1, 2))
    centred = np.zeros(len(zs), dtype=bool)
    centred[extra:extra + g] = True
    held = float(lung[centred[scanned]].sum())
    if held >= (1.0 - fp.placement_max_loss / 2) * max(float(lung.sum()), 1.0):
        # the anatomy's lungs lie inside the centred grid but for half the tolerance: the
        # image's aerated lungs would leave the tolerance out only if findings took half the
        # lungs inside it; the centre stands, no render needed
        return grid
    hu = render(an, case.findings, coarse, _noise_free(case.acquisition.physics), None).hu
    hu[~scanned] = fp.pad_hu
    where = place_grid(hu, (g, ny, nx), "lungs", fp.placement_max_loss)
    return Grid((grid.origin[0] + (where.start[0] - extra) * dz, grid.origin[1],
                 grid.origin[2]), fp.spacing_mm, fp.shape)


def antialias_sigmas(src: tuple[float, float, float],
                     dst: tuple[float, float, float]) -> tuple[float, float, float]:
    """Gaussian SD (source voxels) per axis before down-sampling."""
    return tuple(max(0.0, (d / s - 1.0) / 2.0) for s, d in zip(src, dst, strict=True))  # type: ignore[return-value]


def _lin_axis(a: F32, coords: npt.NDArray[np.floating[Any]], axis: int, pad: float) -> F32:
    """Linear interpolation of ``a`` along ``axis`` at fractional indices ``coords``."""
    n = a.shape[axis]
    inside = (coords >= -1e-6) & (coords <= n - 1 + 1e-6)
    c = np.clip(coords, 0, n - 1)
    i0 = np.floor(c).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    t = (c - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = -1
    t = t.reshape(shape)
    out = np.take(a, i0, axis=axis) * (1 - t) + np.take(a, i1, axis=axis) * t
    m = inside.reshape(shape)
    return np.where(m, out, np.float32(pad)).astype(np.float32)


def resample_to_grid(vol: npt.NDArray[Any], src: Grid, dst: Grid, *, pad: float = -1024.0,
                     antialias: bool = True) -> F32:
    """Trilinear resampling of ``vol`` on the axis-aligned grid ``src`` onto ``dst``.

    Points outside the span of source voxel centres get ``pad``.
    """
    a = np.asarray(vol, dtype=np.float32)
    if antialias:
        for ax, sg in enumerate(antialias_sigmas(src.spacing, dst.spacing)):
            if sg > 0.2:
                a = blur_axis(a, _gauss_kernel(sg), ax)
    for ax in range(3):
        dst_axis = dst.origin[ax] + dst.spacing[ax] * np.arange(dst.shape[ax])
        coords = (dst_axis - src.origin[ax]) / src.spacing[ax]
        a = _lin_axis(a, coords, ax, pad)
    return a


def resampled_noise_sd(case: Case, fp: FastPathConfig, grid: Grid | None = None) -> float:
    """Noise SD the DICOM path has after :func:`resample_to_grid` (estimated on a patch) onto
    ``grid`` (default: :func:`model_grid`)."""
    acq = case.acquisition
    sd = acq.physics.noise_sd(case.anatomy, acq.grid.spacing[2])
    if sd <= 0:
        return 0.0
    src_sp = acq.grid.spacing
    ext = [max(8, math.ceil(16 * fp.spacing_mm[i] / src_sp[i])) for i in range(3)]
    n = correlated_noise(np.random.default_rng(12345), (ext[0], ext[1], ext[2]), False,
                         (src_sp[1], src_sp[2]), 1.0)
    src = Grid((0.0, 0.0, 0.0), src_sp, (ext[0], ext[1], ext[2]))
    mg = model_grid(case, fp) if grid is None else grid
    # same fractional offsets between the grids as in the real case
    off = [((mg.origin[i] - acq.grid.origin[i]) / src_sp[i]) % 1.0 * src_sp[i] + src_sp[i]
           for i in range(3)]
    shape = tuple(max(2, int(((ext[i] - 3) * src_sp[i]) / fp.spacing_mm[i])) for i in range(3))
    dst = Grid((off[0], off[1], off[2]), fp.spacing_mm, shape)  # type: ignore[arg-type]
    r = resample_to_grid(n, src, dst, pad=0.0)
    return float(sd * r.std())


def render_tensor(case: Case, fp: FastPathConfig, *, noise: bool = True,
                  as_torch: bool = False) -> tuple[Any, npt.NDArray[np.uint8]]:
    """Render the case straight onto the model grid: (HU volume, label map).

    Returns numpy arrays, or a ``torch.Tensor`` (float32, shape (1, z, y, x)) for the image
    when ``as_torch`` is set.
    """
    acq = case.acquisition
    grid = placed_grid(case, fp)
    ph = acq.physics
    phys = _noise_free(ph)
    # match the blur of "anti-alias + trilinear" on the DICOM grid: the Gaussian prefilter plus
    # the interpolation kernel (variance t(1 - t) source voxels^2 at fractional offset t; its
    # mean over offsets, 1/6, in-plane; the actual z offset between the two grids along z)
    src = acq.grid.spacing
    sig = antialias_sigmas(src, fp.spacing_mm)
    inplane = math.sqrt((sig[2] * src[2]) ** 2 + src[2] ** 2 / 6.0)
    tz = ((grid.origin[0] - acq.grid.origin[0]) / src[0]) % 1.0
    ez = math.sqrt((sig[0] * src[0]) ** 2 + tz * (1.0 - tz) * src[0] ** 2)
    res = render(case.anatomy, case.findings, grid, phys, None, extra_smoothing_mm=inplane,
                 extra_z_mm=ez)
    hu, labels = res.hu, res.labels
    if noise and ph.noise:
        sd = resampled_noise_sd(case, fp, grid)
        n = case.noise_rng(99).standard_normal(size=grid.shape, dtype=np.float32)
        k = _gauss_kernel(0.5)
        n = blur_axis(blur_axis(n, k, 1), k, 2)
        hu += n * np.float32(sd / math.sqrt(float((k**2).sum()) ** 2))
    # outside the acquired slab: pad, as the read -> resample path does
    zs, ys, xs = grid.axes()
    sz, sy, sx = acq.grid.axes()
    out_z = (zs < sz[0] - 1e-6) | (zs > sz[-1] + 1e-6)
    out_y = (ys < sy[0] - 1e-6) | (ys > sy[-1] + 1e-6)
    out_x = (xs < sx[0] - 1e-6) | (xs > sx[-1] + 1e-6)
    outside = out_z[:, None, None] | out_y[None, :, None] | out_x[None, None, :]
    hu[outside] = fp.pad_hu
    labels[outside] = 0
    np.clip(hu, -1024.0, 3071.0, out=hu)
    if as_torch:
        import torch

        return torch.from_numpy(hu).unsqueeze(0), labels
    return hu, labels
