"""Finding vocabulary, placement of findings in the anatomy, and their painters.

Every finding lives in the anatomy: nodules and consolidation in a lung lobe, effusions layering
in the dependent pleural space, a pneumothorax as a non-dependent rim, lymph nodes at mediastinal
stations, liver lesions in the liver, a rib fracture as a gap in one rib.  Each finding is a
signed-distance region (:func:`sd_finding`); its labelled voxels are the region's
partial-volume occupancy >= 0.5, and its stated extent is measured on a fine grid at placement
(or is analytic for ellipsoids), so truth, label map and image agree on any grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from medassist.synth.errors import SynthConfigError
from medassist.synth.phantom import (
    F32,
    LOBE_NAMES,
    LOBES,
    N_RIBS,
    Anatomy,
    FArr,
    _capsules,
    paint,
    sd_ellipsoid,
    sd_liver,
    soft,
)

if TYPE_CHECKING:
    from medassist.synth.phantom import _Ctx

KINDS: tuple[str, ...] = (
    "lung_nodule", "lung_mass", "consolidation", "pleural_effusion", "pneumothorax",
    "emphysema", "mediastinal_lymphadenopathy", "pericardial_effusion", "cardiomegaly",
    "liver_lesion", "rib_fracture",
)

#: Lymph-node stations: (u, v, z) in anatomy coordinates (u, v scaled by body size).
STATIONS: dict[str, tuple[float, float, float]] = {
    "2R": (-16.0, -12.0, 45.0), "4R": (-16.0, -5.0, 15.0), "4L": (18.0, 0.0, 10.0),
    "5": (26.0, -12.0, 12.0), "7": (3.0, 18.0, -25.0),
}
STATION_NAMES: dict[str, str] = {
    "2R": "right upper paratracheal (station 2R)",
    "4R": "right lower paratracheal (station 4R)",
    "4L": "left lower paratracheal (station 4L)",
    "5": "aortopulmonary window (station 5)",
    "7": "subcarinal (station 7)",
}


# --------------------------------------------------------------------------- vocabulary

@dataclass(frozen=True)
class AttributeSpec:
    """A categorical attribute: options and their probabilities."""

    options: tuple[str, ...]
    probabilities: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.options or len(self.options) != len(self.probabilities):
            raise SynthConfigError(
                "attribute options and probabilities must match and be non-empty")
        if any(p < 0 for p in self.probabilities) or sum(self.probabilities) <= 0:
            raise SynthConfigError("attribute probabilities must be >= 0 with a positive sum")

    def sample(self, rng: np.random.Generator) -> str:
        p = np.asarray(self.probabilities, dtype=np.float64)
        return self.options[int(rng.choice(len(self.options), p=p / p.sum()))]


@dataclass(frozen=True)
class FindingSpec:
    """One vocabulary entry of ``configs/findings.yaml``."""

    name: str
    weight: float
    size_mm: tuple[float, float]
    size_median_mm: float
    size_sigma: float
    attributes: tuple[tuple[str, AttributeSpec], ...] = ()

    def __post_init__(self) -> None:
        if self.name not in KINDS:
            raise SynthConfigError(f"unknown finding {self.name!r}; known: {', '.join(KINDS)}")
        if self.weight < 0:
            raise SynthConfigError(f"{self.name}.weight must be >= 0")
        lo, hi = self.size_mm
        if not 0 < lo <= hi:
            raise SynthConfigError(f"{self.name}.size_mm must be 0 < min <= max")
        if self.size_sigma <= 0 or self.size_median_mm <= 0:
            raise SynthConfigError(f"{self.name}: size_median_mm and size_sigma must be > 0")

    def attribute(self, name: str) -> AttributeSpec | None:
        return dict(self.attributes).get(name)

    def sample_size(self, rng: np.random.Generator) -> float:
        """Long-tailed (log-normal) size truncated to ``size_mm`` by rejection."""
        lo, hi = self.size_mm
        for _ in range(100):
            x = float(np.exp(rng.normal(math.log(self.size_median_mm), self.size_sigma)))
            if lo <= x <= hi:
                return x
        return float(rng.uniform(lo, hi))


@dataclass(frozen=True)
class Vocabulary:
    specs: tuple[FindingSpec, ...]

    def __post_init__(self) -> None:
        if not self.specs or sum(s.weight for s in self.specs) <= 0:
            raise SynthConfigError("the finding vocabulary needs at least one positive weight")

    def get(self, name: str) -> FindingSpec | None:
        for s in self.specs:
            if s.name == name:
                return s
        return None


def vocabulary_from_mapping(data: Mapping[str, Any]) -> Vocabulary:
    body = data.get("findings")
    if not isinstance(body, Mapping):
        raise SynthConfigError("findings vocabulary must hold a 'findings' mapping")
    specs = []
    for name, entry in body.items():
        if not isinstance(entry, Mapping):
            raise SynthConfigError(f"finding {name!r} must be a mapping")
        unknown = set(entry) - {"weight", "size_mm", "size_median_mm", "size_sigma", "attributes"}
        if unknown:
            raise SynthConfigError(f"finding {name!r}: unknown keys {sorted(unknown)}")
        attrs_raw = entry.get("attributes") or {}
        if not isinstance(attrs_raw, Mapping):
            raise SynthConfigError(f"finding {name!r}: attributes must be a mapping")
        attrs = []
        for an, opts in attrs_raw.items():
            if not isinstance(opts, Mapping):
                raise SynthConfigError(f"finding {name!r}.{an}: must map option -> probability")
            attrs.append((str(an), AttributeSpec(tuple(str(k) for k in opts),
                                                 tuple(float(v) for v in opts.values()))))
        try:
            size = entry["size_mm"]
            specs.append(FindingSpec(
                name=str(name), weight=float(entry["weight"]),
                size_mm=(float(size[0]), float(size[1])),
                size_median_mm=float(entry["size_median_mm"]),
                size_sigma=float(entry["size_sigma"]), attributes=tuple(attrs),
            ))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise SynthConfigError(f"finding {name!r}: {exc!r}") from exc
    return Vocabulary(tuple(specs))


def load_vocabulary(path: str | Path) -> Vocabulary:
    from dicom_io.config import read_yaml
    from dicom_io.errors import ConfigError

    try:
        return vocabulary_from_mapping(read_yaml(path))
    except ConfigError as exc:
        raise SynthConfigError(str(exc)) from exc


# --------------------------------------------------------------------------- findings

@dataclass(frozen=True)
class Finding:
    """A placed finding.  Coordinates are anatomy coordinates (u, v, za) in mm."""

    kind: str
    index: int
    attrs: dict[str, str]
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    #: The size the report states (meaning in ``attrs['size_kind']``).
    size_mm: float
    extra: dict[str, float] = field(default_factory=dict)
    #: Extent of the labelled region along (z, y, x), mm.
    extent_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    volume_ml: float = 0.0
    #: Emphysema spheres (u, v, z, r) or nodule spicules (u0, v0, z0, u1, v1, z1, r0, r1).
    parts: FArr = field(default_factory=lambda: np.zeros((0, 4)), repr=False)

    @property
    def side(self) -> str:
        return self.attrs.get("side", "")

    @property
    def location(self) -> str:
        return self.attrs.get("location", "")

    def to_json(self, an: Anatomy) -> dict[str, Any]:
        u, v, z = self.center
        out: dict[str, Any] = {
            "index": self.index,
            "label_value": self.index + 1,
            "kind": self.kind,
            "attributes": dict(sorted(self.attrs.items())),
            "size_mm": round(self.size_mm, 2),
            "center_mm": {"x": round(u + an.cx, 2), "y": round(v + an.cy, 2),
                          "z": round(z + an.z_carina, 2)},
            "extent_mm": {"z": round(self.extent_mm[0], 2), "y": round(self.extent_mm[1], 2),
                          "x": round(self.extent_mm[2], 2)},
        }
        if self.volume_ml:
            out["volume_ml"] = round(self.volume_ml, 1)
        for k, val in sorted(self.extra.items()):
            out.setdefault("geometry", {})[k] = round(float(val), 3)
        return out


def _dc_replace(f: Finding, **kw: Any) -> Finding:
    import dataclasses

    return dataclasses.replace(f, **kw)


def sd_lobe(an: Anatomy, lobe: str, u: FArr, v: FArr, za: FArr) -> FArr:
    """Signed distance-like function of a lobe (fissures are oblique / horizontal planes)."""
    right = lobe.startswith("R")
    t = np.clip((v / an.cav_b0 + 1.0) / 2.0, 0.0, 1.0)
    dome = an.dia_r if right else an.dia_l
    s_obl = za - (dome + 15.0 + t * (45.0 - dome - 15.0))  # > 0 above the oblique fissure
    side = (u - an.mid_u) if right else (an.mid_u - u)
    if lobe in ("RLL", "LLL"):
        sd = s_obl
    elif lobe == "RUL":
        sd = np.maximum(-s_obl, -(za + 25.0))
    elif lobe == "RML":
        sd = np.maximum(-s_obl, za + 25.0)
    else:
        sd = -s_obl
    return np.asarray(np.maximum(sd, side))


def _sd_lung_side(an: Anatomy, side: str, u: FArr, v: FArr, za: FArr) -> FArr:
    s = (u - an.mid_u) if side == "right" else (an.mid_u - u)
    return np.asarray(np.maximum(an.sd_lung(u, v, za), s))


def sd_finding(an: Anatomy, f: Finding, u: FArr, v: FArr, za: FArr) -> FArr:
    """The finding's region as a signed distance (negative inside)."""
    cu, cv, cz = f.center
    k = f.kind
    if k in ("lung_nodule", "lung_mass", "mediastinal_lymphadenopathy", "liver_lesion"):
        return sd_ellipsoid(u - cu, v - cv, za - cz, f.radii)
    if k == "consolidation":
        ball = np.sqrt((u - cu) ** 2 + (v - cv) ** 2 + (za - cz) ** 2) - f.radii[0]
        in_lobe = np.maximum(an.sd_lung(u, v, za), sd_lobe(an, f.attrs["lobe"], u, v, za))
        return np.asarray(np.maximum(in_lobe,
                          ball))
    if k == "pleural_effusion":
        ac = an.cav_a0
        rise = f.extra["rise"] * np.clip((np.abs(u - an.mid_u) - 0.5 * ac) / (0.5 * ac), 0, 1)
        sd = np.maximum(_sd_lung_side(an, f.side, u, v, za), (f.extra["level"] - rise) - v)
        return np.asarray(np.maximum(sd, za - f.extra["z_cap"]))
    if k == "pneumothorax":
        t = f.size_mm * np.clip((0.3 * an.cav_b0 - v) / (0.8 * an.cav_b0), 0.0, 1.0)
        rim = -(an.sd_cavity(u, v, za) + 2.0) - t
        return np.asarray(np.maximum(_sd_lung_side(an, f.side, u, v, za), rim))
    if k == "pericardial_effusion":
        c, r = an.heart_geometry(an.cardiac_extra)
        t = f.size_mm
        outer = sd_ellipsoid(u - c[0], v - c[1], za - c[2], [x + t for x in r])
        inner = sd_ellipsoid(u - c[0], v - c[1], za - c[2], r)
        return np.maximum(outer, -inner)
    if k == "cardiomegaly":
        c, r = an.heart_geometry(an.cardiac_extra)
        return sd_ellipsoid(u - c[0], v - c[1], za - c[2], r)
    if k == "rib_fracture":
        i = int(f.extra["rib"])
        dr, phi, _am, half_per = an.rib_frame(u, v, za)
        hw, hh = 3.5 * an.size, 5.5 * an.size
        e0 = np.sqrt(((za - an.rib_centre_z(i, phi)) / hh) ** 2 + (dr / hw) ** 2)
        arc = (phi - f.extra["phi"]) * half_per
        side = (u if f.side == "right" else -u)
        near = np.abs(arc) - (f.extra["gap"] / 2 + 4.0)
        return np.asarray(np.maximum(np.maximum((e0 - 1.0) * hw, near),
                          side))
    if k == "emphysema":
        sd = np.full(np.broadcast_shapes(np.shape(u), np.shape(v), np.shape(za)), 1e6)
        for su, sv, sz, sr in f.parts:
            sd = np.minimum(sd, np.sqrt((u - su) ** 2 + (v - sv) ** 2 + (za - sz) ** 2) - sr)
        return np.asarray(sd)
    raise ValueError(f"no region for {k}")


