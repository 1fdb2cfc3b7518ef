"""The opt-in body realism outside the lungs (medassist/synth/habitus.py): off by default and
then every case is as it was; when on, a thinner chest wall grows the lungs, the thoracic inlet
and upper abdomen are soft tissue instead of fat on the model grid, the clavicles are there,
and nothing else of the anatomy changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medassist.synth.case import make_case
from medassist.synth.config import AnatomyConfig, SynthConfig, config_from_mapping, load_config
from medassist.synth.errors import SynthConfigError
from medassist.synth.fast_path import render_tensor
from medassist.synth.findings import Vocabulary
from medassist.synth.habitus import NECK_BELOW_APEX_MM, WALL_MM
from medassist.synth.phantom import sd_liver
from tests.synth.anatomy_util import (
    SEED,
    assert_same_except,
    grid_coords,
    normal_case_index,
    sample,
    with_anatomy,
)

ROOT = Path(__file__).resolve().parents[2]


def test_off_by_default() -> None:
    cfg = AnatomyConfig()
    assert cfg.chest_wall_mm == (WALL_MM, WALL_MM) and cfg.soft_tissue_fill is False
    an = sample()
    assert an.wall_mm == WALL_MM and an.soft_fill is None
    assert "wall_mm" not in an.to_json() and "soft_fill" not in an.to_json()


def test_soft_fill_is_drawn_last() -> None:
    base = sample()
    filled = sample(soft_tissue_fill=True)
    assert filled.soft_fill is not None
    assert 0.3 <= filled.soft_fill.liver_reach <= 0.5
    assert filled.to_json()["soft_fill"]["abdomen_hu"] == round(filled.soft_fill.abdomen_hu, 3)
    assert_same_except(base, filled, "soft_fill")


def test_thin_wall_grows_the_cavity_by_what_it_removes() -> None:
    base = sample()
    thin = sample(chest_wall_mm=(4.0, 4.0))
    assert thin.wall_mm == 4.0 and thin.to_json()["wall_mm"] == 4.0
    # the wall is drawn first, so the rest of this anatomy is another draw; compare through it
    assert thin.cav_a0 == pytest.approx(thin.body_a - thin.fat - thin.muscle - 4.0)
    assert base.cav_a0 == pytest.approx(base.body_a - base.fat - base.muscle - WALL_MM)
    za = np.asarray(0.0)
    ac, bc = thin.cavity_axes(za)
    ba, bb = thin.body_axes(za)
    assert float(ba - ac) == pytest.approx(thin.fat + thin.muscle + 4.0)
    assert float(bb - bc) == pytest.approx(0.8 * thin.fat + thin.muscle + 4.0)


def test_inlet_and_abdomen_are_soft_tissue_on_the_model_grid(
        small_cfg: SynthConfig, vocab: Vocabulary) -> None:
    cfg = with_anatomy(small_cfg, soft_tissue_fill=True)
    i = normal_case_index(small_cfg, vocab)
    fat_case = make_case(small_cfg, vocab, SEED, i, "test")
    soft_case = make_case(cfg, vocab, SEED, i, "test")
    assert not soft_case.findings
    hu0, _ = render_tensor(fat_case, small_cfg.fast_path, noise=False)
    hu1, _ = render_tensor(soft_case, cfg.fast_path, noise=False)
    an0, an1 = fat_case.anatomy, soft_case.anatomy
    u, v, za = grid_coords(fat_case, small_cfg)
    cav = an0.sd_cavity(u, v, za) < -6.0
    away = (an0.sd_lung(u, v, za) > 8.0) & (np.abs(u - an0.mid_u) > 20.0)  # no lung, trachea
    inlet = cav & away & (za > an0.apex_z - NECK_BELOW_APEX_MM + 6.0)
    assert inlet.sum() > 50
    assert float(np.median(hu0[inlet])) < -60.0  # fat
    assert float(np.median(hu1[inlet])) > 10.0  # muscle-like
    abdomen = cav & (za < an0.diaphragm_z(u, v, za) - 12.0) \
        & (sd_liver(an0, u, v, za) > 6.0) & (sd_liver(an1, u, v, za) > 6.0)
    fat = abdomen & (hu0 > -300.0) & (hu0 < -50.0)  # not organ, gas or outside the scan
    assert fat.sum() > 50
    assert float(np.median((hu1 - hu0)[fat])) > 20.0
    # the liver reaches further towards the patient's left
    assert np.count_nonzero(sd_liver(an1, u, v, za) < 0) > np.count_nonzero(
        sd_liver(an0, u, v, za) < 0)
    # clavicles: bone in front of the apices that the original phantom does not have
    front = (v < -0.5 * an0.cav_b0) & (za > an0.apex_z - 12.0) & (za < an0.apex_z + 12.0)
    assert np.count_nonzero((hu1 > 300.0) & front) > np.count_nonzero((hu0 > 300.0) & front) + 5
    # the lungs are untouched (beyond the point-spread blur of their edges)
    lung = an0.sd_lung(u, v, za) < -12.0
    assert float(np.abs(hu1 - hu0)[lung].max()) < 1.0


def test_top_margin_sets_the_scan_start_above_the_apex(
        small_cfg: SynthConfig, vocab: Vocabulary) -> None:
    from dataclasses import replace

    cfg = replace(small_cfg, geometry=replace(small_cfg.geometry, top_margin_mm=(40.0, 40.0)))
    case = make_case(cfg, vocab, SEED, 0, "test")
    an, grid = case.anatomy, case.acquisition.grid
    top = float(grid.axes()[0].max())
    assert top - (an.z_carina + an.apex_z) == pytest.approx(40.0, abs=0.01)


def test_shipped_config_loads_and_bad_ranges_raise() -> None:
    cfg = load_config(ROOT / "configs" / "synth" / "small_fleischner_body.yaml")
    assert cfg.anatomy.soft_tissue_fill and cfg.anatomy.chest_wall_mm[1] < WALL_MM
    assert cfg.geometry.top_margin_mm[1] > 30.0
    with pytest.raises(SynthConfigError, match="chest_wall_mm"):
        config_from_mapping({"anatomy": {"chest_wall_mm": [0.0, 10.0]}})
    with pytest.raises(SynthConfigError, match="top_margin_mm"):
        config_from_mapping({"geometry": {"top_margin_mm": [50.0, 10.0]}})


def test_muscle_range_sets_the_muscle_layer_only() -> None:
    base = sample()
    thick = sample(muscle_mm=(20.0, 20.0))
    assert thick.muscle == pytest.approx(20.0 * thick.size)
    assert base.muscle < thick.muscle
    # the same draw, another range: the same patient otherwise (the vessel trees, grown in
    # the cavity that the muscle narrows, differ)
    for name in ("size", "fat", "body_a", "body_b", "apex_z", "dia_r", "dia_l", "hu"):
        assert getattr(base, name) == getattr(thick, name), name
    assert thick.cav_a0 == pytest.approx(base.cav_a0 - (thick.muscle - base.muscle))
    with pytest.raises(SynthConfigError, match="muscle_mm"):
        config_from_mapping({"anatomy": {"muscle_mm": [1.0, 10.0]}})
    lean = load_config(ROOT / "configs" / "synth" / "small_fleischner_body_lean.yaml")
    assert lean.anatomy.muscle_mm[0] > AnatomyConfig().muscle_mm[0]
    assert lean.anatomy.fat_mm[1] < AnatomyConfig().fat_mm[1]


def test_soft_texture_is_drawn_last_and_textures_the_body_only(
        small_cfg: SynthConfig, vocab: Vocabulary) -> None:
    base = sample()
    textured = sample(soft_texture_hu=(20.0, 20.0))
    assert base.soft_texture is None and "soft_texture" not in base.to_json()
    assert textured.soft_texture is not None and textured.soft_texture.hu == 20.0
    assert_same_except(base, textured, "soft_texture")
    cfg = with_anatomy(small_cfg, soft_texture_hu=(25.0, 25.0))
    i = normal_case_index(small_cfg, vocab)
    plain = make_case(small_cfg, vocab, SEED, i, "test")
    tex = make_case(cfg, vocab, SEED, i, "test")
    hu0, lab0 = render_tensor(plain, small_cfg.fast_path, noise=False)
    hu1, lab1 = render_tensor(tex, cfg.fast_path, noise=False)
    np.testing.assert_array_equal(lab0, lab1)
    an = plain.anatomy
    u, v, za = grid_coords(plain, small_cfg)
    # the lungs keep their values beyond the blur of the slab and point-spread function
    lung = an.sd_lung(u, v, za) < -15.0
    assert float(np.abs(hu1 - hu0)[lung].max()) < 1.0
    muscle = (hu0 > 20.0) & (hu0 < 80.0) & (an.sd_lung(u, v, za) > 8.0)
    assert muscle.sum() > 500
    assert float(np.std((hu1 - hu0)[muscle])) > 8.0
    with pytest.raises(SynthConfigError, match="soft_texture_hu"):
        config_from_mapping({"anatomy": {"soft_texture_hu": [0.0, 200.0]}})
