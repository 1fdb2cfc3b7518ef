"""How well does ``multimodal.measure`` measure the generated masses, and which does it refuse?

The draft states a called nodule's or mass's size measured on the CT where the measurement
passes its checks (``heads.measure``), else the size head's estimate.  On the held-out tests
only a few masses are called, so this bench measures every generated mass of the validation
split (seed 7, never a test case) directly: each case is rendered with the generator's fast
path onto the checkpoint's model grid, the mass's reference box (its label voxels) is widened
to whole patch cells, as the model's evidence box is, and :func:`multimodal.measure.
measure_lesion` measures inside it.  Per split (``--shift`` adds the shift split's
validation cases) it prints the masses measured, the MAE of the measured diameter against the
reference diameter, the largest errors, the MAE of the axial long and short axis and the
craniocaudal extent (``Measurement.axial_mm``, ``craniocaudal_mm``) against the reference
ellipsoid's extents (the generator's are axis-aligned), and the same by contact: the share of
the voxels just outside the mass that are not lung (chest wall, mediastinum, diaphragm),
below 0.1, 0.1-0.3 and 0.3 or more.  ``--set KEY=VALUE`` (repeatable) changes a
``heads.measure`` field for a second, side-by-side run on the same volumes (e.g. ``--set
max_wall_share=0.35``).

    .venv/bin/python bench/mass_measure.py [--checkpoint models/demo] [--masses 60] [--shift]
        [--synth-config configs/synth/small_fleischner_body.yaml] [--set KEY=VALUE ...]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medassist.synth.case import make_case  # noqa: E402
from medassist.synth.config import FastPathConfig, load_config  # noqa: E402
from medassist.synth.fast_path import render_tensor  # noqa: E402
from medassist.synth.findings import load_vocabulary  # noqa: E402
from multimodal.config import MeasureConfig, load_model_config  # noqa: E402
from multimodal.measure import measure_lesion  # noqa: E402

CONTACT_BINS = ((0.0, 0.1), (0.1, 0.3), (0.3, 1.01))


def shell(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The voxels 6-adjacent to ``mask`` and not in it (nothing beyond the volume's faces)."""
    p = np.pad(mask, 1)
    out = np.zeros_like(mask)
    for ax in range(3):
        for d in (-1, 1):
            out |= np.roll(p, d, axis=ax)[1:-1, 1:-1, 1:-1]
    return out & ~mask