def liver_lesion_hu(an: Anatomy, f: Finding) -> float:
    return an.hu["liver"] + f.extra["delta_hu"]


# --------------------------------------------------------------------------- painting

def paint_region(ctx: _Ctx, f: Finding, sd: FArr, value: FArr | float) -> None:
    occ = soft(sd, ctx.w)
    paint(ctx.hu, occ, value)
    ctx.label(occ, f.index)


def paint_nodule(ctx: _Ctx, f: Finding) -> None:
    an = ctx.an
    cu, cv, cz = f.center
    if float(ctx.za.min()) > cz + max(f.radii) * 2.2 or float(ctx.za.max()) < cz - max(
            f.radii) * 2.2:
        return
    solid = an.hu["muscle"] - 8.0 + (20.0 if an.contrast else 0.0)
    ggo = an.lung_hu + f.extra.get("ggo_delta", 260.0)
    sd = sd_ellipsoid(ctx.u - cu, ctx.v - cv, ctx.za - cz, f.radii)
    occ = soft(sd, ctx.w)
    comp = f.attrs.get("composition", "solid")
    if f.parts.shape[0] and f.parts.shape[1] == 8:
        spic = np.zeros(ctx.shape, dtype=np.float32)
        _capsules(spic, ctx.segs_world(np.column_stack([f.parts, np.zeros(len(f.parts))])),
                  ctx.zw, ctx.yw, ctx.xw, ctx.w)
        paint(ctx.hu, spic, solid if comp != "ground_glass" else ggo)
    paint(ctx.hu, occ, ggo if comp in ("ground_glass", "part_solid") else solid)
    if comp == "part_solid":
        core = [r * f.extra["core_fraction"] for r in f.radii]
        paint(ctx.hu, soft(sd_ellipsoid(ctx.u - cu, ctx.v - cv, ctx.za - cz, core), ctx.w), solid)
    ctx.label(occ, f.index)


