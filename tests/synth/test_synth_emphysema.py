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
from medassist.synth.fast_path import model_grid, render_tensor
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


def test_destruction_darkens_the_lung_around_the_lucencies_only(small_cfg: SynthConfig,
                                                               vocab: Vocabulary) -> None:
    """findings.emphysema_destruction_hu lowers the density of the lung around the lucencies
    (not labelled); the lucencies, their label map and everything else stay as they were."""
    fl = _with_extent(small_cfg, "fleischner")
    (i, _), = _emphysema_cases(small_cfg, vocab, 1)
    plain = make_case(fl, vocab, SEED, i, "test")
    ruined = make_case(dataclasses.replace(fl, findings=dataclasses.replace(
        fl.findings, emphysema_destruction_hu=(80.0, 80.0))), vocab, SEED, i, "test")
    e0, e1 = _emph(plain), _emph(ruined)
    assert "destruction_hu" not in e0.extra
    grade = e1.attrs["severity"]
    assert e1.extra["destruction_hu"] == pytest.approx(
        80.0 * {"mild": 0.35, "moderate": 0.65, "severe": 1.0}[grade])
    np.testing.assert_array_equal(e0.parts, e1.parts)
    assert [f.kind for f in plain.findings] == [f.kind for f in ruined.findings]
    hu0, lab0 = render_tensor(plain, fl.fast_path, noise=False)
    hu1, lab1 = render_tensor(ruined, fl.fast_path, noise=False)
    np.testing.assert_array_equal(lab0, lab1)
    drop = hu0 - hu1
    lung = (lab0 == 0) & (hu0 < -600)
    near = lung & (drop > 1.0)
    assert near.sum() > 50
    # the drop reaches the full drawn value somewhere in the lung around the lucencies
    assert float(drop[lung].max()) > 0.8 * e1.extra["destruction_hu"]
    # and nothing away from the lungs changes (more than 15 mm out: past the blurred edge)
    an = ruined.anatomy
    zs, ys, xs = model_grid(ruined, fl.fast_path).axes()
    out_mm = np.asarray(an.sd_lung((xs - an.cx)[None, None, :], (ys - an.cy)[None, :, None],
                                   (zs - an.z_carina)[:, None, None]))
    assert float(np.abs(drop)[out_mm > 15.0].max()) < 1.0
    with pytest.raises(SynthConfigError, match="emphysema_destruction_hu"):
        FindingsConfig(emphysema_destruction_hu=(50.0, 20.0))
