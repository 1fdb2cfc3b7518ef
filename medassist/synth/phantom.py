"""Analytic chest/upper-abdomen CT phantom, rendered on any axis-aligned grid.

The phantom is a set of continuous shapes in patient coordinates (DICOM LPS, millimetres:
+x = patient's left, +y = posterior, +z = superior).  Every structure is a signed-distance
function (negative inside), so the same patient can be rendered on the DICOM acquisition grid
and straight onto the model input grid (the fast path) with consistent partial-volume edges.

Anatomy coordinates ``(u, v, za)`` are patient-centred: ``u = x - cx``, ``v = y - cy``,
``za = z - z_carina``.  Rendering is done in z-chunks so that 512^2 x 300 volumes stay in a
bounded amount of memory.

Physics: soft edges one voxel wide (partial volume), z sub-sampling averaged over the slice
thickness (slice profile), a Gaussian in-plane point-spread function, optional cupping
(beam hardening), and correlated quantum noise whose SD depends on kVp, mAs, slice thickness,
pixel size, kernel and patient size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from medassist.synth.habitus import (
    LIVER_REACH,
    NECK_BELOW_APEX_MM,
    WALL_MM,
    SoftFill,
    SoftTexture,
    sample_soft_fill,
    sample_soft_texture,
    sample_wall,
)
from medassist.synth.parenchyma import Parenchyma, sample_parenchyma, wave_terms

if TYPE_CHECKING:
    from medassist.synth.findings import Finding

F32 = npt.NDArray[np.float32]
FArr = npt.NDArray[np.floating[Any]]
IArr = npt.NDArray[np.int64]

LOBES: tuple[str, ...] = ("RUL", "RML", "RLL", "LUL", "LLL")
LOBE_NAMES: dict[str, str] = {
    "RUL": "right upper lobe", "RML": "right middle lobe", "RLL": "right lower lobe",
    "LUL": "left upper lobe", "LLL": "left lower lobe",
}
#: Segment kinds in :attr:`Anatomy.segments`.
ARTERY, VEIN, AIRWAY = 0, 1, 2
#: Number of ribs per side.
N_RIBS = 12
#: default distance (mm) from the pleural cavity out to the rib centre-lines: the ribs'
#: half-depth is 3.5 mm x size, so 7 (the original generator) leaves ~3.5 mm of muscle between
#: rib and pleura, and ~3.5 puts the ribs against the pleura as on real CT
RIB_OFFSET_MM = 7.0


# --------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid in patient (LPS) millimetres, array order (z, y, x).

    ``origin`` is the centre of voxel ``[0, 0, 0]``; slice 0 is the most inferior one.
    """

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]

    def axes(self) -> tuple[FArr, FArr, FArr]:
        """World coordinates of the voxel centres along z, y and x."""
        return tuple(  # type: ignore[return-value]
            self.origin[i] + self.spacing[i] * np.arange(self.shape[i], dtype=np.float64)
            for i in range(3)
        )

    def center(self) -> tuple[float, float, float]:
        return tuple(  # type: ignore[return-value]
            self.origin[i] + self.spacing[i] * (self.shape[i] - 1) / 2 for i in range(3)
        )

    def index_to_world(self, idx: FArr) -> FArr:
        """Voxel indices ``(..., 3)`` in (k, j, i) order -> world ``(..., 3)`` in (z, y, x)."""
        return np.asarray(np.asarray(self.origin) + np.asarray(idx, dtype=np.float64) * np.asarray(
            self.spacing))


def soft(sd: FArr, w: float) -> F32:
    """Partial-volume occupancy of a signed distance: 1 inside, 0 outside, a ramp ``w`` wide."""
    return np.asarray(np.clip(0.5 - sd / w, 0.0, 1.0).astype(np.float32))


def sd_superellipse(u: FArr, v: FArr, a: FArr | float, b: FArr | float, p: float) -> FArr:
    """Approximate signed distance (mm) to a superellipse of semi-axes a, b, exponent p."""
    if p == 2.0:
        r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    else:
        r = (np.abs(u / a) ** p + np.abs(v / b) ** p) ** (1.0 / p)
    return (r - 1.0) * np.minimum(a, b)


def sd_ellipsoid(du: FArr, dv: FArr, dz: FArr, r: Sequence[float]) -> FArr:
    """Approximate signed distance to an axis-aligned ellipsoid with radii (ru, rv, rz)."""
    q = np.sqrt((du / r[0]) ** 2 + (dv / r[1]) ** 2 + (dz / r[2]) ** 2)
    return np.asarray((q - 1.0) * min(r))


def paint(hu: F32, occ: FArr, value: FArr | float) -> None:
    """Composite ``value`` over ``hu`` with opacity ``occ`` (in place)."""
    hu += (occ * (value - hu)).astype(np.float32)


# --------------------------------------------------------------------------- anatomy

