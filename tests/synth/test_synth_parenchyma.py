"""The opt-in lung parenchyma (medassist/synth/parenchyma.py): off by default and then leaves
every case as it was; when on, texture, subpleural density and pleural relief show on the model
grid, and every other part of the anatomy is the one drawn without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medassist.synth.case import Case, make_case
from medassist.synth.config import AnatomyConfig, SynthConfig, config_from_mapping, load_config
from medassist.synth.errors import SynthConfigError
from medassist.synth.fast_path import render_tensor
from medassist.synth.findings import Vocabulary
from tests.synth.anatomy_util import SEED, grid_coords, normal_case_index
from tests.synth.anatomy_util import assert_same_except as _assert_same_except
from tests.synth.anatomy_util import sample as _anatomy
from tests.synth.anatomy_util import with_anatomy as _with_anatomy

ROOT = Path(__file__).resolve().parents[2]


def _lung_local_sd(hu: np.ndarray, lung: np.ndarray) -> float:
    # HU SD over 3 x 3 in-plane windows fully inside the lung
    inner = lung[:, 1:-1, 1:-1].copy()
    win = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            sl = (slice(None), slice(1 + dy, hu.shape[1] - 1 + dy),
                  slice(1 + dx, hu.shape[2] - 1 + dx))
            inner &= lung[sl]
            win.append(hu[sl])
    sd = np.std(np.stack(win), axis=0)
    return float(np.median(sd[inner]))


def test_off_by_default() -> None:
    cfg = AnatomyConfig()
    assert cfg.parenchyma_texture_hu == cfg.parenchyma_subpleural_hu == cfg.parenchyma_relief_mm
    an = _anatomy()
    assert an.parenchyma is None
    assert "parenchyma" not in an.to_json()


def test_parenchyma_is_drawn_last() -> None:
    base = _anatomy()
    rich = _anatomy(texture_hu=(20.0, 40.0), subpleural_hu=(30.0, 60.0), relief_mm=(1.0, 5.0))
    assert rich.parenchyma is not None
    assert 20.0 <= rich.parenchyma.texture_hu <= 40.0
    assert 1.0 <= rich.parenchyma.relief_mm <= 5.0
    _assert_same_except(base, rich, "parenchyma")


def test_relief_pulls_the_lung_surface_in_and_never_out() -> None:
    base = _anatomy()
    rich = _anatomy(relief_mm=(5.0, 5.0))
    rng = np.random.default_rng(0)
    u = rng.uniform(-200, 200, 20000)
    v = rng.uniform(-150, 150, 20000)
    za = rng.uniform(-150, 100, 20000)
    d0, d1 = base.sd_lung(u, v, za), rich.sd_lung(u, v, za)
    assert np.all(d1 >= d0 - 1e-5)
    assert np.all(d1 <= d0 + 5.0 + 1e-5)
    inside0, inside1 = d0 < 0, d1 < 0
    assert inside1.sum() < inside0.sum()
    assert not np.any(inside1 & ~inside0)


def test_texture_and_subpleural_density_show_on_the_model_grid(
        small_cfg: SynthConfig, vocab: Vocabulary) -> None:
    i = normal_case_index(small_cfg, vocab)
    smooth = make_case(small_cfg, vocab, SEED, i, "test")
    hu0, _ = render_tensor(smooth, small_cfg.fast_path, noise=False)
    depth = _lung_depth_mm(smooth, small_cfg)
    lung = depth > 4.0  # a voxel or more inside the lungs
    textured = make_case(_with_anatomy(small_cfg, parenchyma_texture_hu=(40.0, 40.0)),
                         vocab, SEED, i, "test")
    hu1, _ = render_tensor(textured, small_cfg.fast_path, noise=False)
    assert textured.anatomy.parenchyma is not None
    assert textured.anatomy.lung_hu == smooth.anatomy.lung_hu
    sd0, sd1 = _lung_local_sd(hu0, lung), _lung_local_sd(hu1, lung)
    assert sd1 > sd0 + 8.0, (sd0, sd1)
    # no texture away from the lungs
    far = depth < -15.0
    assert float(np.abs(hu1 - hu0)[far].max()) < 1.0

    dense = make_case(_with_anatomy(small_cfg, parenchyma_subpleural_hu=(80.0, 80.0)),
                      vocab, SEED, i, "test")
    hu2, _ = render_tensor(dense, small_cfg.fast_path, noise=False)
    rise = hu2 - hu0
    rim, core = (depth > 4.0) & (depth < 8.0), depth > 25.0
    assert rim.any() and core.any()
    assert float(rise[rim].mean()) > float(rise[core].mean()) + 15.0
    assert float(np.abs(rise)[far].max()) < 1.0


def _lung_depth_mm(case: Case, cfg: SynthConfig) -> np.ndarray:
    """Depth (mm) of each model-grid voxel centre inside the phantom's lungs (< 0 outside)."""
    return -np.asarray(case.anatomy.sd_lung(*grid_coords(case, cfg)))


