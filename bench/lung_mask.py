"""What does the lung mask cost, and does the faster labelling change any result?

``multimodal.cardiac.lung_mask`` (the air the body encloses, slice by slice) is read by the
grid's placement, by the pericardial band on every draft and by the cardiothoracic ratio where
cardiomegaly is called.  Since stop 35 it labels each slice's 4-connected pieces once
(``components``: runs along x joined across rows); until then (stop 34) it flooded from the
slice's border by straight runs along y and x in turn until nothing changed, and labelled the
body's pieces the same way (run maxima until nothing changed).  That implementation is kept
here as the baseline.

For every case of each ``medassist synth`` folder (``--data``, repeatable; ``--limit`` the
first N of each) and every real study (``--real``), read as ``medassist report`` reads it onto
the model grid of ``--checkpoint``, this runs baseline and current side by side, interleaved,
and prints one JSON object:

* ``identical``: cases whose masks (both ``lateral`` modes), pericardial band
  (``pericardial_fluid``) and cardiothoracic ratio (``cardiothoracic_ratio``) are equal, of
  ``n_cases``;
* ``seconds_median``: per case, baseline and current: ``lung_mask`` (one call),
  ``pericardial_fluid`` and ``cardiothoracic_ratio`` (each whole, with the baseline's mask and
  labelling patched in), and the ratios.

    .venv/bin/python bench/lung_mask.py --data /tmp/runs/test_id_body/test \\
        [--data DIR ...] [--limit N] [--real STUDY ...] [--checkpoint models/demo]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_AIR_HU = -400.0
Mask = npt.NDArray[np.bool_]
Labels = npt.NDArray[np.int64]


# --- the baseline: stop 34's flood fill and labelling ---------------------------------------

def _spread(passable: Mask, seen: Mask, axis: int) -> Mask:
    a = np.moveaxis(passable, axis, -1)
    s = np.moveaxis(seen, axis, -1)
    start = a.copy()
    start[..., 1:] &= ~a[..., :-1]
    run = np.cumsum(start.ravel()).reshape(a.shape)
    hit = np.bincount(run[a & s], minlength=int(run.max()) + 1) > 0
    return np.moveaxis(a & hit[run], -1, axis)


def _run_max(lab: Labels, axis: int) -> Labels:
    a = np.moveaxis(lab, axis, -1)
    on = a > 0
    start = on.copy()
    start[..., 1:] &= ~on[..., :-1]
    flat, first = a[on], start[on]
    if flat.size == 0:
        return lab
    best = np.maximum.reduceat(flat, np.flatnonzero(first))
    out = np.zeros_like(a)
    out[on] = best[np.cumsum(first) - 1]
    return np.moveaxis(out, -1, axis)


def baseline_components(mask: Mask) -> Labels:
    lab = np.where(mask, np.arange(1, mask.size + 1, dtype=np.int64).reshape(mask.shape), 0)
    while True:
        new = _run_max(_run_max(lab, 2), 1)
        if np.array_equal(new, lab):
            return lab
        lab = new


def baseline_lung_mask(hu: npt.NDArray[np.floating], air_hu: float, lateral: bool = True
                       ) -> Mask:
    from multimodal.cardiac import _BODY_PIECE_SHARE

    lab = baseline_components(np.asarray(hu >= air_hu))
    body = np.zeros(lab.shape, dtype=bool)
    for k in range(lab.shape[0]):
        ids, counts = np.unique(lab[k][lab[k] > 0], return_counts=True)
        if ids.size:
            body[k] = np.isin(lab[k], ids[counts >= _BODY_PIECE_SHARE * counts.max()])
    air = np.asarray(hu < air_hu)
    free = ~body
    outside = np.zeros_like(air)
    edges: list[tuple[slice | int, ...]] = [np.s_[:, 0, :], np.s_[:, -1, :]]
    if lateral:
        edges += [np.s_[:, :, 0], np.s_[:, :, -1]]
    for edge in edges:
        outside[edge] = free[edge]
    for _ in range(sum(hu.shape[1:])):
        grown = _spread(free, _spread(free, outside, 2), 1)
        if np.array_equal(grown, outside):
            break
        outside = grown
    out: Mask = air & ~outside
    return out


@contextmanager
def _baseline() -> Iterator[None]:
    """The pericardial band and the ratio with the baseline's mask and labelling."""
    import multimodal.cardiac as cardiac
    import multimodal.pericardium as peri

    patch = ((cardiac, "lung_mask", baseline_lung_mask), (peri, "lung_mask", baseline_lung_mask),
             (peri, "components", baseline_components))
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patch]
    for mod, name, f in patch:
        setattr(mod, name, f)
    try:
        yield
    finally:
        for mod, name, f in saved:
            setattr(mod, name, f)