@dataclass(frozen=True)
class Anatomy:
    """One patient's anatomy: scalars sampled by :func:`sample_anatomy`, plus vessel trees."""

    cx: float
    cy: float
    z_carina: float
    size: float
    body_a: float
    body_b: float
    fat: float
    muscle: float
    apex_z: float
    dia_r: float
    dia_l: float
    heart_scale: float
    aorta_scale: float
    lung_hu: float
    lung_gradient: float
    contrast: bool
    hu: dict[str, float]
    rib_spacing: float
    rib_drop: float
    vert_phase: float
    table_y: float
    #: Texture waves, rows (ku, kv, kz, phase) in rad/mm.
    waves: FArr = field(repr=False)
    #: Tubular segments (anatomy coords), rows (u0, v0, z0, u1, v1, z1, r0, r1, kind).
    segments: FArr = field(repr=False)
    #: Normal mediastinal lymph nodes, rows (u, v, z, ru, rv, rz).
    nodes: FArr = field(repr=False)

    # ---- derived cross-section sizes (functions of za)
    def body_axes(self, za: FArr) -> tuple[FArr, FArr]:
        neck = 1.0 - 0.22 * np.clip((za - (self.apex_z - 20.0)) / 80.0, 0.0, 1.0)
        belly = 1.0 + 0.06 * np.clip((self.dia_r - za) / 100.0, 0.0, 1.0)
        return self.body_a * neck, self.body_b * neck * belly

    def cavity_axes(self, za: FArr) -> tuple[FArr, FArr]:
        a, b = self.body_axes(za)
        return (a - self.fat - self.muscle - self.wall_mm,
                b - 0.8 * self.fat - self.muscle - self.wall_mm)

    @property
    def cav_a0(self) -> float:
        return self.body_a - self.fat - self.muscle - self.wall_mm

    @property
    def cav_b0(self) -> float:
        return self.body_b - 0.8 * self.fat - self.muscle - self.wall_mm

    @property
    def spine_v(self) -> float:
        return self.cav_b0 - 22.0 * self.size

    @property
    def mid_u(self) -> float:
        return 5.0 * self.size

    def heart_geometry(self, extra_scale: float = 1.0) -> tuple[tuple[float, float, float],
                                                                 tuple[float, float, float]]:
        """Heart centre (u, v, z) and radii (ru, rv, rz)."""
        s = self.size * self.heart_scale
        dome = 0.5 * (self.dia_r + self.dia_l)
        r = (58.0 * s * extra_scale, 45.0 * s * math.sqrt(extra_scale),
             max(35.0, 0.5 * (-22.0 - dome)) * math.sqrt(self.heart_scale))
        c = (0.16 * self.cav_a0, -0.22 * self.cav_b0, 0.5 * (dome - 22.0))
        return c, r

    def dome(self, u: FArr) -> FArr:
        return np.where(u < self.mid_u, self.dia_r, self.dia_l)

    def diaphragm_z(self, u: FArr, v: FArr, za: FArr | None = None) -> FArr:
        ac, bc = (self.cav_a0, self.cav_b0) if za is None else self.cavity_axes(za)
        q = ((np.abs(u - self.mid_u) - 0.48 * ac) / (0.52 * ac)) ** 2 + ((v + 0.1 * bc) / bc) ** 2
        return np.asarray(self.dome(u) - 55.0 * np.clip(q, 0.0, 1.6))

    def apex_top(self, u: FArr, v: FArr) -> FArr:
        ac, bc = self.cav_a0, self.cav_b0
        q = ((np.abs(u - self.mid_u) - 0.45 * ac) / (0.45 * ac)) ** 2 + (
            (v - 0.15 * bc) / (0.8 * bc)) ** 2
        return np.asarray(self.apex_z - 45.0 * np.clip(q, 0.0, 2.0))

    def sd_cavity(self, u: FArr, v: FArr, za: FArr) -> FArr:
        ac, bc = self.cavity_axes(za)
        return sd_superellipse(u, v, ac, bc, 2.0)

    def sd_mediastinum(self, u: FArr, v: FArr, za: FArr) -> FArr:
        s = self.size
        half = np.where(v < 0, np.where(za > -10.0, 24.0, 12.0), 20.0) * s
        band = np.abs(u - self.mid_u) - half
        c, r = self.heart_geometry(self.cardiac_extra)
        heart = sd_ellipsoid(u - c[0], v - c[1], za - c[2], (r[0] + 4, r[1] + 4, r[2] + 4))
        spine = np.sqrt(u**2 + (v - self.spine_v) ** 2) - 30.0 * s
        return np.asarray(np.minimum(np.minimum(band, heart), spine))

    #: extra heart scale from cardiomegaly (set by :func:`with_findings`)
    cardiac_extra: float = 1.0
    #: parenchymal texture, subpleural density and pleural relief (None: the smooth lung)
    parenchyma: Parenchyma | None = None
    #: rib centre-lines run this far (mm) outside the pleural cavity (see
    #: :data:`RIB_OFFSET_MM`)
    rib_offset_mm: float = RIB_OFFSET_MM
    #: chest-wall muscle (mm) inside the muscle layer (medassist/synth/habitus.py)
    wall_mm: float = WALL_MM
    #: soft-tissue fill of the thoracic inlet and upper abdomen, larger liver, clavicles
    #: (None: fat, the original generator; medassist/synth/habitus.py)
    soft_fill: SoftFill | None = None
    #: fine texture of the body outside the lungs (None: none, the original generator)
    soft_texture: SoftTexture | None = None

    def sd_lung(self, u: FArr, v: FArr, za: FArr) -> FArr:
        """Signed distance to the lungs (both sides)."""
        wall = self.sd_cavity(u, v, za) + 2.0
        if self.parenchyma is not None and self.parenchyma.relief_mm > 0:
            wall = wall + self.parenchyma.relief(u, v, za)
        sd = np.maximum(wall, -self.sd_mediastinum(u, v, za))
        sd = np.maximum(sd, self.diaphragm_z(u, v, za) - za)
        return np.asarray(np.maximum(sd, za - self.apex_top(u, v)))

    def is_right(self, u: FArr) -> npt.NDArray[np.bool_]:
        return np.asarray(u < self.mid_u)

    def lobe_index(self, u: FArr, v: FArr, za: FArr) -> IArr:
        """Lobe code per point: 0 RUL, 1 RML, 2 RLL, 3 LUL, 4 LLL."""
        u, v, za = np.broadcast_arrays(u, v, za)
        right = self.is_right(u)
        t = np.clip((v / self.cav_b0 + 1.0) / 2.0, 0.0, 1.0)
        dome = self.dome(u)
        z_obl = dome + 15.0 + t * (45.0 - dome - 15.0)
        lower = za < z_obl
        upper_r = za > -25.0
        out = np.where(right, np.where(lower, 2, np.where(upper_r, 0, 1)), np.where(lower, 4, 3))
        return out.astype(np.int64)

    def rib_frame(self, u: FArr, v: FArr, za: FArr) -> tuple[FArr, FArr, FArr, float]:
        """Rib-ellipse coordinates: radial distance (mm), phi (0 posterior .. 1 anterior),
        and the half-perimeter (mm) that converts phi to arc length."""
        am, bm = self.rib_axes(za)
        rn = np.sqrt((u / am) ** 2 + (v / bm) ** 2)
        dr = (rn - 1.0) * np.minimum(am, bm)
        phi = 0.5 - np.arctan2(v / bm, np.abs(u) / am) / math.pi
        half_per = math.pi * math.sqrt((self.cav_a0**2 + self.cav_b0**2) / 2.0)
        return dr, phi, am, half_per

    def rib_axes(self, za: FArr) -> tuple[FArr, FArr]:
        """Semi-axes (mm) of the ellipse the rib centre-lines follow at ``za``: the pleural
        cavity's, grown by :attr:`rib_offset_mm`."""
        ac, bc = self.cavity_axes(za)
        return ac + self.rib_offset_mm, bc + self.rib_offset_mm

    def rib_centre_z(self, i: int, phi: FArr | float) -> FArr:
        """Centre-line z of rib ``i`` (0-based) at ``phi``."""
        z_post = self.apex_z + 8.0 - i * self.rib_spacing
        return np.asarray(z_post - self.rib_drop * np.power(phi, 1.3))

    def rib_end(self, i: int) -> float:
        return 0.88 if i < 7 else (0.75 if i < 10 else 0.5)

    def rib_point(self, side: str, i: int, phi: float) -> tuple[float, float, float]:
        """Anatomy coordinates of the rib centre-line at ``phi``."""
        za = float(self.rib_centre_z(i, phi))
        a, b = self.rib_axes(np.asarray(za))
        am, bm = float(a), float(b)
        theta = math.pi * (0.5 - phi)
        sgn = -1.0 if side == "right" else 1.0
        return sgn * am * math.cos(theta), bm * math.sin(theta), za

    def to_json(self) -> dict[str, Any]:
        keys = ("cx", "cy", "z_carina", "size", "body_a", "body_b", "fat", "muscle", "apex_z",
                "dia_r", "dia_l", "heart_scale", "aorta_scale", "lung_hu", "lung_gradient",
                "contrast", "rib_spacing", "rib_drop", "vert_phase", "table_y", "cardiac_extra")
        out: dict[str, Any] = {k: _py(getattr(self, k)) for k in keys}
        out["hu"] = {k: round(float(v), 3) for k, v in sorted(self.hu.items())}
        out["n_segments"] = int(self.segments.shape[0])
        if self.parenchyma is not None:
            out["parenchyma"] = self.parenchyma.to_json()
        if self.rib_offset_mm != RIB_OFFSET_MM:
            out["rib_offset_mm"] = round(self.rib_offset_mm, 3)
        if self.wall_mm != WALL_MM:
            out["wall_mm"] = round(self.wall_mm, 3)
        if self.soft_fill is not None:
            out["soft_fill"] = self.soft_fill.to_json()
        if self.soft_texture is not None:
            out["soft_texture"] = self.soft_texture.to_json()
        return out


