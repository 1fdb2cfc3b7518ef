"""Can a fixed rule on the CT find the generated liver lesions, without false calls?

The findings head never calls a liver lesion (about 4 % of cases have one; held-out AUROC
about 0.5), yet the generator paints a lesion 25 to 55 HU darker (or 30 to 70 HU brighter)
than the liver, 5 to 50 mm (median 12 mm).  This bench reads the liver and its focal lesions
on the HU volume of the model grid (z ascends to the head) by rule:

1. Lung: air inside the body (``multimodal.cardiac.lung_mask``); the body's midline.
2. The liver's density: under the right lung's footprint where it is widest, the tissue 2 to 4
   slices below each column's lowest lung voxel is the liver's dome; its median HU (after a
   3 x 3 in-plane mean) is the liver's.  Fewer than 50 such voxels, or under 100 ml of liver
   found (a scan ending at the dome): no liver, nothing decided.
3. The liver: on each slice from the dome's top down, the pieces of tissue within
   ``tolerance`` HU of that density, opened by one voxel, that reach the dome's columns or
   the liver of the slice above; each slice's holes filled (a lesion inside is a hole).
4. Lesions: inside the filled liver, the voxels at least ``delta`` HU from the liver's
   density, joined across slices; one counts where its equivalent diameter is 9 to 70 mm,
   it is round (craniocaudal extent within 1.6 times its in-plane one, give or take a
   slice), the liver holds at least 0.9 of the two voxels around it in-plane and its mean
   differs by at least ``--mean-delta`` HU and ``--noise-factor`` times the liver's own
   noise (the robust SD of its smoothed voxels).

Sets (``bench/_sets.py``): ``--val N`` (the checkpoint's validation cases), ``--data DIR``
(held-out ``medassist synth`` splits), ``--real STUDY`` (a real CT: the lesions it finds).
Per set: the cases with a lesion (largest size), those with a liver found, found lesions
(true calls, by size) and false calls.  docs/model.md "Twenty-ninth round".

    .venv/bin/python bench/liver_lesions.py [--val 480] [--cache runs/cache] [--data DIR ...]
        [--real STUDY ...] [--mean-delta 20] [--noise-factor 3]

Prints one JSON object.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._sets import set_parser  # noqa: E402
from multimodal.cardiac import body_midline, components, lung_mask  # noqa: E402
from multimodal.errors import ShapeError  # noqa: E402

_AIR_HU = -400.0
_SOFT_HU = (-20.0, 250.0)  # the dome's tissue counted for the liver's density
_SEED_BELOW = (2, 4)  # slices below a column's lowest lung voxel: the dome
_MIN_SEED = 50
_MIN_PIECE_MM2 = 300.0  # smaller pieces of liver-like tissue are not the liver
_MIN_LIVER_ML = 100.0
_MAX_ELONGATION = 1.6
_RING_VOXELS = 2  # in-plane width of the shell around a lesion whose liver share counts

BoolArr = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class LiverLesion:
    """One focal lesion: its equivalent diameter, mean difference from the liver (HU),
    voxel box (z0, y0, x0, z1, y1, x1; inclusive) and the liver's share around it."""

    diameter_mm: float
    delta_hu: float
    box_voxels: tuple[int, int, int, int, int, int]
    enclosure: float


@dataclass(frozen=True)
class LiverReading:
    """The liver of one CT: its density, slices, noise and the lesions found
    (largest first; empty where the liver shows none)."""

    liver_hu: float
    slices: tuple[int, int]
    noise_hu: float
    lesions: tuple[LiverLesion, ...]