def cell_box(mask: npt.NDArray[np.bool_], patch: tuple[int, int, int]) -> list[int]:
    """The mask's bounding box widened to whole patch cells (inclusive voxels)."""
    idx = np.nonzero(mask)
    lo = [int(i.min()) // p * p for i, p in zip(idx, patch, strict=True)]
    hi = [(int(i.max()) // p + 1) * p - 1 for i, p in zip(idx, patch, strict=True)]
    return [*lo, *hi]


def parse_set(items: list[str], base: MeasureConfig) -> MeasureConfig | None:
    if not items:
        return None
    kw: dict[str, Any] = {}
    for it in items:
        key, _, val = it.partition("=")
        if not hasattr(base, key):
            raise SystemExit(f"--set: heads.measure has no field {key!r}")
        cur = getattr(base, key)
        if isinstance(cur, bool):
            kw[key] = val.lower() in ("1", "true", "yes")
        elif isinstance(cur, tuple):
            kw[key] = tuple(float(v) for v in val.split(","))
        else:
            kw[key] = type(cur)(val)
    return dataclasses.replace(base, **kw)


def summary(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    done = [r for r in rows if r[key] is not None]
    err = np.asarray([abs(r[key] - r["size_mm"]) for r in done])
    worst = sorted(done, key=lambda r: -abs(r[key] - r["size_mm"]))[:4]
    axes = np.asarray([[abs(a - b) for a, b in zip(r[key + "_axes"], r["ref_axes"],
                                                   strict=True)]
                       for r in done if r[key + "_axes"] is not None]).reshape(-1, 3)
    out: dict[str, Any] = {
        "masses": len(rows), "measured": len(done),
        "mae_mm": round(float(err.mean()), 2) if len(err) else None,
        "axes_mae_mm": {k: round(float(v), 2) for k, v in zip(
            ("axial_long", "axial_short", "craniocaudal"), axes.mean(0), strict=True)}
        if len(axes) else None,
        "within_3mm": int((err <= 3.0).sum()),
        "largest_errors": [[r["size_mm"], r[key], r["contact"]] for r in worst],
        "by_contact": {}}
    for lo, hi in CONTACT_BINS:
        sub = [r for r in rows if lo <= r["contact"] < hi]
        dd = [abs(r[key] - r["size_mm"]) for r in sub if r[key] is not None]
        out["by_contact"][f"{lo}-{min(hi, 1.0)}"] = {
            "masses": len(sub), "measured": len(dd),
            "mae_mm": round(float(np.mean(dd)), 2) if dd else None}
    return out


def run_split(shift: bool, n: int, synth: str, grid: tuple[tuple[int, int, int],
              tuple[float, float, float]], patch: tuple[int, int, int],
              cfgs: dict[str, MeasureConfig], rng_range: tuple[float, float]
              ) -> dict[str, Any]:
    scfg = load_config(synth)
    vocab = load_vocabulary(scfg.findings.vocabulary_path())
    rows: list[dict[str, Any]] = []
    secs = dict.fromkeys(cfgs, 0.0)
    index = 0
    while len(rows) < n and index < 50 * n:
        case = make_case(scfg, vocab, 7, index, "val", shift)
        index += 1
        masses = [f for f in (x.to_json(case.anatomy) for x in case.findings)
                  if f["kind"] == "lung_mass"]
        if not masses:
            continue
        hu, lab = render_tensor(case, FastPathConfig(shape=grid[0], spacing_mm=grid[1]))
        hu = np.asarray(hu, np.float32)
        for f in masses:
            m = np.asarray(lab) == f["label_value"]
            if not m.any():
                continue
            sh = shell(m)
            ext = f["extent_mm"]
            row: dict[str, Any] = {"case": case.case_id, "size_mm": float(f["size_mm"]),
                                   "contact": round(float((hu[sh] > -500).mean()), 3),
                                   "ref_axes": (max(ext["x"], ext["y"]), min(ext["x"], ext["y"]),
                                                ext["z"])}
            box = cell_box(m, patch)
            for name, mc in cfgs.items():
                t0 = time.perf_counter()
                got = measure_lesion(hu, grid[1], box, mc, rng_range)
                secs[name] += time.perf_counter() - t0
                row[name] = None if got is None else round(got.diameter_mm, 1)
                # (getattr: the bench also runs on checkouts before stop 31, without axes)
                axial = getattr(got, "axial_mm", None)
                row[name + "_axes"] = None if got is None or axial is None else (
                    axial[0], axial[1], got.craniocaudal_mm)
            rows.append(row)
    out = {name: summary(rows, name) for name in cfgs}
    for name in cfgs:
        out[name]["seconds_per_mass"] = round(secs[name] / max(len(rows), 1), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(REPO / "models/demo"))
    ap.add_argument("--masses", type=int, default=60, help="masses per split")
    ap.add_argument("--shift", action="store_true", help="also the shift split")
    ap.add_argument("--synth-config",
                    default=str(REPO / "configs/synth/small_fleischner_body.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a heads.measure field for a second run side by side")
    a = ap.parse_args(argv)
    cfg = load_model_config(str(Path(a.checkpoint) / "config.json"))
    base = cfg.heads.measure
    cfgs = {"config": base}
    alt = parse_set(a.set, base)
    if alt is not None:
        cfgs["with_set"] = alt
    rng_range = next(((lo, hi) for lab, lo, hi in base.lesions if lab == "lung_mass"),
                     (30.0, 120.0))
    grid = (cfg.ct.grid_shape, cfg.ct.spacing_mm)
    out: dict[str, Any] = {"checkpoint": a.checkpoint, "set": a.set, "seed": 7,
                           "split": "val", "grid": grid, "splits": {}}
    for shift in ([False, True] if a.shift else [False]):
        out["splits"]["shift" if shift else "in_distribution"] = run_split(
            shift, a.masses, a.synth_config, grid, cfg.ct.patch, cfgs, rng_range)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