def _py(x: Any) -> Any:
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, float | np.floating):
        return round(float(x), 4)
    return x


def _unit(a: FArr) -> FArr:
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return np.asarray(a / np.maximum(n, 1e-9))


def _grow_trees(rng: np.random.Generator, an: Anatomy, roots: FArr, kind: int,
                generations: int, r_min: float) -> FArr:
    """Grow branching, tapering trees from ``roots`` rows (u, v, z, du, dv, dz, r).

    Vectorised over all active branches of a generation; a branch stops when it would leave
    the lungs.  Returns segment rows as in :attr:`Anatomy.segments`.
    """
    p = roots[:, 0:3].astype(np.float64)
    d = _unit(roots[:, 3:6].astype(np.float64))
    r = roots[:, 6].astype(np.float64)
    origin = p.copy()
    out: list[FArr] = []
    for g in range(generations):
        if p.shape[0] == 0:
            break
        length = r * rng.uniform(5.0, 8.0, size=r.shape) + 4.0
        q = p + d * length[:, None]
        if g > 1:
            inside = an.sd_lung(q[:, 0], q[:, 1], q[:, 2]) < -1.0
            for _attempt in range(4):  # re-aim branches that would leave the lung
                bad = np.nonzero(~inside)[0]
                if bad.size == 0:
                    break
                nd = _unit(d[bad] + 0.9 * rng.normal(size=(bad.size, 3)))
                qn = p[bad] + nd * length[bad, None]
                ok = an.sd_lung(qn[:, 0], qn[:, 1], qn[:, 2]) < -1.0
                d[bad[ok]] = nd[ok]
                q[bad[ok]] = qn[ok]
                inside[bad[ok]] = True
            q_half = p + d * (0.5 * length[:, None])
            inside_half = an.sd_lung(q_half[:, 0], q_half[:, 1], q_half[:, 2]) < -1.0
            q = np.where(inside[:, None], q, q_half)
            keep = inside | inside_half
            p, q, d, r, origin = p[keep], q[keep], d[keep], r[keep], origin[keep]
        seg = np.column_stack([p, q, r, r * 0.9, np.full(r.shape, float(kind))])
        out.append(seg)
        if g == generations - 1:
            break
        # two children per branch, rotated in opposite senses about a random perpendicular
        rc = r[:, None] * rng.uniform(0.68, 0.82, size=(r.shape[0], 2))
        axis = _unit(np.cross(d, rng.normal(size=d.shape)))
        outward = _unit(q - origin + 1e-6)
        kids_p, kids_d, kids_r, kids_o = [], [], [], []
        for c, sgn in ((0, 1.0), (1, -1.0)):
            ang = sgn * np.deg2rad(rng.uniform(18.0, 42.0, size=r.shape))
            cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
            nd = d * cos + np.cross(axis, d) * sin + axis * (axis * d).sum(-1, keepdims=True) * (
                1 - cos)
            nd = _unit(nd + 0.25 * outward)
            kids_p.append(q)
            kids_d.append(nd)
            kids_r.append(rc[:, c])
            kids_o.append(origin)
        p = np.concatenate(kids_p)
        d = np.concatenate(kids_d)
        r = np.concatenate(kids_r)
        origin = np.concatenate(kids_o)
        alive = r >= r_min
        p, d, r, origin = p[alive], d[alive], r[alive], origin[alive]
    if not out:
        return np.zeros((0, 9))
    return np.concatenate(out)


def _polyline(points: Sequence[tuple[float, float, float]], radii: Sequence[float],
              kind: int) -> FArr:
    rows = [
        (*points[i], *points[i + 1], radii[i], radii[i + 1], float(kind))
        for i in range(len(points) - 1)
    ]
    return np.asarray(rows, dtype=np.float64)


#: kinds of fixed mediastinal tubes (rendered as tubes, not lung vessels)
AORTA, PA, SVC, TRACHEA, ESOPHAGUS, BRONCHUS = 10, 11, 12, 13, 14, 15