# --- the comparison ---------------------------------------------------------------------------

def _timed(f: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


def _plain(x: Any) -> Any:
    return None if x is None else dataclasses.astuple(x)


def compare(hu: npt.NDArray[np.float32], spacing: tuple[float, float, float]
            ) -> tuple[bool, dict[str, tuple[float, float]]]:
    """(all results equal, name -> (baseline s, current s)) for one model-grid volume."""
    from multimodal.cardiac import cardiothoracic_ratio, lung_mask
    from multimodal.pericardium import pericardial_fluid

    same = True
    secs: dict[str, tuple[float, float]] = {}
    for lateral in (True, False):
        old, t_old = _timed(partial(baseline_lung_mask, hu, _AIR_HU, lateral))
        new, t_new = _timed(partial(lung_mask, hu, _AIR_HU, lateral))
        same &= bool(np.array_equal(old, new))
        if lateral:
            secs["lung_mask"] = (t_old, t_new)
    for name, f in (("pericardial_fluid", lambda: pericardial_fluid(hu, spacing)),
                    ("cardiothoracic_ratio", lambda: cardiothoracic_ratio(hu, spacing))):
        with _baseline():
            old, t_old = _timed(f)
        new, t_new = _timed(f)
        same &= _plain(old) == _plain(new)
        secs[name] = (t_old, t_new)
    return same, secs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", default=[], help="a medassist synth split folder")
    ap.add_argument("--real", action="append", default=[], help="a real DICOM study folder")
    ap.add_argument("--limit", type=int, default=0, help="the first N cases of each folder")
    ap.add_argument("--checkpoint", default=str(REPO / "models/demo"))
    a = ap.parse_args(argv)
    if not a.data and not a.real:
        ap.error("give --data or --real")
    import torch

    from medassist.drafting import load_study
    from multimodal.checkpoint import load_checkpoint

    torch.set_num_threads(2)
    _, cfg, *_ = load_checkpoint(a.checkpoint)
    studies: list[Path] = []
    for d in a.data:
        cases = sorted(p for p in Path(d).iterdir() if (p / "dicom").is_dir())
        studies += [p / "dicom" for p in (cases[: a.limit] if a.limit else cases)]
    studies += [Path(r) for r in a.real]
    spacing = tuple(float(s) for s in cfg.ct.spacing_mm)
    n_same = 0
    times: dict[str, list[tuple[float, float]]] = {}
    differ: list[str] = []
    for s in studies:
        hu = np.asarray(load_study(s, cfg).hu, np.float32)
        same, secs = compare(hu, (spacing[0], spacing[1], spacing[2]))
        n_same += same
        if not same:
            differ.append(str(s))
        for k, v in secs.items():
            times.setdefault(k, []).append(v)
    med = {}
    for k, pairs in times.items():
        old, new = np.median([t[0] for t in pairs]), np.median([t[1] for t in pairs])
        med[k] = {"baseline": round(float(old), 4), "current": round(float(new), 4),
                  "speedup": round(float(old / new), 2)}
    print(json.dumps({"n_cases": len(studies), "identical": n_same, "differ": differ,
                      "grid": list(cfg.ct.grid_shape), "seconds_median": med}, indent=1))


if __name__ == "__main__":
    main()
