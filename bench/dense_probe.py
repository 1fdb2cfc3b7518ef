"""Where and why does the dense detector fire on a real CT?  For one finding label (default
consolidation) and a checkpoint with a dense detector (``ct.dense_hidden``): the share of
body cells (dense-grid cells at least 30 % above -500 HU) whose probability is above 0.5,
per z slab and in all, and the finding's presence probability, for

- the real series as read (default: the shared Lung-PET-CT-Dx A0001), with the share of hot
  cells touching the lung, and by slab whether the slab holds lung at all;
- the same series edited: every voxel above -200 HU shifted by -40 / -20 / +20 / +40 HU, soft
  tissue (-200..200 HU) clipped to 30..60 HU, everything above 150 HU set to 60 (no bone or
  contrast), Gaussian-smoothed (SD 1 voxel), and air outside an in-plane ellipse of 0.9 x the
  grid (a body that fills the field of view, cut at its edges, against one surrounded by air);
- generated normal cases of a test directory (``medassist synth``), read from their DICOM as
  the real one is, and with white noise added so that their soft-tissue noise (median SD in
  3 x 3 x 3 windows wholly within -200..200 HU) matches the real series', and twice that.

Smoothing is also applied to the lung only and to everything but the lung, to tell the lung's
texture from the body's noise.  Two shape edits, on the real series and on the generated
normals alike: every axial slice with (almost) no lung set to air (neck, shoulders and upper
abdomen removed), and the volume reduced to three classes (air outside the body at -1000 HU,
the lung mask at -860 HU, everything else above -500 HU at 40 HU): if that still fires on the
real series and not on the generated ones, the body's and lungs' shapes are the cause.  Then
one class at a time: the lung alone set to -860 HU, and the body alone set to 40 HU.  And
what the lung touches: within two in-plane voxels outside the lung mask, fat (-200..-30 HU)
set to 40 HU, or soft tissue (-30..150 HU) set to -100 HU (a lung bordered by muscle against
one bordered by fat); the vessels within the lungs (what a 5 x 5 in-plane closing of the lung
mask adds, above -500 HU) set to -860 HU; and all fat of the body set to 40 HU, or all its
soft tissue to -100 HU.  On the generated normals also the real series' own fine
texture: its soft tissue minus a 1-voxel Gaussian smoothing of it, added to the generated
soft tissue (white noise of matched SD has the wrong spatial correlation).

Last, the presence with the label's dense map kept to a lung region (cells outside the lung
mask dilated by 0 / 3 / 6 voxels in-plane set to a logit of -10): if the presence stays, it
comes through the finding queries' attention over the CT tokens, not the dense cells.

``body`` is the share of the body's voxels (outside the lung mask) that are fat and soft
tissue.  ``z_slices`` counts the grid's axial slices below, through and above the lungs (for
the real series, the generated normals, and the first 12 generated cases of any kind).

If an edit removes the firing, what it edits is the cause; if the generated normals fire as
little as the real series fires much, the cause is something the generator lacks.

    .venv/bin/python bench/dense_probe.py --checkpoint models/demo
        [--label consolidation] [--real DIR] [--generated DIR/test --n 3] [--png FILE]
        [--regions]

``--regions`` adds, for the real series, the body set to 40 HU and the soft tissue's fine
texture removed, each in one region at a time (thirds of the slices, anterior / posterior
and right / left halves; ``region_edits``).

``--png`` writes four axial slices (at 1/8, 3/8, 5/8 and 7/8 of the grid's z) of the real
series (top row) and of the first generated normal (bottom row), window -1000..400 HU, with
the cells above 0.5 tinted red: where on the anatomy the detector fires.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.finding_visibility import lung_mask  # noqa: E402
from bench.lung_realism import smooth  # noqa: E402
from medassist.drafting import load_model, load_study  # noqa: E402


def forward(lm: Any, hu: np.ndarray) -> Any:
    """The model's output for one CT volume on its grid, without EMR."""
    from multimodal.batching import collate
    from multimodal.training import make_sample

    x, _ = collate([make_sample(lm.cfg, lm.tok, hu=hu, emr=None)])
    with torch.no_grad():
        return lm.model(x)