def _smooth(vol: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    t = torch.from_numpy(vol)[:, None]  # (Z, 1, Y, X)
    out = F.avg_pool2d(t, 3, 1, 1, count_include_pad=False)[:, 0]
    return np.ascontiguousarray(out.numpy())


def _open(mask: BoolArr) -> BoolArr:
    t = torch.from_numpy(mask.astype(np.float32))[:, None]
    er = -F.max_pool2d(-t, 3, 1, 1)
    out: BoolArr = (F.max_pool2d(er, 3, 1, 1)[:, 0] > 0.5).numpy()
    return out


def _dilate(mask: BoolArr, r: int) -> BoolArr:
    """Each slice dilated by a square of 2r + 1 voxels."""
    t = torch.from_numpy(mask.astype(np.float32))[:, None]
    out: BoolArr = (F.max_pool2d(t, 2 * r + 1, 1, r)[:, 0] > 0.5).numpy()
    return out


def _fill_holes(mask: BoolArr) -> BoolArr:
    """Per slice: the mask with every piece of its complement that does not reach the slice's
    border filled."""
    lab = components(~mask)
    edges = np.concatenate([lab[:, 0, :].ravel(), lab[:, -1, :].ravel(),
                            lab[:, :, 0].ravel(), lab[:, :, -1].ravel()])
    outside = np.unique(edges[edges > 0])
    out: BoolArr = mask | ((lab > 0) & ~np.isin(lab, outside))
    return out


def components_3d(mask: BoolArr) -> npt.NDArray[np.int64]:
    """(Z, Y, X) bool -> labels of its 6-connected pieces (0 outside; not consecutive):
    :func:`multimodal.cardiac.components` per slice, joined where pieces of adjacent slices
    overlap."""
    lab = components(mask)
    both = (lab[1:] > 0) & (lab[:-1] > 0)
    pairs = np.unique(np.stack([lab[:-1][both], lab[1:][both]], 1), axis=0)
    parent: dict[int, int] = {}

    def root(a: int) -> int:
        while parent.get(a, a) != a:
            a = parent[a]
        return a

    for a, b in pairs.tolist():
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    if not parent:
        return lab
    keys = np.fromiter(parent.keys(), np.int64)
    lut = np.arange(int(lab.max()) + 1, dtype=np.int64)
    lut[keys] = [root(int(k)) for k in keys]
    out: npt.NDArray[np.int64] = lut[lab]
    return out


def _liver(smooth: npt.NDArray[np.float32], lung: BoolArr, mid: float, tolerance: float,
           sp: tuple[float, float, float]) -> tuple[float, BoolArr] | None:
    z_n, y_n, x_n = lung.shape
    right = lung.copy()
    right[:, :, round(mid):] = False  # x ascends to the patient's left
    area = right.sum((1, 2))
    if not area.any():
        return None
    has = right[int(np.argmax(area))]  # the right lung's footprint where it is widest
    low = np.argmax(right, axis=0)  # each column's lowest lung slice (its base, under it)
    yy, xx = np.nonzero(has)
    seeds: list[npt.NDArray[np.float32]] = []
    dome = np.zeros((y_n, x_n), bool)
    for k in range(_SEED_BELOW[0], _SEED_BELOW[1] + 1):
        z = low[yy, xx] - k
        ok = z >= 0
        v = smooth[z[ok], yy[ok], xx[ok]]
        soft = (v >= _SOFT_HU[0]) & (v <= _SOFT_HU[1])
        seeds.append(v[soft])
        dome[yy[ok][soft], xx[ok][soft]] = True
    vals = np.concatenate(seeds)
    if vals.size < _MIN_SEED:
        return None
    liver_hu = float(np.median(vals))
    like = _open((np.abs(smooth - liver_hu) <= tolerance) & ~lung)
    lab = components(like)
    min_px = _MIN_PIECE_MM2 / (sp[1] * sp[2])
    top = int(min(z_n - 1, low[yy, xx].max()))
    liver = np.zeros(lung.shape, bool)
    above = dome
    for z in range(top, -1, -1):
        ids = np.unique(lab[z][above & (lab[z] > 0)])
        keep = [i for i in ids.tolist() if (lab[z] == i).sum() >= min_px]
        if not keep:
            if z < top - 2 and not liver[z + 1:].any():
                break
            continue
        liver[z] = np.isin(lab[z], keep)
        above = liver[z] | dome
    if liver.sum() * sp[0] * sp[1] * sp[2] < _MIN_LIVER_ML * 1000.0:
        return None  # the scan ends at the dome: too little liver to read
    return liver_hu, _fill_holes(liver)


def liver_reading(hu: npt.NDArray[np.floating], spacing_mm: Sequence[float], *,
                  tolerance_hu: float = 25.0, delta_hu: float = 15.0,
                  mean_delta_hu: float = 20.0, size_mm: tuple[float, float] = (9.0, 70.0),
                  min_enclosure: float = 0.9, noise_factor: float = 3.0
                  ) -> LiverReading | None:
    """The liver and its focal lesions in a (Z, Y, X) HU volume with ``spacing_mm`` (z, y,
    x) on the model grid, or None where no liver is found (no lung, or a scan ending above
    the diaphragm)."""
    if hu.ndim != 3:
        raise ShapeError(f"hu must be (Z, Y, X), got shape {hu.shape}")
    sp = (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]))
    vol = np.ascontiguousarray(hu, dtype=np.float32)
    lung = lung_mask(vol, _AIR_HU, lateral=False)
    if not lung.any():
        return None
    mid = body_midline(vol, _AIR_HU)
    smooth = _smooth(vol)
    found = _liver(smooth, lung, mid, tolerance_hu, sp)
    if found is None:
        return None
    liver_hu, liver = found
    inside = smooth[liver] - liver_hu
    noise = float(1.4826 * np.median(np.abs(inside - np.median(inside))))
    odd = liver & (np.abs(smooth - liver_hu) >= delta_hu)
    lab = components_3d(odd)
    voxel_mm3 = sp[0] * sp[1] * sp[2]
    lesions: list[LiverLesion] = []
    ids, counts = np.unique(lab[lab > 0], return_counts=True)
    for i, n in zip(ids.tolist(), counts.tolist(), strict=True):
        d = (6.0 * n * voxel_mm3 / math.pi) ** (1.0 / 3.0)
        if not size_mm[0] <= d <= size_mm[1]:
            continue
        zz, yy, xx = np.nonzero(lab == i)
        z0, z1 = int(zz.min()), int(zz.max())
        y0, y1, x0, x1 = int(yy.min()), int(yy.max()), int(xx.min()), int(xx.max())
        in_plane = max((y1 - y0 + 1) * sp[1], (x1 - x0 + 1) * sp[2])
        z_mm = (z1 - z0 + 1) * sp[0]
        cut = z0 == 0 or z1 == lab.shape[0] - 1  # the scan ends in it: its extent unknown
        if z_mm > _MAX_ELONGATION * in_plane + sp[0] \
                or (not cut and z_mm + sp[0] < in_plane / _MAX_ELONGATION):
            continue  # a tube (a vessel) or a flat sheet, not a round lesion
        sl = (slice(z0, z1 + 1), slice(max(y0 - 3, 0), y1 + 4), slice(max(x0 - 3, 0), x1 + 4))
        own = lab[sl] == i
        ring = _dilate(own, _RING_VOXELS) & ~own
        if not ring.any():
            continue
        enclosure = float(liver[sl][ring].mean())
        delta = float(smooth[zz, yy, xx].mean() - liver_hu)
        if enclosure < min_enclosure or abs(delta) < max(mean_delta_hu, noise_factor * noise):
            continue
        lesions.append(LiverLesion(
            diameter_mm=d, delta_hu=delta, box_voxels=(z0, y0, x0, z1, y1, x1),
            enclosure=enclosure))
    zs = np.flatnonzero(liver.any((1, 2)))
    lesions.sort(key=lambda les: -les.diameter_mm)
    return LiverReading(liver_hu=liver_hu, slices=(int(zs[0]), int(zs[-1])),
                        noise_hu=noise, lesions=tuple(lesions))