def sample_anatomy(rng: np.random.Generator, size_scale: tuple[float, float],
                   fat_mm: tuple[float, float], position_offset_mm: float,
                   lung_hu: tuple[float, float], heart_scale: tuple[float, float],
                   vessel_generations: int, contrast: bool, *,
                   lung_gradient_hu: tuple[float, float] = (15.0, 60.0),
                   texture_hu: tuple[float, float] = (0.0, 0.0),
                   subpleural_hu: tuple[float, float] = (0.0, 0.0),
                   relief_mm: tuple[float, float] = (0.0, 0.0),
                   texture_skew: float = 0.0, rib_offset_mm: float = RIB_OFFSET_MM,
                   chest_wall_mm: tuple[float, float] = (WALL_MM, WALL_MM),
                   soft_tissue_fill: bool = False,
                   muscle_mm: tuple[float, float] = (9.0, 16.0),
                   soft_texture_hu: tuple[float, float] = (0.0, 0.0)) -> Anatomy:
    """Sample one patient's anatomy (habitus, organ positions, HU, vessel and airway trees).

    The parenchyma settings (``texture_hu``, ``subpleural_hu``, ``relief_mm``) are drawn last
    and only when non-zero, so anatomy sampled without them is unchanged; so are the habitus
    settings (``chest_wall_mm`` drawn first, ``soft_tissue_fill`` last; habitus.py).
    """
    wall = sample_wall(rng, chest_wall_mm)
    s = float(rng.uniform(*size_scale))
    fat = float(rng.uniform(*fat_mm))
    body_a = 160.0 * s + 0.6 * fat
    body_b = 112.0 * s * rng.uniform(0.92, 1.08) + 0.6 * fat
    muscle = float(rng.uniform(*muscle_mm) * s)
    apex_z = float(rng.uniform(95.0, 120.0) * s)
    dia_r = float(-rng.uniform(105.0, 150.0) * s)
    dia_l = dia_r - float(rng.uniform(8.0, 25.0))
    hu = {
        "fat": float(rng.uniform(-115, -85)),
        "muscle": float(rng.uniform(38, 58)),
        "blood": float(rng.uniform(35, 48)),
        "myocardium": float(rng.uniform(40, 55)),
        "liver": float(rng.uniform(48, 68)),
        "spleen": float(rng.uniform(40, 52)),
        "kidney": float(rng.uniform(28, 40)),
        "bone": float(rng.uniform(650, 1000)),
        "marrow": float(rng.uniform(140, 300)),
        "cartilage": float(rng.uniform(90, 180)),
        "med_fat": float(rng.uniform(-105, -70)),
        "fluid": float(rng.uniform(0, 15)),
    }
    if contrast:
        hu["blood"] = float(rng.uniform(180, 320))
        hu["aorta"] = hu["blood"] * float(rng.uniform(0.9, 1.15))
        hu["pa"] = hu["blood"] * float(rng.uniform(0.8, 1.3))
        hu["vein"] = hu["blood"] * float(rng.uniform(0.6, 0.9))
        hu["myocardium"] = float(rng.uniform(90, 130))
        hu["liver"] = float(rng.uniform(85, 120))
        hu["spleen"] = float(rng.uniform(95, 130))
        hu["kidney"] = float(rng.uniform(140, 200))
    else:
        hu["aorta"] = hu["blood"]
        hu["pa"] = hu["blood"]
        hu["vein"] = hu["blood"]
    waves = np.column_stack([
        rng.normal(size=(4, 3)) * (2 * math.pi / rng.uniform(18.0, 60.0, size=(4, 1))),
        rng.uniform(0, 2 * math.pi, size=4),
    ])
    off = position_offset_mm
    base = Anatomy(
        cx=float(rng.uniform(-off, off)), cy=float(rng.uniform(-off, off) * 0.6),
        z_carina=float(rng.uniform(-220.0, -120.0)), size=s, body_a=body_a, body_b=body_b,
        fat=fat, muscle=muscle, apex_z=apex_z, dia_r=dia_r, dia_l=dia_l,
        heart_scale=float(rng.uniform(*heart_scale)),
        aorta_scale=float(rng.uniform(0.85, 1.25)),
        lung_hu=float(rng.uniform(*lung_hu)), lung_gradient=float(rng.uniform(*lung_gradient_hu)),
        contrast=contrast, hu=hu, rib_spacing=float(rng.uniform(21.0, 25.0) * s),
        rib_drop=float(rng.uniform(110.0, 150.0) * s), vert_phase=float(rng.uniform(0, 30.0)),
        table_y=0.0, waves=waves, segments=np.zeros((0, 9)), nodes=np.zeros((0, 6)),
        wall_mm=wall,
    )
    ac, bc = base.cav_a0, base.cav_b0
    (_hcu, hcv, hcz), (_hru, _hrv, hrz) = base.heart_geometry()
    sp = base.spine_v
    a_s = base.aorta_scale
    tubes = [
        _polyline([(-8 * s, hcv + 10 * s, hcz + 0.55 * hrz), (-16 * s, -28 * s, 15.0),
                   (0.0, -8 * s, 35.0), (22 * s, 0.3 * bc, 25.0),
                   (20 * s, sp - 33 * s, dia_l - 10.0), (6 * s, sp - 32 * s, dia_l - 300.0)],
                  [15 * a_s * s, 15 * a_s * s, 13 * a_s * s, 12 * a_s * s, 11 * a_s * s,
                   10 * a_s * s], AORTA),
        _polyline([(15 * s, -45 * s, hcz + 0.7 * hrz), (8 * s, -15 * s, -12.0)],
                  [13 * s, 12 * s], PA),
        _polyline([(8 * s, -15 * s, -12.0), (-0.42 * ac, 0.0, -15.0)], [10 * s, 9 * s], PA),
        _polyline([(8 * s, -15 * s, -12.0), (0.42 * ac, 5 * s, -5.0)], [10 * s, 9 * s], PA),
        _polyline([(-32 * s, -22 * s, 90.0), (-30 * s, -18 * s, hcz + 0.5 * hrz)],
                  [9 * s, 9 * s], SVC),
        _polyline([(0.0, -8 * s, apex_z + 120.0), (0.0, 5 * s, 0.0)], [9 * s, 9 * s], TRACHEA),
        _polyline([(0.0, 5 * s, 0.0), (-0.32 * ac, 10 * s, -22.0)], [7 * s, 6 * s], BRONCHUS),
        _polyline([(0.0, 5 * s, 0.0), (0.33 * ac, 12 * s, -38.0)], [6 * s, 5.5 * s], BRONCHUS),
        _polyline([(-6 * s, sp - 30 * s, apex_z + 120.0), (-6 * s, sp - 30 * s, dia_l - 20.0)],
                  [7 * s, 7 * s], ESOPHAGUS),
    ]
    # lung vessel and airway trees
    rh, lh = (-0.42 * ac, 0.0, -15.0), (0.42 * ac, 5 * s, -5.0)
    art_roots = np.asarray([
        (*rh, -0.3, -0.1, 1.0, 6.0 * s), (*rh, -0.5, -0.8, -0.4, 5.0 * s),
        (*rh, -0.3, 0.5, -1.0, 6.0 * s), (*lh, 0.3, -0.2, 1.0, 6.0 * s),
        (*lh, 0.3, 0.5, -1.0, 6.0 * s), (*lh, 0.4, -0.8, -0.5, 4.5 * s),
    ])
    vr, vl = (-0.3 * ac, 12 * s, hcz + 15.0), (0.3 * ac, 14 * s, hcz + 15.0)
    vein_roots = np.asarray([
        (*vr, -0.6, 0.1, 0.8, 5.5 * s), (*vr, -0.6, 0.4, -0.6, 5.5 * s),
        (*vl, 0.6, 0.1, 0.8, 5.0 * s), (*vl, 0.6, 0.4, -0.6, 5.0 * s),
    ])
    rb, lb = (-0.32 * ac, 10 * s, -22.0), (0.33 * ac, 12 * s, -38.0)
    air_roots = np.asarray([
        (*rb, -0.3, -0.2, 1.0, 5.0 * s), (*rb, -0.4, -0.7, -0.5, 4.0 * s),
        (*rb, -0.3, 0.5, -1.0, 5.0 * s), (*lb, 0.3, -0.2, 1.0, 5.0 * s),
        (*lb, 0.3, 0.5, -1.0, 5.0 * s),
    ])
    trees = [
        _grow_trees(rng, base, art_roots, ARTERY, vessel_generations, 0.35),
        _grow_trees(rng, base, vein_roots, VEIN, vessel_generations, 0.35),
        _grow_trees(rng, base, air_roots, AIRWAY, max(2, vessel_generations - 3), 1.0),
    ]
    segments = np.concatenate([*tubes, *trees])
    stations = np.asarray([(-15, -5, 15), (12, 0, 10), (3, 18, -25), (25, -12, 12),
                           (-15, -12, 45), (-0.36 * ac / s, 0, -20), (0.36 * ac / s, 5, -12)])
    n_nodes = int(rng.integers(3, 7))
    pick = rng.choice(len(stations), size=n_nodes, replace=False)
    nodes = []
    for k in pick:
        sa = rng.uniform(2.0, 4.5)
        cu, cv, cz = stations[k] * np.asarray([s, s, 1.0])
        nodes.append((cu + rng.normal(0, 3), cv + rng.normal(0, 3), cz + rng.normal(0, 5),
                      sa * rng.uniform(1.0, 1.4), sa, sa * rng.uniform(1.2, 1.8)))
    table_y = base.cy + base.body_b * 1.06 + 6.0
    par = sample_parenchyma(rng, texture_hu, subpleural_hu, relief_mm, texture_skew)
    fill = sample_soft_fill(rng, soft_tissue_fill, s)
    soft_tex = sample_soft_texture(rng, soft_texture_hu)
    return _replace(base, segments=segments, nodes=np.asarray(nodes), table_y=table_y,
                    parenchyma=par, rib_offset_mm=float(rib_offset_mm), soft_fill=fill,
                    soft_texture=soft_tex)


def _replace(an: Anatomy, **kw: Any) -> Anatomy:
    import dataclasses

    return dataclasses.replace(an, **kw)


def with_cardiac_extra(an: Anatomy, extra: float) -> Anatomy:
    return _replace(an, cardiac_extra=extra)


# --------------------------------------------------------------------------- rendering

