"""findings.emphysema_extent: "trace" keeps the original generator; "fleischner" gives each
grade the share of the upper-zone lung that its Fleischner grade describes, so emphysema
shows as low attenuation on 5 mm slices."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from medassist.synth.case import Case, make_case
from medassist.synth.config import FindingsConfig, SynthConfig
from medassist.synth.errors import SynthConfigError
from medassist.synth.findings import Finding, Vocabulary
from medassist.synth.writer import render_case

SEED = 5


def _with_extent(cfg: SynthConfig, extent: str) -> SynthConfig:
    return dataclasses.replace(
        cfg, findings=dataclasses.replace(cfg.findings, emphysema_extent=extent))


def _emphysema_cases(cfg: SynthConfig, vocab: Vocabulary, n: int) -> list[tuple[int, Case]]:
    out = []
    for i in range(400):
        case = make_case(cfg, vocab, SEED, i, "test")
        if any(f.kind == "emphysema" for f in case.findings):
            out.append((i, case))
            if len(out) == n:
                break
    return out


def _emph(case: Case) -> Finding:
    return next(f for f in case.findings if f.kind == "emphysema")


def test_extent_is_validated() -> None:
    with pytest.raises(SynthConfigError, match="emphysema_extent"):
        FindingsConfig(emphysema_extent="mild")


def test_fleischner_emphysema_is_larger_and_grows_with_grade(small_cfg: SynthConfig,
                                                            vocab: Vocabulary) -> None:
    assert small_cfg.findings.emphysema_extent == "trace"  # the default keeps old data
    fl = _with_extent(small_cfg, "fleischner")
    pairs = _emphysema_cases(small_cfg, vocab, 6)
    assert len(pairs) == 6
    by_grade: dict[str, list[float]] = {}
    for i, trace_case in pairs:
        # the same case index: everything before the emphysema is drawn identically
        f_case = make_case(fl, vocab, SEED, i, "test")
        t, f = _emph(trace_case), _emph(f_case)
        assert f.attrs["severity"] == t.attrs["severity"]
        assert f.volume_ml > 4 * t.volume_ml, (t.attrs["severity"], t.volume_ml, f.volume_ml)
        by_grade.setdefault(f.attrs["severity"], []).append(f.volume_ml)
    means = {g: float(np.mean(v)) for g, v in by_grade.items()}
    order = [g for g in ("mild", "moderate", "severe") if g in means]
    assert [means[g] for g in order] == sorted(means[g] for g in order), means


def test_fleischner_emphysema_shows_on_5mm_slices(small_cfg: SynthConfig,
                                                 vocab: Vocabulary) -> None:
    """Rendered on the 5 mm grid, the same case's emphysema labels >= 10x the voxels of the
    trace extent (bench/finding_visibility.py: median 0.18 % vs 4.12 % of the lung), and they
    read darker than the lung around them."""
    (i, case), = _emphysema_cases(small_cfg, vocab, 1)
    vox = {}
    for extent, c in (("trace", case),
                      ("fleischner", make_case(_with_extent(small_cfg, "fleischner"), vocab,
                                               SEED, i, "test"))):
        res = render_case(c)
        mask = res.labels == _emph(c).index + 1
        lung = (res.labels == 0) & (res.hu < -600) & (res.hu > -980)
        assert float(np.median(res.hu[mask])) < float(np.median(res.hu[lung])) - 40
        vox[extent] = int(mask.sum())
    assert vox["fleischner"] >= 10 * vox["trace"], vox
