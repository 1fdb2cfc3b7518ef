"""Slice geometry: ordering, consistency checks, gap/duplicate/tilt detection, resampling.

Conventions: a volume array has shape ``(slices, rows, cols)``; its ``affine`` maps the
homogeneous index ``(k, i, j, 1)`` to DICOM patient coordinates (LPS, millimetres).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from dicom_io.config import AssemblyConfig, SpacingPolicy, TiltPolicy
from dicom_io.errors import (
    DuplicateSliceError,
    GantryTiltError,
    InconsistentGeometryError,
    InconsistentOrientationError,
    MissingGeometryError,
    SeriesGapError,
    UnevenSpacingError,
)

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class SliceGeom:
    """Where one image plane lies."""

    source: str
    sop_instance_uid: str
    frame: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    rows: int
    columns: int


@dataclass(frozen=True)
class Flag:
    """A visible note about something unusual that assembly detected or did."""

    code: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "detail": self.detail}


@dataclass
class GeometryPlan:
    """The outcome of :func:`plan_geometry`: how to stack and whether to resample."""

    order: list[int]
    #: Groups of indices (into ``order``'s source list) that share one position.
    duplicates: list[list[int]]
    row_dir: FloatArray
    col_dir: FloatArray
    normal: FloatArray
    stack_dir: FloatArray
    origin: FloatArray
    #: Position of each ordered, de-duplicated slice along ``stack_dir`` from ``origin`` (mm).
    s: FloatArray
    row_spacing: float
    col_spacing: float
    slice_spacing: float
    tilt_deg: float
    resample: bool
    flags: list[Flag] = field(default_factory=list)


def _unit(v: FloatArray) -> FloatArray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def plan_geometry(
    slices: list[SliceGeom],
    cfg: AssemblyConfig,
    series_uid: str,
    fallback_spacing: float | None = None,
) -> GeometryPlan:
    """Check a series' geometry and decide how to assemble it.

    Raises:
        MissingGeometryError, InconsistentOrientationError, InconsistentGeometryError,
        DuplicateSliceError, SeriesGapError, UnevenSpacingError, GantryTiltError.
    """
    flags: list[Flag] = []
    for sl in slices:
        if sl.position is None or sl.orientation is None:
            missing = "ImagePositionPatient" if sl.position is None else "ImageOrientationPatient"
            raise MissingGeometryError(
                f"slice {sl.sop_instance_uid} frame {sl.frame} has no {missing}; it cannot be "
                "placed and will not be dropped silently; fix or remove the file",
                series_uid=series_uid, path=sl.source,
            )
        if sl.pixel_spacing is None:
            raise MissingGeometryError("slice has no PixelSpacing", series_uid=series_uid,
                                       path=sl.source)
        if min(sl.pixel_spacing) <= 0:
            raise InconsistentGeometryError(f"PixelSpacing {sl.pixel_spacing} is not positive",
                                            series_uid=series_uid, path=sl.source)
    first = slices[0]
    iops = np.asarray([sl.orientation for sl in slices], dtype=np.float64)  # (n, 6)
    iop0 = iops[0]
    bad_iop = np.nonzero(np.abs(iops - iop0).max(axis=1) > cfg.orientation_tol)[0]
    if bad_iop.size:
        sl = slices[int(bad_iop[0])]
        raise InconsistentOrientationError(
            f"ImageOrientationPatient {list(sl.orientation or ())} differs from "
            f"{list(iop0)} of the first slice; split the series or fix the headers",
            series_uid=series_uid, path=sl.source,
        )
    spacings = np.asarray([sl.pixel_spacing for sl in slices], dtype=np.float64)  # (n, 2)
    matrices = np.asarray([(sl.rows, sl.columns) for sl in slices])  # (n, 2)
    bad_geom = np.nonzero((np.abs(spacings - spacings[0]).max(axis=1) > 1e-4)
                          | (matrices != matrices[0]).any(axis=1))[0]
    if bad_geom.size:
        sl = slices[int(bad_geom[0])]
        raise InconsistentGeometryError(
            f"matrix {sl.rows}x{sl.columns} / PixelSpacing {sl.pixel_spacing} differs from "
            f"{first.rows}x{first.columns} / {first.pixel_spacing} of the first slice",
            series_uid=series_uid, path=sl.source,
        )
    row_dir = _unit(iop0[:3])
    col_dir = _unit(iop0[3:])
    if abs(float(row_dir @ col_dir)) > 1e-3 or np.linalg.norm(iop0[:3]) < 0.5:
        raise InconsistentGeometryError(
            "ImageOrientationPatient is not two orthogonal unit vectors",
            series_uid=series_uid, path=first.source,
        )
    normal = _unit(np.cross(row_dir, col_dir))
    pos = np.asarray([sl.position for sl in slices], dtype=np.float64)
    proj = pos @ normal
    order = [int(i) for i in np.argsort(proj, kind="stable")]
    row_spacing = float(first.pixel_spacing[0])  # type: ignore[index]
    col_spacing = float(first.pixel_spacing[1])  # type: ignore[index]

    # Duplicates: the same position along the normal (and in-plane).
    dup_tol = 0.01
    groups: list[list[int]] = [[order[0]]]
    for idx in order[1:]:
        prev = groups[-1][0]
        if abs(proj[idx] - proj[prev]) < dup_tol and np.linalg.norm(pos[idx] - pos[prev]) < 0.05:
            groups[-1].append(idx)
        else:
            groups.append([idx])
    duplicates = [g for g in groups if len(g) > 1]
    for g in duplicates:
        uids = {slices[i].sop_instance_uid for i in g}
        same_instance = len(uids) == 1
        if not same_instance and cfg.strict:
            raise DuplicateSliceError(
                f"{len(g)} slices share position z={pos[g[0]][2]:.2f} "
                f"({', '.join(sorted(uids))}); strict mode refuses duplicates",
                series_uid=series_uid, path=slices[g[1]].source,
            )
    unique = [g[0] for g in groups]
    upos = pos[unique]
    origin = upos[0].copy()
    n_unique = len(unique)
    if n_unique == 1:
        stack_dir = normal
        from_header = fallback_spacing is not None and 0 < fallback_spacing < 1000
        spacing = float(fallback_spacing) if from_header else 1.0  # type: ignore[arg-type]
        flags.append(Flag("single_slice", f"one image plane; slice spacing {spacing} mm "
                                          + ("taken from the header" if from_header else
                                             "assumed: the header gives none")))
        return GeometryPlan(order, duplicates, row_dir, col_dir, normal, stack_dir, origin,
                            np.zeros(1), row_spacing, col_spacing, float(spacing), 0.0, False,
                            flags)
    stack_dir = _unit(upos[-1] - upos[0])
    # All positions on one line.
    rel = upos - origin
    along = rel @ stack_dir
    off_line = np.linalg.norm(rel - np.outer(along, stack_dir), axis=1)
    line_tol = 0.05 + 1e-3 * float(along[-1] - along[0])
    if float(off_line.max()) > line_tol:
        bad = int(np.argmax(off_line))
        raise InconsistentGeometryError(
            f"slice positions do not lie on one line (off by {off_line[bad]:.2f} mm); "
            "the series may mix several stacks",
            series_uid=series_uid, path=slices[unique[bad]].source,
        )
    cos_tilt = float(np.clip(stack_dir @ normal, -1.0, 1.0))
    tilt_deg = float(np.degrees(np.arccos(abs(cos_tilt))))
    resample = False
    if tilt_deg > cfg.tilt_tol_deg:
        if abs(float(stack_dir @ row_dir)) > np.sin(np.radians(cfg.tilt_tol_deg)):
            raise InconsistentGeometryError(
                "slices are offset along the row direction: an oblique stack that is not a "
                "gantry tilt is not supported",
                series_uid=series_uid, path=first.source,
            )
        if cfg.tilt == TiltPolicy.REFUSE:
            raise GantryTiltError(
                f"gantry tilt of {tilt_deg:.1f} degrees detected from slice positions; "
                "set assembly.tilt=resample to correct it",
                series_uid=series_uid, path=first.source,
            )
        resample = True
        flags.append(Flag("gantry_tilt_corrected",
                          f"tilt {tilt_deg:.1f} deg resampled onto an orthogonal grid"))
    deltas = np.diff(along)
    med = float(np.median(deltas))
    tol = max(cfg.spacing_abs_tol_mm, cfg.spacing_rel_tol * med)
    spacing = med
    if float(np.max(np.abs(deltas - med))) > tol:
        mult = np.rint(deltas / med)
        is_gap_pattern = bool(np.all(mult >= 1) and np.all(np.abs(deltas - mult * med) <= tol))
        if is_gap_pattern:
            gaps = [(int(i), int(m) - 1) for i, m in enumerate(mult) if m >= 2]
            i, n_missing = gaps[0]
            total = sum(m for _, m in gaps)
            z0, z1 = upos[i][2], upos[i + 1][2]
            text = (f"{total} slice(s) missing: {n_missing} between z={z0:.1f} and z={z1:.1f}"
                    + (f" and {len(gaps) - 1} more gap(s)" if len(gaps) > 1 else "")
                    + f" (expected spacing {med:.2f} mm)")
            if cfg.strict:
                raise SeriesGapError(text, series_uid=series_uid,
                                     path=slices[unique[i + 1]].source)
            flags.append(Flag("gap_interpolated", text + "; filled by linear interpolation"))
        else:
            text = (f"slice spacing varies from {deltas.min():.2f} to {deltas.max():.2f} mm "
                    f"(median {med:.2f} mm)")
            if cfg.uneven_spacing == SpacingPolicy.REFUSE:
                raise UnevenSpacingError(text + "; set assembly.uneven_spacing=resample to "
                                         "resample it", series_uid=series_uid,
                                         path=first.source)
            flags.append(Flag("uneven_spacing_resampled",
                              text + f"; resampled to a uniform {med:.2f} mm"))
        resample = True
    elif not resample:
        spacing = float(along[-1] - along[0]) / (n_unique - 1)
    if duplicates:
        flags.append(Flag("duplicate_slices_merged",
                          f"{sum(len(g) - 1 for g in duplicates)} duplicate image(s) at the same "
                          "position merged (identical pixels verified)"))
    return GeometryPlan(order, duplicates, row_dir, col_dir, normal, stack_dir, origin, along,
                        row_spacing, col_spacing, float(spacing), tilt_deg, resample, flags)


def plain_affine(plan: GeometryPlan) -> FloatArray:
    """Affine of an unresampled stack: index (k, i, j) → LPS."""
    a = np.eye(4)
    a[:3, 0] = plan.stack_dir * plan.slice_spacing
    a[:3, 1] = plan.col_dir * plan.row_spacing
    a[:3, 2] = plan.row_dir * plan.col_spacing
    a[:3, 3] = plan.origin
    return a


def resample_stack(
    stack: npt.NDArray[np.float32], plan: GeometryPlan, pad: float
) -> tuple[npt.NDArray[np.float32], FloatArray, float]:
    """Resample a (possibly tilted, unevenly spaced) stack onto an orthogonal uniform grid.

    Each output row ``i`` is interpolated linearly along the stacking direction at
    ``s_out - i * row_spacing * (col_dir · stack_dir)``: this removes the shear of gantry tilt
    and evens out the spacing in one pass.  Samples outside the acquired slab get ``pad``.

    Returns:
        The new array (slices, rows, cols), its affine (index → LPS) and the padded fraction.
    """
    s = plan.s
    step = plan.slice_spacing
    shear = float(plan.col_dir @ plan.stack_dir)
    n_rows = stack.shape[1]
    # The output slab covers every acquired sample: row i is shifted by i*row_spacing*shear.
    shift = (n_rows - 1) * plan.row_spacing * shear
    start = s[0] + min(0.0, shift)
    stop = s[-1] + max(0.0, shift)
    n_out = int(np.floor((stop - start) / step + 1e-6)) + 1
    s_out = start + step * np.arange(n_out)
    out = np.empty((n_out, n_rows, stack.shape[2]), dtype=np.float32)
    padded = 0
    for i in range(n_rows):
        t = s_out - i * plan.row_spacing * shear  # (n_out,)
        hi = np.clip(np.searchsorted(s, t, side="right"), 1, len(s) - 1)
        lo = hi - 1
        w = ((t - s[lo]) / (s[hi] - s[lo])).astype(np.float32)[:, None]  # (n_out, 1)
        inside = (t >= s[0] - 1e-6) & (t <= s[-1] + 1e-6)
        row = stack[lo, i, :] * (1 - w) + stack[hi, i, :] * w  # (n_out, cols)
        row[~inside] = pad
        padded += int((~inside).sum())
        out[:, i, :] = row
    cprime = _unit(plan.col_dir - shear * plan.stack_dir)
    cos_phi = float(np.sqrt(max(0.0, 1.0 - shear * shear)))
    a = np.eye(4)
    a[:3, 0] = plan.stack_dir * step
    a[:3, 1] = cprime * plan.row_spacing * cos_phi
    a[:3, 2] = plan.row_dir * plan.col_spacing
    a[:3, 3] = plan.origin + start * plan.stack_dir
    return out, a, padded / float(n_out * n_rows)