def fire(lm: Any, hu: np.ndarray, label: str, per_slab: bool = False) -> dict[str, Any]:
    """Hot share of body cells (and of those touching the lung), and presence probability."""
    out = forward(lm, hu)
    if out.dense_logits is None:
        raise SystemExit("this checkpoint has no dense detector (ct.dense_hidden = 0)")
    names = list(lm.cfg.heads.labels)
    k = names.index(label)
    hot = torch.sigmoid(out.dense_logits[0, k]) > 0.5  # (z, y, x) on the dense grid
    nz, ny, nx = (int(n) for n in hot.shape)
    grid = (nz, ny, nx)
    body = F.adaptive_avg_pool3d(torch.from_numpy(hu > -500).float()[None, None], grid)[0, 0]
    lung = F.adaptive_avg_pool3d(torch.from_numpy(lung_mask(hu)).float()[None, None],
                                 grid)[0, 0]
    b = body > 0.3
    res: dict[str, Any] = {
        "hot_share_of_body_cells": round(float(hot[b].float().mean()), 3),
        "hot_cells_touching_lung_share": round(float((hot & (lung > 0)).sum())
                                               / max(int(hot.sum()), 1), 3),
        "presence": round(float(torch.sigmoid(out.presence_logits[0, k])), 3)}
    if per_slab:
        res["per_slab"] = [{"lung_share": round(float(lung[z].mean()), 3),
                            "hot_share_of_body": round(float(hot[z][b[z]].float().mean()), 3)
                            if bool(b[z].any()) else None} for z in range(grid[0])]
    return res