@dataclass(frozen=True)
class Physics:
    """Image-formation parameters of one acquisition."""

    kvp: float
    mas: float
    thickness_mm: float
    kernel_sharp: bool
    psf_fwhm_mm: float
    noise_ref_hu: float
    noise_scale: float
    beam_hardening_hu: float
    noise: bool

    def noise_sd(self, an: Anatomy, pixel_mm: float) -> float:
        """Quantum-noise SD (HU) of one voxel of this acquisition on a ``pixel_mm`` grid."""
        if not self.noise:
            return 0.0
        width = an.body_a + an.body_b  # mean diameter
        sd = (self.noise_ref_hu * self.noise_scale * math.sqrt(200.0 / self.mas)
              * (120.0 / self.kvp) ** 1.4 * math.exp(0.006 * (width - 330.0))
              * math.sqrt(5.0 / self.thickness_mm) * (0.78 / pixel_mm) ** 0.5)
        return float(sd * (2.5 if self.kernel_sharp else 1.0))


@dataclass
class RenderResult:
    """A rendered volume: HU (float32, clipped to [-1024, 3071]) and the finding label map."""

    hu: F32
    labels: npt.NDArray[np.uint8]
    grid: Grid


def _gauss_kernel(sigma_px: float) -> F32:
    if sigma_px < 0.2:
        return np.ones(1, dtype=np.float32)
    r = max(1, math.ceil(3.0 * sigma_px))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_px) ** 2)
    return np.asarray((k / k.sum()).astype(np.float32))


def blur_axis(a: F32, kernel: F32, axis: int) -> F32:
    """Separable 1-D convolution with edge replication (vectorised shifted sums)."""
    if kernel.size == 1:
        return a
    r = kernel.size // 2
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r, r)
    p = np.pad(a, pad, mode="edge")
    out = np.zeros_like(a)
    n = a.shape[axis]
    for i, w in enumerate(kernel):
        sl = [slice(None)] * a.ndim
        sl[axis] = slice(i, i + n)
        out += w * p[tuple(sl)]
    return out


def blur_inplane(a: F32, sigma_px: tuple[float, float]) -> F32:
    a = blur_axis(a, _gauss_kernel(sigma_px[0]), a.ndim - 2)
    return blur_axis(a, _gauss_kernel(sigma_px[1]), a.ndim - 1)


def z_subsamples(thickness: float, inplane: float) -> int:
    """Sub-slices per slice used to integrate the slice profile (sub-slices <= 2.5 mm apart)."""
    return max(2 if thickness > 2.5 else 1, math.ceil(thickness / max(2.5, 1.5 * inplane)))