Case = tuple[str, list[float], npt.NDArray[np.float32]]


def _found(rd: LiverReading | None) -> list[dict[str, Any]]:
    return [] if rd is None else [
        {"diameter_mm": round(les.diameter_mm, 1), "delta_hu": round(les.delta_hu, 1),
         "enclosure": round(les.enclosure, 2), "box_voxels": list(les.box_voxels)}
        for les in rd.lesions]


def score(cases: Iterable[Case], sp: Sequence[float], mean_delta: float,
          noise_factor: float) -> dict[str, Any]:
    """Per case (id, reference lesion sizes, HU volume): the counts described above."""
    n = with_liver = 0
    true: list[float] = []
    missed: list[float] = []
    false: list[dict[str, Any]] = []
    for cid, sizes, hu in cases:
        n += 1
        rd = liver_reading(hu, sp, mean_delta_hu=mean_delta, noise_factor=noise_factor)
        with_liver += rd is not None
        if sizes:
            (true if rd is not None and rd.lesions else missed).append(round(max(sizes), 1))
        elif rd is not None and rd.lesions:
            false.append({"case": cid, "noise_hu": round(rd.noise_hu, 1),
                          "lesions": _found(rd)})
    big = [s for s in true if s >= 12.0]
    return {"cases": n, "with_liver": with_liver, "with_lesion": len(true) + len(missed),
            "found": sorted(true), "missed": sorted(missed),
            "found_12mm_or_more": f"{len(big)} of {len(big) + sum(s >= 12 for s in missed)}",
            "false_calls": false}


def main() -> None:
    ap = set_parser(__doc__.split("\n")[0])
    ap.add_argument("--mean-delta", type=float, default=20.0)
    ap.add_argument("--noise-factor", type=float, default=3.0)
    args = ap.parse_args()

    from medassist.drafting import load_study
    from medassist.model_data import CaseRecord, folder_records, iter_cached_chunks
    from multimodal.checkpoint import load_checkpoint

    _model, cfg, *_ = load_checkpoint(args.checkpoint)
    sp = cfg.ct.spacing_mm

    def case(r: CaseRecord) -> Case:
        return (r.case_id, [float(f["size_mm"]) for f in r.findings
                            if f["kind"] == "liver_lesion"], np.asarray(r.hu, np.float32))

    out: dict[str, Any] = {"checkpoint": args.checkpoint, "mean_delta": args.mean_delta,
                           "noise_factor": args.noise_factor}
    if args.val:
        out["val"] = score((case(r) for chunk in iter_cached_chunks(
            args.cache, args.synth_config, cfg, 7, args.val, "val") for r in chunk),
            sp, args.mean_delta, args.noise_factor)
    for d in args.data:
        out[d] = score((case(r) for r in folder_records(d, cfg)), sp, args.mean_delta,
                       args.noise_factor)
    for s in args.real:
        hu = np.asarray(load_study(s, cfg).hu, np.float32)
        rd = liver_reading(hu, sp, mean_delta_hu=args.mean_delta,
                           noise_factor=args.noise_factor)
        out[s] = None if rd is None else {
            "liver_hu": round(rd.liver_hu, 1), "slices": list(rd.slices),
            "noise_hu": round(rd.noise_hu, 1), "lesions": _found(rd)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
