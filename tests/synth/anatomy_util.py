"""Helpers shared by the opt-in anatomy tests (parenchyma, ribs, habitus)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from medassist.synth.case import Case, make_case
from medassist.synth.config import SynthConfig
from medassist.synth.fast_path import model_grid
from medassist.synth.findings import Vocabulary
from medassist.synth.phantom import Anatomy, sample_anatomy

#: the seed of the opt-in anatomy tests' cases
SEED = 11


def sample(**kw: Any) -> Anatomy:
    """One anatomy from a fixed seed and the default ranges, with the given options."""
    rng = np.random.default_rng(3)
    return sample_anatomy(rng, (0.85, 1.2), (5.0, 35.0), 25.0, (-880.0, -800.0), (0.88, 1.08),
                          6, False, **kw)


def with_anatomy(cfg: SynthConfig, **kw: Any) -> SynthConfig:
    return dataclasses.replace(cfg, anatomy=dataclasses.replace(cfg.anatomy, **kw))


def assert_same_except(base: Anatomy, other: Anatomy, *names: str) -> None:
    """Every Anatomy field but ``names`` is equal: the option drew nothing else."""
    for f in dataclasses.fields(Anatomy):
        if f.name in names:
            continue
        a, b = getattr(base, f.name), getattr(other, f.name)
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f.name)
        else:
            assert a == b, f.name


def normal_case_index(cfg: SynthConfig, vocab: Vocabulary) -> int:
    """The first test case of ``SEED`` without findings."""
    for i in range(50):
        if not make_case(cfg, vocab, SEED, i, "test").findings:
            return i
    raise RuntimeError("no normal case in 50")


def grid_coords(case: Case, cfg: SynthConfig) -> tuple[Any, Any, Any]:
    """Anatomy coordinates (u, v, za) of the model-grid voxel centres, broadcastable to the
    (z, y, x) volume."""
    an = case.anatomy
    zs, ys, xs = model_grid(case, cfg.fast_path).axes()
    return ((xs - an.cx)[None, None, :], (ys - an.cy)[None, :, None],
            (zs - an.z_carina)[:, None, None])