#: share of the drawn emphysema destruction (HU) by grade
DESTRUCTION_BY_GRADE = {"mild": 0.35, "moderate": 0.65, "severe": 1.0}
#: the destroyed lung around each lucency: its radius grown by this (mm) with a soft ramp this
#: wide (mm), so neighbouring lucencies' halos merge into one low-density region
DESTRUCTION_GROW_MM = 5.0
DESTRUCTION_RAMP_MM = 8.0


def paint_emphysema(ctx: _Ctx, f: Finding, lung: F32) -> None:
    """Lucencies at -985 HU, and with ``extra["destruction_hu"]`` a density drop of the lung
    around them (lucencies' radius + :data:`DESTRUCTION_GROW_MM`, soft over
    :data:`DESTRUCTION_RAMP_MM`).  Only the lucencies are labelled."""
    parts = f.parts
    zlo, zhi = float(ctx.za.min()), float(ctx.za.max())
    sel = (parts[:, 2] + parts[:, 3] > zlo - 2) & (parts[:, 2] - parts[:, 3] < zhi + 2)
    if not sel.any():
        return
    p = parts[sel]
    segs = np.column_stack([p[:, 0:3], p[:, 0:3], p[:, 3], p[:, 3], np.zeros(len(p))])
    drop = float(f.extra.get("destruction_hu", 0.0))
    if drop > 0:
        halo = np.zeros(ctx.shape, dtype=np.float32)
        _capsules(halo, ctx.segs_world(segs), ctx.zw, ctx.yw, ctx.xw, DESTRUCTION_RAMP_MM,
                  grow=DESTRUCTION_GROW_MM)
        ctx.hu -= (drop * halo * lung).astype(np.float32)
    occ = np.zeros(ctx.shape, dtype=np.float32)
    _capsules(occ, ctx.segs_world(segs), ctx.zw, ctx.yw, ctx.xw, ctx.w)
    paint(ctx.hu, occ * lung, -985.0)
    ctx.label(occ, f.index)