def overlay(lm: Any, hu: np.ndarray, label: str) -> np.ndarray:
    """(Y, 4 X, 3) RGB in 0..1: four axial slices with the label's hot cells tinted red."""
    out = forward(lm, hu)
    k = list(lm.cfg.heads.labels).index(label)
    nz, ny, nx = hu.shape
    p = torch.sigmoid(out.dense_logits[0, k])[None, None]
    hot = F.interpolate(p, size=(nz, ny, nx), mode="nearest")[0, 0].numpy() > 0.5
    cols = []
    for z in (nz * i // 8 for i in range(1, 8, 2)):
        g = np.clip((hu[z] + 1000.0) / 1400.0, 0.0, 1.0)
        rgb = np.stack([g, g, g], -1)
        rgb[hot[z]] = 0.5 * rgb[hot[z]] + np.array([0.5, 0.0, 0.0])
        cols.append(rgb)
    return np.concatenate(cols, 1)


def region_presence(lm: Any, hu: np.ndarray, label: str) -> dict[str, float]:
    """Presence of ``label`` with its dense cells outside the (dilated) lung mask at -10."""
    k = list(lm.cfg.heads.labels).index(label)
    lung = torch.from_numpy(lung_mask(hu)).float()[None, None]
    res: dict[str, float] = {}
    for r in (0, 3, 6):
        region = F.max_pool3d(lung, (2 * (r // 2) + 1, 2 * r + 1, 2 * r + 1), 1,
                              (r // 2, r, r)) if r else lung

        def keep(_m: Any, _i: Any, out: torch.Tensor, region: torch.Tensor = region
                 ) -> torch.Tensor:
            nz, ny, nx = (int(n) for n in out.shape[2:])
            inside = F.adaptive_max_pool3d(region, (nz, ny, nx))[0, 0] > 0.5
            out = out.clone()
            out[:, k][:, ~inside] = -10.0
            return out

        handle = lm.model.dense.register_forward_hook(keep)
        try:
            out = forward(lm, hu)
        finally:
            handle.remove()
        res[f"lung dilated {r} voxels"] = round(float(torch.sigmoid(out.presence_logits[0, k])),
                                                3)
    return res


def soft_tissue_noise(hu: np.ndarray) -> float:
    """Median SD in 3 x 3 x 3 windows lying wholly within -200..200 HU (fat and muscle)."""
    t = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None, None]
    soft = ((t > -200) & (t < 200)).float()
    inside = -F.max_pool3d(-soft, 3, 1, 1) > 0.5  # the whole window is soft tissue
    mean = F.avg_pool3d(t, 3, 1, 1, count_include_pad=False)
    sq = F.avg_pool3d(t * t, 3, 1, 1, count_include_pad=False)
    sd = torch.sqrt(torch.clamp(sq - mean * mean, min=0.0))
    v = sd[inside]
    return round(float(v.median()), 1) if v.numel() else float("nan")


def tissues(hu: np.ndarray, lung: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The body (above -500 HU, outside the lung mask), and its fat (-200..-30 HU) and soft
    tissue (-30..150 HU)."""
    body = (hu > -500) & ~lung
    return body, body & (hu > -200) & (hu < -30), body & (hu >= -30) & (hu < 150)


def body_composition(hu: np.ndarray) -> dict[str, float]:
    """Shares of the body's voxels that are fat and soft tissue (:func:`tissues`)."""
    body, fat, soft = tissues(hu, lung_mask(hu))
    n = max(int(body.sum()), 1)
    return {"fat_share": round(int(fat.sum()) / n, 3),
            "soft_tissue_share": round(int(soft.sum()) / n, 3)}


def z_extent(hu: np.ndarray) -> dict[str, int]:
    """Axial slices of the grid below the lowest and above the highest slice holding at least
    0.5 % lung (z ascends towards the head), and the slices in between."""
    lung = lung_mask(hu)
    idx = np.nonzero(lung.reshape(lung.shape[0], -1).mean(axis=1) >= 0.005)[0]
    if idx.size == 0:
        return {"below_lung": int(hu.shape[0]), "lung": 0, "above_lung": 0}
    return {"below_lung": int(idx[0]), "lung": int(idx[-1] - idx[0] + 1),
            "above_lung": int(hu.shape[0] - 1 - idx[-1])}


def shape_edits(hu: np.ndarray) -> dict[str, np.ndarray]:
    """Slices without lung set to air; the volume reduced to air, lung and body."""
    lung = lung_mask(hu)
    per_slice = lung.reshape(lung.shape[0], -1).mean(axis=1)  # lung share of each slice
    h = hu.copy()
    h[per_slice < 0.005] = -1000.0
    body, fat, soft = tissues(hu, lung)
    three = np.where(lung, -860.0, np.where(body, 40.0, -1000.0)).astype(np.float32)
    lt = torch.from_numpy(lung).float()[:, None]
    # what the lung touches: the voxels within two in-plane voxels outside the lung mask
    near = F.max_pool2d(lt, 5, 1, 2)[:, 0].numpy() > 0.5
    # vessels and small structures within the lungs: what an in-plane closing (5 x 5) of the
    # lung mask adds
    closed = (-F.max_pool2d(-F.max_pool2d(lt, 5, 1, 2), 5, 1, 2))[:, 0].numpy() > 0.5
    vessels = closed & body

    def set_to(mask: np.ndarray, value: float) -> np.ndarray:
        return np.where(mask, value, hu).astype(np.float32)

    return {"slices with under 0.5 % lung set to air": h,
            "vessels within the lungs set to -860": set_to(vessels, -860.0),
            "all fat (-200..-30 HU) set to 40": set_to(fat, 40.0),
            "all soft tissue (-30..150 HU) set to -100": set_to(soft, -100.0),
            "fat next to the lung set to 40": set_to(near & fat, 40.0),
            "soft tissue next to the lung set to -100": set_to(near & soft, -100.0),
            "three classes: air, lung -860, body 40": three,
            "lung set to -860, the rest as read": set_to(lung, -860.0),
            "body set to 40, the rest as read": set_to(body, 40.0)}


def edits(hu: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for s in (-40, -20, 20, 40):
        h = hu.copy()
        h[h > -200] += s
        out[f"above -200 HU {s:+d}"] = h
    h = hu.copy()
    m = (h > -200) & (h < 200)
    h[m] = np.clip(h[m], 30, 60)
    out["soft tissue clipped to 30..60"] = h
    h = hu.copy()
    h[h > 150] = 60
    out["above 150 HU set to 60"] = h
    out["smoothed 1 voxel"] = smooth(hu, 1.0)
    lung = lung_mask(hu)
    out["smoothed 1 voxel, lung only"] = np.where(lung, out["smoothed 1 voxel"], hu)
    out["smoothed 1 voxel, all but the lung"] = np.where(lung, hu, out["smoothed 1 voxel"])
    _, ny, nx = hu.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    ey, ex = (yy - (ny - 1) / 2) / (0.45 * ny), (xx - (nx - 1) / 2) / (0.45 * nx)
    outside = ey**2 + ex**2 > 1
    h = hu.copy()
    h[:, outside] = -1000.0
    out["air outside an in-plane ellipse of 0.9 x the grid"] = h
    return out | shape_edits(hu)


def region_edits(hu: np.ndarray) -> dict[str, np.ndarray]:
    """Two edits of the body (outside the lung mask, above -500 HU), each kept to one region
    of the grid at a time (the upper / middle / lower third of the slices holding body,
    the anterior / posterior half, the patient's right / left half): the body set to 40 HU,
    and its soft tissue's voxel-scale texture removed (soft tissue replaced by its 1-voxel
    Gaussian smoothing).  Which region carries a call, and whether it is its content or its
    fine texture."""
    lung = lung_mask(hu)
    body, _, soft = tissues(hu, lung)
    smoothed = smooth(hu, 1.0)
    nz, ny, nx = hu.shape
    zs = np.flatnonzero(body.reshape(nz, -1).any(axis=1))
    z0, z1 = (int(zs[0]), int(zs[-1]) + 1) if zs.size else (0, nz)
    cuts = np.linspace(z0, z1, 4).round().astype(int)
    zz, yy, xx = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    regions = {"upper third (z)": (zz >= cuts[2]) & (zz < cuts[3]),
               "middle third (z)": (zz >= cuts[1]) & (zz < cuts[2]),
               "lower third (z)": (zz >= cuts[0]) & (zz < cuts[1]),
               "anterior half": yy < ny // 2, "posterior half": yy >= ny // 2,
               "right half (patient)": xx < nx // 2, "left half (patient)": xx >= nx // 2}
    out: dict[str, np.ndarray] = {}
    for name, r in regions.items():
        out[f"body set to 40 in the {name}"] = np.where(body & r, 40.0, hu).astype(np.float32)
        out[f"soft-tissue fine texture removed in the {name}"] = np.where(
            soft & r, smoothed, hu).astype(np.float32)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--label", default="consolidation")
    ap.add_argument("--real", default=str(REPO.parent / "shared/data/ct/lung-pet-ct-dx/"
                                          "Lung_Dx-A0001"))
    ap.add_argument("--generated", default="", help="a `medassist synth` split directory")
    ap.add_argument("--n", type=int, default=3, help="generated normal cases to probe")
    ap.add_argument("--png", default="", help="write an overlay of the hot cells here")
    ap.add_argument("--regions", action="store_true",
                    help="also the region edits of the real series (region_edits)")
    args = ap.parse_args(argv)
    lm = load_model(args.checkpoint)
    hu = load_study(args.real, lm.cfg).hu.astype(np.float32)
    real_noise = soft_tissue_noise(hu)
    res: dict[str, Any] = {"checkpoint": args.checkpoint, "label": args.label,
                           "real": {"series": Path(args.real).name,
                                    "soft_tissue_noise_hu": real_noise,
                                    "z_slices": z_extent(hu),
                                    "body": body_composition(hu),
                                    "as_read": fire(lm, hu, args.label, per_slab=True)}}
    for name, h in edits(hu).items():
        res["real"][name] = fire(lm, h, args.label)
    res["real"]["presence, dense map kept to the lung"] = region_presence(lm, hu, args.label)
    if args.regions:
        res["real"]["regions"] = {name: fire(lm, h, args.label)
                                  for name, h in region_edits(hu).items()}
    soft_real = (hu > -200) & (hu < 200)
    real_residual = np.where(soft_real, hu - smooth(hu, 1.0), 0.0).astype(np.float32)
    if args.generated:
        gen: list[dict[str, Any]] = []
        for d in sorted(Path(args.generated).glob("case_*")):
            truth = json.loads((d / "truth.json").read_text(encoding="utf-8"))
            if truth["findings"]:
                continue
            g = load_study(d / "dicom", lm.cfg).hu.astype(np.float32)
            own = soft_tissue_noise(g)
            add = float(np.sqrt(max(real_noise**2 - own**2, 0.0)))
            rng = np.random.default_rng(len(gen))
            row: dict[str, Any] = {"case": d.name, "soft_tissue_noise_hu": own,
                                   "z_slices": z_extent(g), "body": body_composition(g),
                                   "as_read": fire(lm, g, args.label)}
            for k in (1, 2):
                noisy = g + rng.normal(0.0, k * add, g.shape).astype(np.float32)
                row[f"noise added, SD {k * add:.1f} HU"] = {
                    "soft_tissue_noise_hu": soft_tissue_noise(noisy),
                    **fire(lm, noisy, args.label)}
            if g.shape == hu.shape:
                # the real series' own fine texture, transplanted: its soft tissue minus its
                # 1-voxel Gaussian smoothing, added to the generated soft tissue (the texture's
                # spatial correlation is the real one's; where it lies does not matter)
                soft_g = (g > -200) & (g < 200)
                grafted = np.where(soft_g, g + real_residual, g).astype(np.float32)
                row["real soft-tissue residual added"] = {
                    "soft_tissue_noise_hu": soft_tissue_noise(grafted),
                    **fire(lm, grafted, args.label)}
            for name, h in shape_edits(g).items():
                row[name] = fire(lm, h, args.label)
            row["presence, dense map kept to the lung"] = region_presence(lm, g, args.label)
            gen.append(row)
            if len(gen) == args.n:
                break
        res["generated_normal"] = gen
        res["generated_z_slices"] = [
            z_extent(load_study(d / "dicom", lm.cfg).hu.astype(np.float32))
            for d in sorted(Path(args.generated).glob("case_*"))[:12]]
    if args.png:
        from PIL import Image

        rows = [overlay(lm, hu, args.label)]
        if args.generated and gen:
            g = load_study(Path(args.generated) / gen[0]["case"] / "dicom", lm.cfg).hu
            rows.append(overlay(lm, g.astype(np.float32), args.label))
        img = (np.concatenate(rows, 0) * 255).astype(np.uint8)
        Image.fromarray(img).save(args.png)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
