"""Fast path: the same phantom rendered straight onto the model input grid (no DICOM).

The model grid (``fast_path.shape`` / ``spacing_mm``, array order z, y, x) is centred on the
centre of the acquired DICOM volume; outside the acquired slab it holds ``pad_hu`` and label 0,
as the DICOM path does after resampling.

The reference for the equivalence test is :func:`resample_to_grid`: a documented trilinear
resampler with Gaussian anti-aliasing (SD = (factor - 1) / 2 source voxels along each axis
that is down-sampled, as in scikit-image), applied to the volume read back from DICOM.
Tolerance (``tests/synth/test_fast_path.py``): noise-free, mean absolute difference
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
    c = case.acquisition.grid.center()
    origin = tuple(c[i] - fp.spacing_mm[i] * (fp.shape[i] - 1) / 2 for i in range(3))
    return Grid(origin, fp.spacing_mm, fp.shape)  # type: ignore[arg-type]


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


def resampled_noise_sd(case: Case, fp: FastPathConfig) -> float:
    """Noise SD the DICOM path has after :func:`resample_to_grid` (estimated on a patch)."""
    acq = case.acquisition
    sd = acq.physics.noise_sd(case.anatomy, acq.grid.spacing[2])
    if sd <= 0:
        return 0.0
    src_sp = acq.grid.spacing
    ext = [max(8, math.ceil(16 * fp.spacing_mm[i] / src_sp[i])) for i in range(3)]
    n = correlated_noise(np.random.default_rng(12345), (ext[0], ext[1], ext[2]), False,
                         (src_sp[1], src_sp[2]), 1.0)
    src = Grid((0.0, 0.0, 0.0), src_sp, (ext[0], ext[1], ext[2]))
    mg = model_grid(case, fp)
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
    grid = model_grid(case, fp)
    ph = acq.physics
    phys = Physics(kvp=ph.kvp, mas=ph.mas, thickness_mm=ph.thickness_mm, kernel_sharp=False,
                   psf_fwhm_mm=ph.psf_fwhm_mm, noise_ref_hu=ph.noise_ref_hu,
                   noise_scale=ph.noise_scale, beam_hardening_hu=ph.beam_hardening_hu,
                   noise=False)
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
        sd = resampled_noise_sd(case, fp)
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