# --------------------------------------------------------------------------- placement

@dataclass(frozen=True)
class Bounds:
    """The acquired box in anatomy coordinates (z, v, u) ranges, mm."""

    z: tuple[float, float]
    v: tuple[float, float]
    u: tuple[float, float]


def measure(an: Anatomy, f: Finding, box: Sequence[tuple[float, float]], bounds: Bounds,
            step: float) -> tuple[tuple[float, float, float], float]:
    """Extent (z, y, x) and volume (mL) of the region inside ``bounds``, on a ``step`` grid."""
    lims = [(max(b[0], c[0]), min(b[1], c[1])) for b, c in zip(box, (bounds.z, bounds.v, bounds.u),
                                                                strict=True)]
    if any(hi <= lo for lo, hi in lims):
        return (0.0, 0.0, 0.0), 0.0
    zs, vs, us = (np.arange(lo + step / 2, hi, step) for lo, hi in lims)
    inside = sd_finding(an, f, us[None, None, :], vs[None, :, None], zs[:, None, None]) < 0
    inside = np.broadcast_to(inside, (zs.size, vs.size, us.size))
    if not inside.any():
        return (0.0, 0.0, 0.0), 0.0
    ext = []
    for ax, coords in ((0, zs), (1, vs), (2, us)):
        other = tuple(i for i in range(3) if i != ax)
        hit = np.nonzero(inside.any(axis=other))[0]
        ext.append(float(coords[hit[-1]] - coords[hit[0]] + step))
    return (ext[0], ext[1], ext[2]), float(inside.sum()) * step**3 / 1000.0


