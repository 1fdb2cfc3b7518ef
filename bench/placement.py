"""Where does the model grid land on a scan, and how much of the lungs does it hold?

The model reads a fixed grid (the demo: 64 slices of 5 mm, 320 mm along the body axis).  A scan
longer than that is cut; ``ct.placement`` decides where (``multimodal.transforms.place_grid``):
"centre" always takes the scan's centre, "lungs" takes it too unless that leaves more than
``ct.placement_max_loss`` of the lungs out, and then moves the grid onto them.  For each
``medassist synth`` folder (``--data``, repeatable) and real study (``--real``) this reads every
case's DICOM as ``medassist report`` does, with both placements, and prints per set:

* ``lung_in_grid``: the share of the lungs inside the grid, centred and as placed (median,
  smallest, how many cases below 1.0, below 0.9 and below 0.5); ``lung_in_z_centred``: the
  centred grid's share along z alone (in-plane losses aside), what ``placement_max_loss``
  is compared with;
* ``moved``: the cases whose grid the placement moved off the centre, and by how many slices;
* ``scan_cuts_lung``: the cases whose scan itself ends within the lungs (inferiorly,
  superiorly), which the draft's technique states;
* ``grid_cuts_lung``: the cases whose placed grid leaves some lung out, below, above or
  in-plane (its field across, fixed in mm, narrower than a large chest);
* ``seconds_median``: the time of ``load_study`` per case (DICOM read, resampling, placement);
* ``midline_air``: the share of the body's midline that is air on the slices with the most
  lung (``multimodal.transforms.midline_air``; median and largest), and ``refused``: the
  cases ``medassist report`` refuses as no chest CT (less aerated lung than
  ``ct.min_lung_ml``, or more midline air than ``ct.max_midline_air``); every case is read
  here whatever it holds;
* with ``--fast-path SYNTH_CONFIG`` (the config, ``--seed``, ``--split`` and ``--shift`` the
  ``--data`` folders were written with): ``fast_path``, the training path's grid
  (``medassist.synth.fast_path.placed_grid``, the case regenerated from its index) against the
  DICOM path's: the difference of the first slice's z (mm), how many cases agree within one
  slice, how many it moved, and its time per case (``--coarsen N``: the render that finds the
  lungs at N times the grid's in-plane spacing instead of the fast path's own).

    .venv/bin/python bench/placement.py [--checkpoint models/demo] --data DIR [--data DIR ...]
        [--real STUDY ...] [--fast-path SYNTH_CONFIG --seed 7 --split test [--shift] [--coarsen N]]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _shares(v: Sequence[float]) -> dict[str, Any]:
    a = np.asarray(v, np.float64)
    return {"median": round(float(np.median(a)), 4), "min": round(float(a.min()), 4),
            "below_1": int((a < 1.0).sum()), "below_0.9": int((a < 0.9).sum()),
            "below_0.5": int((a < 0.5).sum())}


def _grid_z0(study: Any) -> float:
    """World z (mm) of the model grid's first slice centre."""
    src = study.to_source((0.0, 0.0, 0.0))
    return float((study.affine @ np.append(src, 1.0))[2])


def fast_path(studies: Sequence[Path], dicom_z0: Sequence[float], cfg: Any,
              synth_config: str, seed: int, split: str, shift: bool = False,
              coarsen: int = 0) -> dict[str, Any]:
    """``dicom_z0``: per study, the DICOM path's first grid slice z (from :func:`score`)."""
    from medassist.synth import fast_path as fp_module
    from medassist.synth.case import make_case
    from medassist.synth.config import load_config
    from medassist.synth.fast_path import model_grid, placed_grid
    from medassist.synth.findings import load_vocabulary

    if coarsen:
        fp_module.PLACEMENT_COARSEN = coarsen

    scfg = load_config(synth_config)
    scfg = dataclasses.replace(scfg, fast_path=dataclasses.replace(
        scfg.fast_path, shape=cfg.ct.grid_shape, spacing_mm=cfg.ct.spacing_mm,
        pad_hu=cfg.ct.pad_hu, placement=cfg.ct.placement,
        placement_max_loss=cfg.ct.placement_max_loss))
    vocab = load_vocabulary(scfg.findings.vocabulary_path())
    diffs: list[float] = []
    moved = 0
    times: list[float] = []
    for s, z0 in zip(studies, dicom_z0, strict=True):
        index = int(s.parent.name.rsplit("_", 1)[-1])
        case = make_case(scfg, vocab, seed, index, split, shift)
        if case.case_id != s.parent.name:
            raise RuntimeError(f"{s.parent}: regenerated as {case.case_id}; pass the config, "
                               "--seed, --split and --shift the folder was written with")
        t0 = time.perf_counter()
        g = placed_grid(case, scfg.fast_path)
        times.append(time.perf_counter() - t0)
        moved += g.origin[0] != model_grid(case, scfg.fast_path).origin[0]
        diffs.append(g.origin[0] - z0)
    d = np.abs(np.asarray(diffs))
    return {"z0_diff_mm": {"median": round(float(np.median(d)), 2),
                           "max": round(float(d.max()), 2)},
            "within_one_slice": int((d <= cfg.ct.spacing_mm[0] + 1e-6).sum()),
            "moved": moved, "seconds_median": round(float(np.median(times)), 3),
            "coarsen": fp_module.PLACEMENT_COARSEN}