def _capsules(occ: F32, segs: FArr, zc: FArr, yc: FArr, xc: FArr, w: float,
              grow: float = 0.0, r_scale: float = 1.0) -> None:
    """Max-composite soft tapered capsules into ``occ`` (world-coordinate segment rows)."""
    z0, y0, x0 = zc[0], yc[0], xc[0]
    dz = zc[1] - zc[0] if zc.size > 1 else 1.0
    dy, dx = yc[1] - yc[0], xc[1] - xc[0]
    nz, ny, nx = occ.shape
    for row in segs:
        ax, ay, az, bx, by, bz, r0, r1 = (float(x) for x in row[:8])
        r0 = r0 * r_scale + grow
        r1 = r1 * r_scale + grow
        rm = max(r0, r1) + w
        lo = np.floor((np.minimum([az, ay, ax], [bz, by, bx]) - rm - [z0, y0, x0])
                      / [dz, dy, dx]).astype(int)
        hi = np.ceil((np.maximum([az, ay, ax], [bz, by, bx]) + rm - [z0, y0, x0])
                     / [dz, dy, dx]).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, [nz, ny, nx])
        if np.any(hi <= lo):
            continue
        pz = zc[lo[0]:hi[0], None, None] - az
        py = yc[None, lo[1]:hi[1], None] - ay
        px = xc[None, None, lo[2]:hi[2]] - ax
        ez, ey, ex = bz - az, by - ay, bx - ax
        ll = ez * ez + ey * ey + ex * ex
        t = np.clip((pz * ez + py * ey + px * ex) / max(ll, 1e-9), 0.0, 1.0)
        d = np.sqrt((pz - t * ez) ** 2 + (py - t * ey) ** 2 + (px - t * ex) ** 2)
        o = np.clip(0.5 - (d - (r0 + t * (r1 - r0))) / w, 0.0, 1.0)
        view = occ[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        np.maximum(view, o, out=view)


def _deposit(occ: F32, segs: FArr, zc: FArr, yc: FArr, xc: FArr, step: float) -> None:
    """Add the partial volume of sub-voxel segments into the voxels their axis passes through."""
    if segs.shape[0] == 0:
        return
    a, b = segs[:, [2, 1, 0]], segs[:, [5, 4, 3]]  # (z, y, x)
    length = np.linalg.norm(b - a, axis=1)
    n = np.maximum(1, np.ceil(length / step).astype(int))
    rep = np.repeat(np.arange(segs.shape[0]), n)
    frac = (np.arange(rep.size) - np.repeat(np.cumsum(n) - n, n) + 0.5) / np.repeat(n, n)
    pts = a[rep] + (b - a)[rep] * frac[:, None]
    r = segs[rep, 6] + (segs[rep, 7] - segs[rep, 6]) * frac
    dl = (length / n)[rep]
    sp = np.asarray([zc[1] - zc[0] if zc.size > 1 else 1.0, yc[1] - yc[0], xc[1] - xc[0]])
    idx = np.rint((pts - [zc[0], yc[0], xc[0]]) / sp).astype(int)
    ok = np.all((idx >= 0) & (idx < occ.shape), axis=1)
    vol = math.pi * r**2 * dl / float(np.prod(sp))
    flat = np.ravel_multi_index(tuple(idx[ok].T), occ.shape)
    acc = np.bincount(flat, weights=vol[ok], minlength=occ.size).astype(np.float32)
    np.maximum(occ, np.minimum(acc.reshape(occ.shape), 1.0), out=occ)


class _Ctx:
    """Coordinates and state of one rendered chunk (anatomy coordinates, broadcastable)."""

    def __init__(self, an: Anatomy, zs: FArr, ys: FArr, xs: FArr, w: float) -> None:
        self.an = an
        self.zw, self.yw, self.xw = (a.astype(np.float32) for a in (zs, ys, xs))
        self.za = (zs - an.z_carina).astype(np.float32)[:, None, None]
        self.v = (ys - an.cy).astype(np.float32)[None, :, None]
        self.u = (xs - an.cx).astype(np.float32)[None, None, :]
        self.w = w
        self.shape = (zs.size, ys.size, xs.size)
        self.hu = np.full(self.shape, -1000.0, dtype=np.float32)
        self.labels = np.zeros(self.shape, dtype=np.uint8)
        self.u3, self.v3, self.za3 = np.broadcast_arrays(self.u, self.v, self.za)

    def label(self, occ: FArr, index: int) -> None:
        self.labels[np.broadcast_to(occ >= 0.5, self.shape)] = index + 1

    def segs_world(self, segs: FArr) -> FArr:
        out = segs.copy()
        an = self.an
        out[:, [0, 3]] += an.cx
        out[:, [1, 4]] += an.cy
        out[:, [2, 5]] += an.z_carina
        return out


def render(an: Anatomy, findings: Sequence[Finding], grid: Grid, physics: Physics,
           noise_rng: np.random.Generator | None, *, chunk_slices: int = 16,
           extra_smoothing_mm: float = 0.0, extra_z_mm: float | None = None) -> RenderResult:
    """Render the patient on ``grid`` with partial volume, PSF, cupping and noise.

    ``extra_smoothing_mm`` (Gaussian SD, in-plane and z) is used by the fast path to match the
    anti-aliasing of "read DICOM -> resample"; 0 for the DICOM path.
    """
    nz, ny, nx = grid.shape
    dz, dy, dx = grid.spacing
    zs, ys, xs = grid.axes()
    nsub = z_subsamples(physics.thickness_mm, min(dy, dx))
    offsets = ((np.arange(nsub) + 0.5) / nsub - 0.5) * physics.thickness_mm
    w = float(min(dy, dx))
    hu = np.empty(grid.shape, dtype=np.float32)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    for k0 in range(0, nz, chunk_slices):
        k1 = min(nz, k0 + chunk_slices)
        zsub = (zs[k0:k1, None] + offsets[None, :]).ravel()
        # render only the body's bounding box; the rest is air and the table
        ba, bb = an.body_axes(zsub - an.z_carina)
        amax, bmax = float(np.max(ba)) + 3 * w, float(np.max(bb)) + 3 * w
        j0, j1 = np.searchsorted(ys, [an.cy - bmax, an.cy + bmax])
        i0, i1 = np.searchsorted(xs, [an.cx - amax, an.cx + amax])
        full = np.full((zsub.size, ny, nx), -1000.0, dtype=np.float32)
        _table(full, an, ys, xs, w)
        lab = np.zeros((zsub.size, ny, nx), dtype=np.uint8)
        if j1 > j0 and i1 > i0:
            ctx = _Ctx(an, zsub, ys[j0:j1], xs[i0:i1], w)
            ctx.hu[:] = full[:, j0:j1, i0:i1]
            _render_chunk(ctx, findings)
            full[:, j0:j1, i0:i1] = ctx.hu
            lab[:, j0:j1, i0:i1] = ctx.labels
        hu[k0:k1] = full.reshape(k1 - k0, nsub, ny, nx).mean(axis=1)
        labels[k0:k1] = lab.reshape(k1 - k0, nsub, ny, nx).max(axis=1)
    sig = physics.psf_fwhm_mm / 2.355 * (0.6 if physics.kernel_sharp else 1.0)
    sig_y = math.sqrt(sig**2 + extra_smoothing_mm**2) / dy
    sig_x = math.sqrt(sig**2 + extra_smoothing_mm**2) / dx
    hu = blur_inplane(hu, (sig_y, sig_x))
    ez = extra_smoothing_mm if extra_z_mm is None else extra_z_mm
    if ez > 0:
        hu = blur_axis(hu, _gauss_kernel(ez / dz), 0)
    if physics.beam_hardening_hu > 0:
        a, b = an.body_axes((zs - an.z_carina)[:, None, None])
        rn2 = ((xs - an.cx)[None, None, :] / a) ** 2 + ((ys - an.cy)[None, :, None] / b) ** 2
        hu -= (physics.beam_hardening_hu * np.clip(1.0 - rn2, 0.0, 1.0)).astype(np.float32)
    if noise_rng is not None and physics.noise:
        sd = physics.noise_sd(an, w)
        hu += correlated_noise(noise_rng, grid.shape, physics.kernel_sharp, (dy, dx), sd)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    return RenderResult(hu=hu, labels=labels, grid=grid)


def correlated_noise(rng: np.random.Generator, shape: tuple[int, int, int], sharp: bool,
                     pixel: tuple[float, float], sd: float) -> F32:
    """Gaussian noise with a kernel-dependent in-plane correlation, scaled to SD ``sd``."""
    white = rng.standard_normal(size=shape, dtype=np.float32)
    corr_mm = 0.35 if sharp else 0.75
    ky, kx = _gauss_kernel(corr_mm / pixel[0]), _gauss_kernel(corr_mm / pixel[1])
    n = blur_axis(blur_axis(white, ky, 1), kx, 2)
    gain = math.sqrt(float((ky**2).sum()) * float((kx**2).sum()))
    return (n * np.float32(sd / gain)).astype(np.float32)


def _texture(ctx: _Ctx) -> F32:
    t = np.zeros(ctx.shape, dtype=np.float32)
    for term in wave_terms(ctx.an.waves, ctx.u, ctx.v, ctx.za):
        t += term
    return t * np.float32(0.7)


def _table(hu: F32, an: Anatomy, ys: FArr, xs: FArr, w: float) -> None:
    """Carbon-fibre table (shells with a foam core), in scanner coordinates; same every slice."""
    ty = an.table_y + 0.0004 * xs[None, :] ** 2
    dyt = ys[:, None] - ty
    in_x = np.abs(xs)[None, :] < 230.0
    sl = np.full(hu.shape[1:], -1000.0, dtype=np.float32)
    paint(sl, soft(np.abs(dyt - 7.0) - 7.0, w) * in_x, -700.0)
    paint(sl, soft(np.abs(dyt - 1.0) - 1.0, w) * in_x, 250.0)
    paint(sl, soft(np.abs(dyt - 13.0) - 1.0, w) * in_x, 250.0)
    hu[:] = sl[None]


def _render_chunk(ctx: _Ctx, findings: Sequence[Finding]) -> None:
    from medassist.synth import findings as fnd

    an, hu, w = ctx.an, ctx.hu, ctx.w
    u, v, za = ctx.u, ctx.v, ctx.za
    tex = _texture(ctx)
    by_kind: dict[str, list[Finding]] = {}
    for f in findings:
        by_kind.setdefault(f.kind, []).append(f)

    # body: fat, then muscle, then ribs / spine / sternum, then the cavity
    ba, bb = an.body_axes(za)
    paint(hu, soft(sd_superellipse(u, v, ba, bb, 2.4), w), an.hu["fat"] + 6.0 * tex)
    ia, ib = ba - an.fat, bb - 0.8 * an.fat
    paint(hu, soft(sd_superellipse(u, v, ia, ib, 2.0), w), an.hu["muscle"] + 4.0 * tex)
    # intermuscular fat plane
    paint(hu, soft(np.abs(sd_superellipse(u, v, ia, ib, 2.0) + 0.45 * an.muscle) - 1.5, w) * 0.6,
          an.hu["fat"])
    _ribs(ctx, by_kind.get("rib_fracture", []))

    sd_cav = an.sd_cavity(u, v, za)
    cav = soft(sd_cav, w)
    paint(hu, cav, an.hu["med_fat"] + 5.0 * tex)
    if an.soft_fill is not None:
        _inlet(ctx, cav, tex, an.soft_fill)
    _abdomen(ctx, sd_cav, tex, by_kind.get("liver_lesion", []))

    # lungs
    sd_l = an.sd_lung(u, v, za)
    lung = soft(sd_l, w)
    posterior = np.clip((v / an.cav_b0 + 1.0) / 2.0, 0, 1)
    lung_val = an.lung_hu + an.lung_gradient * posterior**2
    if an.parenchyma is not None:
        lung_val = (lung_val + an.parenchyma.texture(u, v, za)
                    + an.parenchyma.subpleural(sd_l, posterior))
    paint(hu, lung, lung_val + 12.0 * tex)
    for f in by_kind.get("emphysema", []):
        fnd.paint_emphysema(ctx, f, lung)
    for f in by_kind.get("consolidation", []):
        fnd.paint_region(ctx, f, fnd.sd_finding(an, f, u, v, za),
                         an.hu["muscle"] - 10 + (25.0 if an.contrast else 0.0))
    # vessels and airways
    segs = an.segments
    lung_segs = segs[segs[:, 8] <= AIRWAY]
    zlo, zhi = float(za.min()) - 10, float(za.max()) + 10
    zsel = (np.minimum(lung_segs[:, 2], lung_segs[:, 5]) - lung_segs[:, 6:8].max(1) < zhi) & (
        np.maximum(lung_segs[:, 2], lung_segs[:, 5]) + lung_segs[:, 6:8].max(1) > zlo)
    lung_segs = ctx.segs_world(lung_segs[zsel])
    big = lung_segs[:, 6] >= 0.6 * w
    for kind, value in ((ARTERY, an.hu["pa"]), (VEIN, an.hu["vein"])):
        occ = np.zeros(ctx.shape, dtype=np.float32)
        sel = lung_segs[:, 8] == kind
        _capsules(occ, lung_segs[sel & big], ctx.zw, ctx.yw, ctx.xw, w)
        _deposit(occ, lung_segs[sel & ~big], ctx.zw, ctx.yw, ctx.xw, 0.5 * w)
        paint(hu, occ, value)
    air = lung_segs[(lung_segs[:, 8] == AIRWAY) & (lung_segs[:, 6] >= 0.5 * w)]
    occ = np.zeros(ctx.shape, dtype=np.float32)
    _capsules(occ, air, ctx.zw, ctx.yw, ctx.xw, w, grow=0.0, r_scale=1.35)
    paint(hu, occ, 10.0)
    occ[:] = 0.0
    _capsules(occ, air, ctx.zw, ctx.yw, ctx.xw, w)
    paint(hu, occ, -1000.0)
    for fkind in ("pleural_effusion",):
        for f in by_kind.get(fkind, []):
            fnd.paint_region(ctx, f, fnd.sd_finding(an, f, u, v, za),
                             an.hu["fluid"] + 3.0 * tex)
    for f in by_kind.get("pneumothorax", []):
        fnd.paint_region(ctx, f, fnd.sd_finding(an, f, u, v, za), -1000.0)
    for f in by_kind.get("lung_nodule", []) + by_kind.get("lung_mass", []):
        fnd.paint_nodule(ctx, f)

    _mediastinum(ctx, by_kind)
    _spine_sternum(ctx, tex)
    if an.soft_texture is not None:
        # fat and soft tissue outside the lungs (not air, lung or bone); labels unchanged
        body = (hu > -150.0) & (hu < 150.0) & (sd_l > 1.0)
        hu += np.where(body, an.soft_texture.field(u, v, za), np.float32(0.0))


def _tube_paint(ctx: _Ctx, segs: FArr, value: float, grow: float = 0.0) -> None:
    if segs.shape[0] == 0:
        return
    occ = np.zeros(ctx.shape, dtype=np.float32)
    _capsules(occ, ctx.segs_world(segs), ctx.zw, ctx.yw, ctx.xw, ctx.w, grow=grow)
    paint(ctx.hu, occ, value)


def _mediastinum(ctx: _Ctx, by_kind: dict[str, list[Finding]]) -> None:
    from medassist.synth import findings as fnd

    an, hu, w = ctx.an, ctx.hu, ctx.w
    u, v, za = ctx.u, ctx.v, ctx.za
    segs = an.segments
    # heart with pericardial fat, optional pericardial effusion, myocardium and blood pool
    c, r = an.heart_geometry(an.cardiac_extra)
    du, dv, dz = u - c[0], v - c[1], za - c[2]
    if float(za.min()) < c[2] + r[2] + 40 and float(za.max()) > c[2] - r[2] - 40:
        paint(hu, soft(sd_ellipsoid(du, dv, dz, [x + 5.0 for x in r]), w), an.hu["fat"])
        for f in by_kind.get("pericardial_effusion", []):
            fnd.paint_region(ctx, f, fnd.sd_finding(an, f, u, v, za), an.hu["fluid"] + 5.0)
        heart_occ = soft(sd_ellipsoid(du, dv, dz, r), w)
        paint(hu, heart_occ, an.hu["myocardium"])
        paint(hu, soft(sd_ellipsoid(du, dv, dz, [x - 10.0 for x in r]), w), an.hu["blood"])
        for f in by_kind.get("cardiomegaly", []):
            ctx.label(heart_occ, f.index)
    _tube_paint(ctx, segs[segs[:, 8] == AORTA], an.hu["aorta"])
    _tube_paint(ctx, segs[segs[:, 8] == PA], an.hu["pa"])
    _tube_paint(ctx, segs[segs[:, 8] == SVC], an.hu["vein"])
    _tube_paint(ctx, segs[segs[:, 8] == ESOPHAGUS], an.hu["muscle"] - 5)
    air = segs[(segs[:, 8] == TRACHEA) | (segs[:, 8] == BRONCHUS)]
    _tube_paint(ctx, air, 20.0, grow=2.0)
    _tube_paint(ctx, air, -1000.0)
    node_val = an.hu["muscle"] - 5.0 + (25.0 if an.contrast else 0.0)
    for nu, nv, nzz, ru, rv, rz in an.nodes:
        if float(za.min()) - rz < nzz < float(za.max()) + rz:
            paint(hu, soft(sd_ellipsoid(u - nu, v - nv, za - nzz, (ru, rv, rz)), w), node_val)
    for f in by_kind.get("mediastinal_lymphadenopathy", []):
        fnd.paint_region(ctx, f, fnd.sd_finding(an, f, u, v, za), node_val)


def _ribs(ctx: _Ctx, fractures: Sequence[Finding]) -> None:
    an, hu, w = ctx.an, ctx.hu, ctx.w
    hw, hh = 3.5 * an.size, 5.5 * an.size
    am, bm = an.rib_axes(ctx.za)
    dr = (np.sqrt((ctx.u / am) ** 2 + (ctx.v / bm) ** 2) - 1.0) * np.minimum(am, bm)
    band = np.broadcast_to(np.abs(dr) < hw + 2 * w, ctx.shape)
    if not band.any():
        return
    ub, vb, zab = ctx.u3[band], ctx.v3[band], ctx.za3[band]
    drb, phib, _am, half_per = an.rib_frame(ub, vb, zab)
    bone = np.zeros(drb.shape, dtype=np.float32)
    marrow = np.zeros(drb.shape, dtype=np.float32)
    lab = np.zeros(drb.shape, dtype=np.int64)
    sides = np.where(ub < 0, 0, 1)
    for i in range(N_RIBS):
        zc = an.rib_centre_z(i, phib)
        if float(np.min(np.abs(zab - zc))) > hh + 2 * w:
            continue
        extent = np.clip((an.rib_end(i) - phib) / 0.02 + 0.5, 0.0, 1.0)
        for f in fractures:
            if f.extra["rib"] != i:
                continue
            sgn_side = 0 if f.attrs["side"] == "right" else 1
            mine = sides == sgn_side
            arc = (phib - f.extra["phi"]) * half_per
            zc = np.where(mine & (arc > 0), zc + f.extra["displacement"], zc)
            gap = np.clip(np.abs(arc) - f.extra["gap"] / 2.0, 0.0, None)
            extent = np.where(mine, extent * np.clip(gap / w, 0.0, 1.0), extent)
            e0 = np.sqrt(((zab - an.rib_centre_z(i, phib)) / hh) ** 2 + (drb / hw) ** 2)
            site = mine & (e0 < 1.0) & (np.abs(arc) <= f.extra["gap"] / 2.0 + 4.0)
            lab[site] = f.index + 1
        e = np.sqrt(((zab - zc) / hh) ** 2 + (drb / hw) ** 2)
        np.maximum(bone, np.clip(0.5 - (e - 1.0) * hw / w, 0, 1) * extent, out=bone)
        np.maximum(marrow, np.clip(0.5 - (e - 0.55) * hw / w, 0, 1) * extent, out=marrow)
    full = np.zeros(ctx.shape, dtype=np.float32)
    full[band] = bone
    paint(hu, full, an.hu["bone"])
    full[band] = marrow
    paint(hu, full, an.hu["marrow"])
    if fractures:
        full_lab = np.zeros(ctx.shape, dtype=np.int64)
        full_lab[band] = lab
        ctx.labels[full_lab > 0] = full_lab[full_lab > 0].astype(np.uint8)


def _spine_sternum(ctx: _Ctx, tex: F32) -> None:
    an, hu, w = ctx.an, ctx.hu, ctx.w
    u, v, za = ctx.u, ctx.v, ctx.za
    s = an.size
    sv = an.spine_v
    period = 27.0 * s
    ph = np.mod(za - an.vert_phase, period) / period
    disc = (ph < 0.2).astype(np.float32)
    body = sd_superellipse(u, v - sv, 20.0 * s, 16.0 * s, 2.2)
    occ = soft(body, w)
    paint(hu, occ, an.hu["bone"] * (1 - disc) + 90.0 * disc)
    paint(hu, soft(body + 2.0, w) * (1 - disc), an.hu["marrow"] + 20.0 * tex)
    canal = np.sqrt(u**2 + (v - sv - 27.0 * s) ** 2)
    arch = soft(np.abs(canal - 12.0 * s) - 3.0 * s, w)
    spinous = soft(np.maximum(np.abs(u) - 4.5 * s, np.abs(v - sv - 50.0 * s) - 14.0 * s), w)
    transverse = soft(np.maximum(np.abs(u) - 27.0 * s, np.abs(v - sv - 28.0 * s) - 4.0 * s), w)
    post = np.maximum(np.maximum(arch, spinous), transverse) * (1 - 0.7 * disc)
    paint(hu, post, an.hu["bone"] * 0.8)
    paint(hu, soft(canal - 9.0 * s, w), 15.0)
    # sternum
    _ac, bc = an.cavity_axes(za)
    top, bot = an.apex_z - 15.0, an.dia_r + 20.0
    zin = np.clip((top - za) / w + 0.5, 0, 1) * np.clip((za - bot) / w + 0.5, 0, 1)
    st = np.maximum(np.abs(u) - 14.0 * s, np.abs(v + bc + 7.0) - 6.0 * s)
    paint(hu, soft(st, w) * zin, an.hu["bone"])
    paint(hu, soft(st + 1.5, w) * zin, an.hu["marrow"])


def _inlet(ctx: _Ctx, cav: F32, tex: F32, fill: SoftFill) -> None:
    """Soft tissue in the cavity above the thoracic inlet, and the clavicles (habitus.py)."""
    an, za = ctx.an, ctx.za
    if float(za.max()) > an.apex_z - NECK_BELOW_APEX_MM - 2 * ctx.w:
        inlet = soft(an.apex_z - NECK_BELOW_APEX_MM - za, ctx.w)
        paint(ctx.hu, cav * inlet, an.hu["muscle"] + fill.neck_hu + 5.0 * tex)
    s, r = an.size, fill.clavicle_mm
    ac, bc = an.cav_a0, an.cav_b0
    ends = [((sgn * 18.0 * s, -bc - 0.5 * r, an.apex_z - 12.0),
             (sgn * 0.85 * ac, -0.55 * bc, an.apex_z + 12.0)) for sgn in (-1.0, 1.0)]
    segs = np.asarray([[*a, *b, r, r, -1] for a, b in ends])
    _tube_paint(ctx, segs, an.hu["bone"])
    _tube_paint(ctx, segs, an.hu["marrow"], grow=-0.45 * r)


def _abdomen(ctx: _Ctx, sd_cav: FArr, tex: F32, lesions: Sequence[Finding]) -> None:
    from medassist.synth import findings as fnd

    an, hu, w = ctx.an, ctx.hu, ctx.w
    u, v, za = ctx.u, ctx.v, ctx.za
    if float(za.min()) > max(an.dia_r, an.dia_l) + 5:
        return
    s = an.size
    zd = an.diaphragm_z(u, v, za)
    inside = soft(sd_cav + 1.0, w)
    below = soft(za - (zd - 5.0), w)
    paint(hu, inside * soft(np.abs(za - (zd - 2.5)) - 2.5, w), an.hu["muscle"])
    if an.soft_fill is not None:
        paint(hu, inside * below, an.soft_fill.abdomen_hu + 6.0 * tex)
    sd_liv = sd_liver(an, u, v, za)
    paint(hu, soft(sd_liv, w), an.hu["liver"] + 5.0 * tex)
    for f in lesions:
        fnd.paint_region(ctx, f, fnd.sd_finding(an, f, u, v, za), fnd.liver_lesion_hu(an, f))
    ac, bc = an.cav_a0, an.cav_b0
    sp = sd_ellipsoid(u - 0.62 * ac, v - 0.45 * bc, za - (an.dia_l - 55.0 * s),
                      (30.0 * s, 45.0 * s, 50.0 * s))
    paint(hu, soft(sp, w) * below * inside, an.hu["spleen"] + 4.0 * tex)
    st_c = (u - 0.35 * ac, v + 0.15 * bc, za - (an.dia_l - 50.0 * s))
    st_r = (48.0 * s, 38.0 * s, 42.0 * s)
    st = sd_ellipsoid(*st_c, st_r)
    mask = below * inside
    paint(hu, soft(st, w) * mask, an.hu["muscle"])
    paint(hu, soft(st + 4.0, w) * mask, an.hu["fluid"] + 10.0)
    gas = np.maximum(st + 4.0, st_c[1] + 0.3 * st_r[1])
    paint(hu, soft(gas, w) * mask, -1000.0)
    for sgn, dzk in ((-1.0, -15.0), (1.0, 0.0)):
        k = sd_ellipsoid(u - sgn * 68.0 * s, v - (an.spine_v - 2.0 * s),
                         za - (an.dome(np.asarray(sgn * 50.0)) - 125.0 * s + dzk),
                         (26.0 * s, 22.0 * s, 52.0 * s))
        paint(hu, soft(k, w), an.hu["kidney"])


def sd_liver(an: Anatomy, u: FArr, v: FArr, za: FArr) -> FArr:
    """Signed distance to the liver (right upper quadrant, under the diaphragm)."""
    ac, bc = an.cav_a0, an.cav_b0
    zd = an.diaphragm_z(u, v, za)
    reach = LIVER_REACH if an.soft_fill is None else an.soft_fill.liver_reach
    ulim = reach * ac - 0.35 * ac * np.clip((v + 0.2 * bc) / (0.8 * bc), 0.0, 1.0)
    sd = np.maximum(an.sd_cavity(u, v, za) + 3.0, za - (zd - 6.0))
    sd = np.maximum(sd, u - ulim)
    sd = np.maximum(sd, (an.dia_r - 150.0 * an.size) - za)
    spine = np.sqrt(u**2 + (v - an.spine_v) ** 2) - 38.0 * an.size
    return np.asarray(np.maximum(sd, -spine))