def _candidates(rng: np.random.Generator, an: Anatomy, bounds: Bounds,
                n: int = 3000) -> tuple[FArr, FArr, FArr]:
    u = rng.uniform(max(bounds.u[0], -an.cav_a0), min(bounds.u[1], an.cav_a0), n)
    v = rng.uniform(max(bounds.v[0], -an.cav_b0), min(bounds.v[1], an.cav_b0), n)
    z = rng.uniform(bounds.z[0], bounds.z[1], n)
    return u, v, z


def _clear_of(an: Anatomy, placed: Sequence[Finding], u: FArr, v: FArr, z: FArr,
              margin: FArr | float) -> npt.NDArray[np.bool_]:
    ok = np.ones(u.shape, dtype=bool)
    for p in placed:
        if p.kind in ("cardiomegaly", "emphysema", "rib_fracture"):
            continue
        ok &= sd_finding(an, p, u, v, z) > margin
    return ok


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def place_finding(rng: np.random.Generator, an: Anatomy, spec: FindingSpec, index: int,
                  bounds: Bounds, placed: Sequence[Finding], side_hint: str | None = None,
                  emphysema_extent: str = "trace",
                  emphysema_destruction_hu: tuple[float, float] = (0.0, 0.0)) -> Finding | None:
    """Place one finding of ``spec`` in the anatomy, or None if it does not fit this case.
    ``emphysema_extent``, ``emphysema_destruction_hu``: see
    :class:`medassist.synth.config.FindingsConfig`."""
    kind = spec.name
    attrs: dict[str, str] = {}
    for name, a in spec.attributes:
        attrs[name] = a.sample(rng)
    if side_hint is not None:
        attrs["side"] = side_hint
    size = spec.sample_size(rng)
    zlo, zhi = bounds.z

    if kind in ("lung_nodule", "lung_mass"):
        r = size / 2.0
        radii = [r, r * rng.uniform(0.75, 1.0), r * rng.uniform(0.75, 1.0)]
        rng.shuffle(radii)
        radii_t = (float(radii[0]), float(radii[1]), float(radii[2]))
        lobe = attrs.get("lobe", str(rng.choice(LOBES)))
        margin = r + 1.5 if kind == "lung_nodule" else 0.8 * r
        shrunk = Bounds((zlo + r, zhi - r), bounds.v, bounds.u)
        if shrunk.z[1] <= shrunk.z[0]:
            return None
        u, v, z = _candidates(rng, an, shrunk)
        ok = (an.sd_lung(u, v, z) < -margin) & (an.lobe_index(u, v, z) == LOBES.index(lobe))
        ok &= _clear_of(an, placed, u, v, z, r + 3.0)
        if not ok.any():
            return None
        j = int(np.nonzero(ok)[0][0])
        c = (float(u[j]), float(v[j]), float(z[j]))
        attrs.update(lobe=lobe, location=LOBE_NAMES[lobe], size_kind="diameter",
                     side="right" if lobe.startswith("R") else "left")
        extra: dict[str, float] = {"short_axis_mm": 2 * min(radii_t)}
        comp = attrs.get("composition", "solid")
        if comp == "part_solid":
            extra["core_fraction"] = float(rng.uniform(0.35, 0.6))
        if comp in ("ground_glass", "part_solid"):
            extra["ggo_delta"] = float(rng.uniform(200.0, 320.0))
        parts = np.zeros((0, 4))
        if attrs.get("margin") == "spiculated":
            n = int(rng.integers(8, 16))
            dirs = rng.normal(size=(n, 3))
            dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
            start = np.asarray(c) + dirs * np.asarray(radii_t) * 0.9
            end = start + dirs * (r * rng.uniform(0.4, 1.1, size=(n, 1)) + 2.0)
            parts = np.column_stack([start, end, np.full(n, 0.7), np.full(n, 0.25)])
        ext = (2 * radii_t[2], 2 * radii_t[1], 2 * radii_t[0])
        return Finding(kind, index, attrs, c, radii_t, 2 * max(radii_t), extra, ext,
                       4 / 3 * math.pi * math.prod(radii_t) / 1000.0, parts)

    if kind == "consolidation":
        lobe = attrs.get("lobe", str(rng.choice(LOBES)))
        rr = size / 2.0
        u, v, z = _candidates(rng, an, Bounds((zlo + 5, zhi - 5), bounds.v, bounds.u))
        ok = (an.sd_lung(u, v, z) < -8.0) & (sd_lobe(an, lobe, u, v, z) < -8.0)
        ok &= _clear_of(an, placed, u, v, z, rr + 3.0)
        if not ok.any():
            return None
        j = int(np.nonzero(ok)[0][0])
        c = (float(u[j]), float(v[j]), float(z[j]))
        attrs.update(lobe=lobe, location=LOBE_NAMES[lobe], size_kind="extent",
                     side="right" if lobe.startswith("R") else "left")
        f = Finding(kind, index, attrs, c, (rr, rr, rr), size)
        box = [(c[2] - rr, c[2] + rr), (c[1] - rr, c[1] + rr), (c[0] - rr, c[0] + rr)]
        ext, vol = measure(an, f, box, bounds, 1.5)
        if vol < 1.0:
            return None
        return _dc_replace(f, extent_mm=ext, volume_ml=vol, size_mm=max(ext))

    if kind == "pleural_effusion":
        side = attrs.get("side", "right")
        if side == "bilateral":
            side = "right"
        sgn = -1.0 if side == "right" else 1.0
        # posterior-most lung point on this side near the base
        uu = an.mid_u + sgn * np.linspace(10, an.cav_a0, 60)
        vv = np.linspace(0, an.cav_b0, 80)
        zb = np.asarray([an.dome(np.asarray(sgn * 50.0)) + 20.0])
        inside = an.sd_lung(uu[None, :, None], vv[None, None, :], zb[:, None, None]) < 0
        if not inside.any():
            return None
        v_back = float(vv[np.nonzero(inside.any(axis=(0, 1)))[0][-1]])
        level = v_back - size
        z_cap = float(an.dome(np.asarray(sgn * 50.0))) + 60.0 + 1.5 * size
        attrs.update(side=side, location=f"{side} pleural space", size_kind="depth")
        f = Finding(kind, index, attrs, (float(an.mid_u + sgn * 0.5 * an.cav_a0), v_back - size / 2,
                                         float(an.dome(np.asarray(sgn * 50.0)))),
                    (0.0, 0.0, 0.0), size, {"level": level, "z_cap": z_cap, "rise": 0.3 * size})
        lo_u, hi_u = (an.mid_u - 1.15 * an.cav_a0 - 10, an.mid_u) if side == "right" else (
            an.mid_u, an.mid_u + 1.15 * an.cav_a0 + 10)
        box = [(min(an.dia_l, an.dia_r) - 120.0, z_cap + 2),
               (level - 0.3 * size - 2, 1.15 * an.cav_b0 + 10), (lo_u, hi_u)]
        ext, vol = measure(an, f, box, bounds, 1.5)
        if vol < 5.0:
            return None
        return _dc_replace(f, extent_mm=ext, volume_ml=vol, size_mm=ext[1])

    if kind == "pneumothorax":
        side = attrs.get("side", "right")
        sgn = -1.0 if side == "right" else 1.0
        attrs.update(side=side, location=f"{side} anterior pleural space", size_kind="rim")
        f = Finding(kind, index, attrs, (float(an.mid_u + sgn * 0.5 * an.cav_a0),
                                         -0.6 * an.cav_b0, 0.0), (0.0, 0.0, 0.0), size)
        lo_u, hi_u = (an.mid_u - 1.15 * an.cav_a0 - 10, an.mid_u) if side == "right" else (
            an.mid_u, an.mid_u + 1.15 * an.cav_a0 + 10)
        box = [(min(an.dia_l, an.dia_r) - 120.0, an.apex_z + 5),
               (-1.15 * an.cav_b0 - 10, 0.3 * an.cav_b0 + 2), (lo_u, hi_u)]
        ext, vol = measure(an, f, box, bounds, 1.5)
        if vol < 2.0:
            return None
        return _dc_replace(f, extent_mm=ext, volume_ml=vol)

    if kind == "emphysema":
        sev = attrs.get("severity", "mild")
        n = {"mild": 40, "moderate": 110, "severe": 220}.get(sev, 60)
        zmin = max(zlo, an.dia_r + 0.45 * (an.apex_z - an.dia_r))
        if zmin >= zhi:
            return None
        zone = Bounds((zmin, zhi), bounds.v, bounds.u)
        if emphysema_extent == "fleischner":
            share = {"mild": (0.01, 0.05), "moderate": (0.05, 0.15),
                     "severe": (0.15, 0.30)}.get(sev, (0.01, 0.05))
            median_d = {"mild": 5.0, "moderate": 8.0, "severe": 12.0}.get(sev, 5.0)
            u, v, z = _candidates(rng, an, zone, 20000)
            d = np.exp(rng.normal(math.log(median_d), 0.35, size=u.shape)).clip(3.0, size)
            target_share = rng.uniform(*share)
        else:
            u, v, z = _candidates(rng, an, zone, 4000)
            d = np.exp(rng.normal(math.log(4.0), 0.35, size=u.shape)).clip(3.0, size)
        d[0] = size
        sd = an.sd_lung(u, v, z)
        ok = sd < -(d / 2 + 1.0)
        if not ok[0]:
            ok[0] = False
        if emphysema_extent == "fleischner":  # as many lucencies as make the target volume
            # the zone's lung volume (ml) from the candidates that fall in the lung
            box_mm3 = float(u.max() - u.min()) * float(v.max() - v.min()) * (zhi - zmin)
            target_ml = target_share * float((sd < 0).mean()) * box_mm3 / 1000.0
            each_ml = 4.0 / 3.0 * math.pi * (d[ok] / 2.0) ** 3 / 1000.0
            n = max(5, int(np.searchsorted(np.cumsum(each_ml), target_ml)) + 1)
        idx = np.nonzero(ok)[0][:n]
        if idx.size < 5:
            return None
        parts = np.column_stack([u[idx], v[idx], z[idx], d[idx] / 2])
        largest = float(2 * parts[:, 3].max())
        attrs.update(side="bilateral", location="upper lobe predominant",
                     size_kind="largest_low_attenuation_area")
        lo = parts[:, :3] - parts[:, 3:4]
        hi = parts[:, :3] + parts[:, 3:4]
        ext = (float(hi[:, 2].max() - lo[:, 2].min()), float(hi[:, 1].max() - lo[:, 1].min()),
               float(hi[:, 0].max() - lo[:, 0].min()))
        vol = float((4 / 3 * math.pi * parts[:, 3] ** 3).sum() / 1000.0)
        extra = {"n_areas": float(len(parts))}
        if emphysema_destruction_hu[1] > 0:  # drawn last: other findings' draws unchanged
            extra["destruction_hu"] = float(rng.uniform(*emphysema_destruction_hu)) * \
                DESTRUCTION_BY_GRADE.get(sev, DESTRUCTION_BY_GRADE["mild"])
        return Finding(kind, index, attrs, tuple(float(x) for x in parts[:, :3].mean(0)),  # type: ignore[arg-type]
                       (0.0, 0.0, 0.0), largest, extra, ext, vol, parts)

    if kind == "mediastinal_lymphadenopathy":
        st = attrs.get("station", "4R")
        su, sv, sz = STATIONS[st]
        c = (su * an.size + float(rng.normal(0, 1.5)), sv * an.size + float(rng.normal(0, 2)),
             sz + float(rng.normal(0, 3)))
        if not zlo + size < c[2] < zhi - size:
            return None
        sa = size / 2.0
        radii_t = (sa * float(rng.uniform(1.0, 1.3)), sa, sa * float(rng.uniform(1.2, 1.7)))
        side = "right" if c[0] < an.mid_u - 5 else ("left" if c[0] > an.mid_u + 5 else "midline")
        attrs.update(station=st, location=STATION_NAMES[st], side=side, size_kind="short_axis")
        ext = (2 * radii_t[2], 2 * radii_t[1], 2 * radii_t[0])
        return Finding(kind, index, attrs, c, radii_t, size, {"long_axis_mm": 2 * radii_t[2]},
                       ext, 4 / 3 * math.pi * math.prod(radii_t) / 1000.0)

    if kind == "pericardial_effusion":
        hc, hr = an.heart_geometry(an.cardiac_extra)
        t = size
        if not (zlo < hc[2] - hr[2] - t and hc[2] + hr[2] + t < zhi):
            return None
        attrs.update(side="midline", location="pericardium", size_kind="thickness")
        pext = (2 * (hr[2] + t), 2 * (hr[1] + t), 2 * (hr[0] + t))
        vol = 4 / 3 * math.pi * (math.prod(x + t for x in hr) - math.prod(hr)) / 1000.0
        return Finding(kind, index, attrs, hc, (0.0, 0.0, 0.0), t, {}, pext, vol)

    if kind == "cardiomegaly":
        ctr = size / 100.0
        hc, r0 = an.heart_geometry(1.0)
        ac, _bc = an.cavity_axes(np.asarray(hc[2]))
        extra_scale = ctr * float(ac) / r0[0]
        hc, hr = an.heart_geometry(extra_scale)
        if not (zlo < hc[2] - hr[2] and hc[2] + hr[2] < zhi):
            return None
        attrs.update(side="midline", location="heart", size_kind="cardiothoracic_ratio")
        ext = (2 * hr[2], 2 * hr[1], 2 * hr[0])
        return Finding(kind, index, attrs, hc, hr, ctr, {"cardiac_scale": extra_scale,
                                                       "thoracic_width_mm": 2 * float(ac)}, ext)

    if kind == "liver_lesion":
        r = size / 2.0
        radii_t = (r, r * float(rng.uniform(0.8, 1.0)), r * float(rng.uniform(0.8, 1.0)))
        shrunk = Bounds((zlo + r + 1, zhi - r - 1), bounds.v, bounds.u)
        if shrunk.z[1] <= shrunk.z[0]:
            return None
        u, v, z = _candidates(rng, an, shrunk)
        ok = sd_liver(an, u, v, z) < -(r + 3.0)
        if not ok.any():
            return None
        j = int(np.nonzero(ok)[0][0])
        c = (float(u[j]), float(v[j]), float(z[j]))
        dens = attrs.get("density", "hypodense")
        delta = -float(rng.uniform(25, 55)) if dens == "hypodense" else float(rng.uniform(30, 70))
        side = "right" if c[0] < an.mid_u else "left"
        attrs.update(density=dens, side=side, location=f"{side} hepatic lobe",
                     size_kind="diameter")
        ext = (2 * radii_t[2], 2 * radii_t[1], 2 * radii_t[0])
        return Finding(kind, index, attrs, c, radii_t, 2 * r, {"delta_hu": delta}, ext,
                       4 / 3 * math.pi * math.prod(radii_t) / 1000.0)

    if kind == "rib_fracture":
        side = attrs.get("side", "right")
        for _ in range(30):
            i = int(rng.integers(2, N_RIBS - 2))
            phi = float(rng.uniform(0.15, min(0.8, an.rib_end(i) - 0.06)))
            pu, pv, pz = an.rib_point(side, i, phi)
            if zlo + 12 < pz < zhi - 12 and bounds.u[0] + 10 < pu < bounds.u[1] - 10:
                break
        else:
            return None
        seg = "posterior" if phi < 0.33 else ("lateral" if phi < 0.66 else "anterior")
        attrs.update(side=side, rib=str(i + 1), segment=seg,
                     location=f"{side} {ordinal(i + 1)} rib, {seg}", size_kind="gap")
        extra = {"rib": float(i), "phi": phi, "gap": size,
                 "displacement": float(rng.uniform(0.0, 3.0))}
        f = Finding(kind, index, attrs, (pu, pv, pz), (0.0, 0.0, 0.0), size, extra)
        box = [(pz - 14, pz + 14), (pv - 14, pv + 14), (pu - 14, pu + 14)]
        ext, vol = measure(an, f, box, bounds, 0.5)
        if vol <= 0:
            return None
        return _dc_replace(f, extent_mm=ext, volume_ml=vol)
    raise ValueError(f"unknown finding kind {kind}")


def finding_weights(vocab: Vocabulary, boosts: Mapping[str, float]) -> tuple[list[FindingSpec],
                                                                           FArr]:
    specs = [s for s in vocab.specs if s.weight > 0]
    w = np.asarray([s.weight * boosts.get(s.name, 1.0) for s in specs], dtype=np.float64)
    return specs, w / w.sum()