def score(studies: Sequence[Path], cfg: Any, grid_z0: list[float] | None = None
          ) -> dict[str, Any]:
    """``grid_z0``, if given, gets each placed grid's first slice z (mm)."""
    from medassist.drafting import load_study, not_a_chest

    limits = cfg.ct
    cfg = dataclasses.replace(cfg, ct=dataclasses.replace(cfg.ct, min_lung_ml=0.0))
    centred = dataclasses.replace(cfg, ct=dataclasses.replace(cfg.ct, placement="centre"))
    midline: list[float] = []
    refused = 0
    placed_in: list[float] = []
    centre_in: list[float] = []
    centre_z: list[float] = []
    moves: list[int] = []
    cuts = {"inferior": 0, "superior": 0}
    grid_cuts = {"inferior": 0, "superior": 0, "in-plane": 0}
    times: list[float] = []
    for s in studies:
        t0 = time.perf_counter()
        placed = load_study(s, cfg)
        if grid_z0 is not None:
            grid_z0.append(_grid_z0(placed))
        times.append(time.perf_counter() - t0)
        centre = load_study(s, centred)
        if placed.placement is None or centre.placement is None:
            raise RuntimeError(f"{s}: no placement recorded")
        midline.append(placed.placement.midline_air)
        refused += bool(not_a_chest(placed.placement, limits))
        placed_in.append(placed.placement.lung_in_grid)
        centre_in.append(centre.placement.lung_in_grid)
        centre_z.append(centre.placement.lung_in_z)
        moves.append(placed.placement.start[0] - centre.placement.start[0])
        for end in placed.placement.scan_cuts_lung:
            cuts[end] += 1
        for where in placed.placement.grid_cuts_lung:
            grid_cuts[where] += 1
    moved = [m for m in moves if m]
    return {
        "cases": len(studies), "placement": cfg.ct.placement,
        "placement_max_loss": cfg.ct.placement_max_loss,
        "lung_in_grid_centred": _shares(centre_in),
        "lung_in_z_centred": _shares(centre_z), "lung_in_grid_placed": _shares(placed_in),
        "moved": len(moved),
        "moved_slices": {"median": float(np.median(np.abs(moved))), "max": int(max(
            np.abs(moved)))} if moved else None,
        "scan_cuts_lung": cuts, "grid_cuts_lung": grid_cuts,
        "seconds_median": round(float(np.median(times)), 3),
        "midline_air": {"median": round(float(np.median(midline)), 4),
                        "max": round(max(midline), 4)},
        "refused": refused,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(REPO / "models/demo"))
    ap.add_argument("--data", action="append", default=[], help="a medassist synth folder")
    ap.add_argument("--real", action="append", default=[], help="a real CT study")
    ap.add_argument("--fast-path", default="", metavar="SYNTH_CONFIG",
                    help="compare the training fast path's grid with the DICOM path's")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--split", default="test")
    ap.add_argument("--shift", action="store_true", help="the folders were written --shift")
    ap.add_argument("--coarsen", type=int, default=0,
                    help="the fast path's in-plane coarsening for the lungs (default: its own)")
    args = ap.parse_args()

    from multimodal.checkpoint import load_checkpoint

    _model, cfg, *_ = load_checkpoint(args.checkpoint)
    out: dict[str, Any] = {"checkpoint": args.checkpoint,
                           "grid_mm": cfg.ct.grid_shape[0] * cfg.ct.spacing_mm[0]}
    for d in args.data:
        studies = sorted(c / "dicom" for c in Path(d).iterdir() if (c / "dicom").is_dir())
        z0: list[float] = []
        out[d] = score(studies, cfg, z0)
        if args.fast_path:
            out[d]["fast_path"] = fast_path(studies, z0, cfg, args.fast_path, args.seed,
                                            args.split, args.shift, args.coarsen)
    for s in args.real:
        out[s] = score([Path(s)], cfg)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