def test_shipped_parenchyma_config_loads_and_bad_ranges_raise() -> None:
    cfg = load_config(ROOT / "configs" / "synth" / "small_fleischner_parenchyma.yaml")
    assert cfg.anatomy.parenchyma_texture_hu[1] > 0
    for key, value in (("parenchyma_texture_hu", [10.0, 5.0]),
                       ("parenchyma_relief_mm", [0.0, 30.0]),
                       ("parenchyma_subpleural_hu", [-5.0, 10.0]),
                       ("lung_gradient_hu", [0.0, 500.0])):
        with pytest.raises(SynthConfigError, match=key):
            config_from_mapping({"anatomy": {key: value}})


def test_texture_skew_shortens_the_low_tail_only() -> None:
    sym = _anatomy(texture_hu=(40.0, 40.0))
    skew = _anatomy(texture_hu=(40.0, 40.0), texture_skew=0.7)
    assert sym.parenchyma is not None and skew.parenchyma is not None
    # a constant, not a draw: the same waves and amplitudes
    np.testing.assert_array_equal(sym.parenchyma.texture_waves, skew.parenchyma.texture_waves)
    assert sym.parenchyma.texture_hu == skew.parenchyma.texture_hu
    assert "texture_skew" not in sym.to_json()["parenchyma"]
    assert skew.to_json()["parenchyma"]["texture_skew"] == 0.7
    rng = np.random.default_rng(1)
    u, v, za = (rng.uniform(-150, 150, 50000) for _ in range(3))
    t0, t1 = sym.parenchyma.texture(u, v, za), skew.parenchyma.texture(u, v, za)
    assert abs(float(t1.mean())) < 4.0
    assert 30.0 < float(t1.std()) < 50.0
    lo0, lo1 = np.percentile(t0, 1), np.percentile(t1, 1)
    hi0, hi1 = np.percentile(t0, 99), np.percentile(t1, 99)
    assert lo1 > lo0 + 20.0, (lo0, lo1)  # the dark tail is short
    assert hi1 > hi0, (hi0, hi1)  # the dense tail is long
    assert float(((t1 - t1.mean()) ** 3).mean()) > 0


def test_texture_skew_is_validated() -> None:
    for bad in (-0.1, 1.5):
        with pytest.raises(SynthConfigError, match="parenchyma_texture_skew"):
            config_from_mapping({"anatomy": {"parenchyma_texture_skew": bad}})
    cfg = load_config(ROOT / "configs" / "synth" / "small_fleischner_parenchyma_emphysema.yaml")
    assert cfg.anatomy.parenchyma_texture_skew > 0
    assert cfg.findings.emphysema_destruction_hu[1] > 0


def test_rib_offset_moves_the_ribs_towards_the_pleura_only() -> None:
    base = _anatomy()
    near = _anatomy(rib_offset_mm=3.5)
    assert base.rib_offset_mm == 7.0 and "rib_offset_mm" not in base.to_json()
    assert near.to_json()["rib_offset_mm"] == 3.5
    _assert_same_except(base, near, "rib_offset_mm")  # a constant, not a draw
    for side in ("right", "left"):
        for i in (3, 6):
            pu, pv, pz = base.rib_point(side, i, 0.3)
            qu, qv, qz = near.rib_point(side, i, 0.3)
            d0 = float(base.sd_cavity(np.asarray(pu), np.asarray(pv), np.asarray(pz)))
            d1 = float(near.sd_cavity(np.asarray(qu), np.asarray(qv), np.asarray(qz)))
            assert d0 > d1 + 2.5 > 2.5, (side, i, d0, d1)
    with pytest.raises(SynthConfigError, match="rib_offset_mm"):
        config_from_mapping({"anatomy": {"rib_offset_mm": 30.0}})
