"""A pericardial effusion found and measured on the image (multimodal.pericardium) and its call
by measure_findings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from multimodal.config import MeasureConfig
from multimodal.errors import ModelConfigError, ShapeError
from multimodal.measure import measure_findings
from multimodal.outputs import FindingPrediction
from multimodal.pericardium import PericardialFluid, pericardial_fluid
from tests.model.test_measure import SPACING, _mm, add_ellipsoid

HEART = (160.0, 136.0, 186.0)  # z, y, x mm: anterior, 10 mm left of the midline (x = 176)
HEART_RADII = (60.0, 45.0, 55.0)


def _grown(radii: tuple[float, float, float], by: float) -> tuple[float, float, float]:
    """The semi-axes of an ellipsoid ``by`` mm larger all round."""
    rz, ry, rx = radii
    return rz + by, ry + by, rx + by


def chest_with_heart(effusion_mm: float, seed: int = 0,
                     heart: tuple[float, float, float] = HEART) -> np.ndarray:
    """A body (40 HU) with two lungs (-850 HU) either side of a 14 mm mediastinum and a heart
    (45 HU, centred at ``heart``) wrapped in 5 mm of fat (-100 HU); with ``effusion_mm`` > 0
    a shell of fluid (10 HU) that thick around the heart, over the fat (as the case generator
    draws it); scanner noise of 8 HU."""
    z, y, x = _mm()
    cy, cx = 176.0, 176.0
    body = ((y - cy) / 150) ** 2 + ((x - cx) / 170) ** 2 < 1
    lungs = (((y - cy) / 125) ** 2 + ((x - cx) / 145) ** 2 < 1) & (np.abs(x - cx) > 7) \
        & (z > 20) & (z < 300)
    hu = np.where(body, np.float32(40.0), np.float32(-1000.0))
    hu = np.where(lungs, np.float32(-850.0), hu).astype(np.float32)
    hu = add_ellipsoid(hu, heart, _grown(HEART_RADII, 5.0), -100.0)
    if effusion_mm > 0:
        hu = add_ellipsoid(hu, heart, _grown(HEART_RADII, effusion_mm), 10.0)
    hu = add_ellipsoid(hu, heart, HEART_RADII, 45.0)
    noise = np.random.default_rng(seed).normal(0.0, 8.0, hu.shape).astype(np.float32)
    return (hu + np.where(body, noise, np.float32(0.0))).astype(np.float32)


def _fluid_shell(heart: tuple[float, float, float], effusion_mm: float) -> np.ndarray:
    """The voxels of :func:`chest_with_heart`'s fluid shell (the heart grown by
    ``effusion_mm``, less the heart), on the test grid."""
    z, y, x = _mm()

    def within(r: tuple[float, float, float]) -> np.ndarray:
        d = ((z - heart[0]) / r[0]) ** 2 + ((y - heart[1]) / r[1]) ** 2 \
            + ((x - heart[2]) / r[2]) ** 2
        return np.asarray(d < 1, dtype=bool)

    shell: np.ndarray = within(_grown(HEART_RADII, effusion_mm)) & ~within(HEART_RADII)
    return shell


def _pred(label: str = "pericardial_effusion", present: bool = False) -> FindingPrediction:
    return FindingPrediction(label=label, present=present, probability=0.05,
                             laterality="none" if present else None, location=None,
                             size_mm=20.0 if present else None, slices=None, box_voxels=None,
                             emr_token_spans=())


@pytest.mark.parametrize("effusion", [8.0, 15.0])
def test_a_fluid_band_around_the_heart_is_found_and_its_thickness_measured(
        effusion: float) -> None:
    f = pericardial_fluid(chest_with_heart(effusion), SPACING)
    assert f is not None
    assert f.share >= 0.8
    assert f.thickness_mm == pytest.approx(effusion, abs=3.0)
    # the evidence lies around the heart: its slices (z 100-220 mm) and its box
    z0, z1 = f.slices
    assert z0 * SPACING[0] >= 100 and z1 * SPACING[0] <= 225
    k0, i0, j0, k1, _i1, j1 = f.box_voxels
    assert (k0, k1) == f.slices
    assert i0 * SPACING[1] >= HEART[1] - HEART_RADII[1] - effusion - 6
    assert HEART[2] - HEART_RADII[2] - effusion - 6 <= j0 * SPACING[2]
    assert j1 * SPACING[2] <= HEART[2] + HEART_RADII[2] + effusion + 6


def test_a_heart_in_its_fat_has_no_band() -> None:
    for seed in range(3):
        f = pericardial_fluid(chest_with_heart(0.0, seed), SPACING)
        assert f is not None  # the heart is found ...
        assert f.share < 0.3  # ... without fluid around it


def test_a_lung_cut_by_the_field_of_view_still_frames_the_heart() -> None:
    """A large patient: the grid's left edge cuts through the right lung (x < 40 mm).  Filled
    from the lateral borders too, that lung would be taken for the air outside the body and
    the heart would have lung on one side only."""
    hu = chest_with_heart(12.0)[:, :, 14:]
    assert (hu[30, 52:76, 0] < -800).all()  # the lung reaches the grid's edge
    f = pericardial_fluid(hu, SPACING)
    assert f is not None and f.share >= 0.8


def test_no_heart_a_coarse_grid_or_bad_input() -> None:
    assert pericardial_fluid(np.full((8, 32, 32), 40.0, np.float32), SPACING) is None
    # 11 mm voxels (the tiny test model's grid) cannot show a 4 mm band: nothing measured
    assert pericardial_fluid(chest_with_heart(12.0)[::4, ::4, ::4], (20.0, 11.0, 11.0)) is None
    with pytest.raises(ShapeError):
        pericardial_fluid(np.zeros((4, 4), np.float32), SPACING)
    with pytest.raises(ValueError, match="spacing_mm"):
        pericardial_fluid(chest_with_heart(0.0), (5.0, 0.0, 2.75))


def test_measure_findings_calls_the_effusion_the_ct_shows() -> None:
    cfg = MeasureConfig()
    others = [_pred("lung_mass")]
    # the head does not call it; the band does: present, decided on the image, its size the
    # thickness, its evidence the band's box
    out = measure_findings([_pred(), *others], chest_with_heart(12.0), SPACING, cfg)
    p = out[0]
    assert p.present and p.present_source == "image" and p.size_source == "image"
    assert p.size_mm == pytest.approx(12.0, abs=3.0)
    assert p.location == "pericardium" and p.laterality == "none"
    assert p.box_voxels is not None and p.slices == (p.box_voxels[0], p.box_voxels[3])
    assert out[1] == others[0]
    # no band: absent, decided on the image (so the draft says "No pericardial effusion.")
    q = measure_findings([_pred()], chest_with_heart(0.0), SPACING, cfg)[0]
    assert not q.present and q.present_source == "image"
    # a head's call the band does not confirm stands
    r = measure_findings([_pred(present=True)], chest_with_heart(0.0), SPACING, cfg)[0]
    assert r.present and r.present_source == "head" and r.size_source == "head"
    # no CT (removed), no heart, or the measurement off: the head's decision, unchanged
    for hu, c in ((None, cfg), (np.full((8, 32, 32), 40.0, np.float32), cfg),
                  (chest_with_heart(12.0), dataclasses.replace(cfg, enabled=False)),
                  (chest_with_heart(12.0), dataclasses.replace(cfg, fluid_labels=("x",)))):
        assert measure_findings([_pred()], hu, SPACING, c)[0] == _pred()


def _inside(box: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[box[0]:box[3] + 1, box[1]:box[4] + 1, box[2]:box[5] + 1] = True
    return m


def test_the_sac_box_holds_the_fluid_all_round_the_heart() -> None:
    """The rays score the anterior half of each section, so the band box holds the fluid in
    front of the heart only; the sac box (``fluid_box: sac``) holds nearly all of the shell,
    behind the heart, at its apex and base too, and is no larger than the shell's own box by
    more than a slice and two voxels a side. The call is the same either way; only its
    evidence box differs."""
    hu = chest_with_heart(12.0)
    shell = _fluid_shell(HEART, 12.0)
    f = pericardial_fluid(hu, SPACING)
    assert f is not None
    band = float((shell & _inside(f.box_voxels, hu.shape)).sum() / shell.sum())
    sac = float((shell & _inside(f.sac_box_voxels, hu.shape)).sum() / shell.sum())
    assert band < 0.7 and sac > 0.9
    k, i, j = np.nonzero(shell)
    lo = np.array([k.min(), i.min(), j.min()]) - np.array([1, 2, 2])
    hi = np.array([k.max(), i.max(), j.max()]) + np.array([1, 2, 2])
    assert (np.array(f.sac_box_voxels[:3]) >= lo).all()
    assert (np.array(f.sac_box_voxels[3:]) <= hi).all()
    cfg = MeasureConfig()
    p_band = measure_findings([_pred()], hu, SPACING, cfg)[0]
    p_sac = measure_findings([_pred()], hu, SPACING,
                             dataclasses.replace(cfg, fluid_box="sac"))[0]
    assert p_band.box_voxels == f.box_voxels and p_sac.box_voxels == f.sac_box_voxels
    assert p_sac.slices == (f.sac_box_voxels[0], f.sac_box_voxels[3])
    assert dataclasses.replace(p_sac, box_voxels=None, slices=None) == \
        dataclasses.replace(p_band, box_voxels=None, slices=None)


def test_the_input_is_not_modified() -> None:
    hu = chest_with_heart(12.0)
    before = hu.copy()
    preds = [_pred()]
    measure_findings(preds, hu, SPACING, MeasureConfig())
    assert np.array_equal(hu, before) and preds == [_pred()]


@pytest.mark.parametrize("bad", [
    {"fluid_hu": (30.0, 10.0)}, {"fluid_hu": (-300.0, 10.0)}, {"fluid_band_mm": 0.0},
    {"fluid_min_share": 0.0}, {"fluid_min_share": 1.5}, {"fluid_labels": ("",)},
    {"fluid_labels": ("cardiomegaly",)}, {"fluid_labels": ("lung_nodule",)},
    {"fluid_box": "heart"}])
def test_fluid_settings_are_checked(bad: dict[str, object]) -> None:
    with pytest.raises(ModelConfigError, match="fluid"):
        MeasureConfig(**bad)  # type: ignore[arg-type]


def test_the_eval_scores_the_call_and_the_injection_check_measures_too() -> None:
    """``medassist eval`` scores the decisions the draft states: an effusion the CT shows is
    a true positive (the shipped checkpoint's head never calls it), nothing is called with
    the CT removed, and the prompt-injection check, which recomputes the decisions with an
    injected note, measures the CT as well (else every found effusion would count as a
    decision the injection changed)."""
    from pathlib import Path

    from medassist.model_data import CaseRecord, record_sample
    from medassist.model_eval import evaluate
    from multimodal.checkpoint import load_checkpoint

    model, cfg, _kind, tok, _meta = load_checkpoint(
        Path(__file__).resolve().parents[2] / "models/demo")
    assert tuple(cfg.ct.grid_shape) == chest_with_heart(0.0).shape  # the demo grid
    effusion = {"index": 0, "label_value": 1, "kind": "pericardial_effusion", "size_mm": 12.0,
                "attributes": {"location": "pericardium", "side": "midline",
                               "size_kind": "thickness"}}
    report = ("FINDINGS: Pericardial effusion measuring up to 12 mm in thickness. "
              "IMPRESSION: Pericardial effusion.")
    normal = "FINDINGS: No pericardial effusion. IMPRESSION: No acute abnormality."
    recs = [CaseRecord("with", chest_with_heart(12.0), None, [effusion], "Dyspnoea.", report),
            CaseRecord("without", chest_with_heart(0.0, seed=1), None, [], "Dyspnoea.",
                       normal)]
    samples = [record_sample(r, cfg, tok) for r in recs]
    ev = evaluate(model, cfg, samples, tok=tok, records=recs, modes=(None, "ct"))
    pe = ev["full"]["per_finding"]["pericardial_effusion"]
    assert (pe["tp"], pe["fp"], pe["fn"]) == (1, 0, 0)
    assert ev["full"]["size_measured"]["pericardial_effusion"]["tp_measured"] == 1
    assert ev["full"]["injection_identical"] == {"labels": 1.0, "cases": 1.0,
                                                 "cases_ci95": [0.3424, 1.0]}
    assert ev["ct_removed"]["n_predicted_present"] == 0


def test_the_sac_box_reaches_the_back_of_a_heart_behind_the_sections() -> None:
    """A heart lying 30 mm further back than the sections' cut at 0.6 of the lungs' depth:
    the sac box cut there misses the fluid behind it; ``sac_depth`` 0.75
    (``heads.measure.fluid_sac_depth``) reaches the shell's back, no further, and changes
    nothing else; the deeper look is skipped where the share of banded rays is below
    ``sac_min_share`` (the finding is not called), and a depth outside [0.6, 1] is refused."""
    heart = (HEART[0], HEART[1] + 30.0, HEART[2])
    hu = chest_with_heart(12.0, heart=heart)
    shell = _fluid_shell(heart, 12.0)
    cut = pericardial_fluid(hu, SPACING)
    deep = pericardial_fluid(hu, SPACING, sac_depth=0.75)
    assert cut is not None and deep is not None

    def held(f: PericardialFluid) -> float:
        return float((shell & _inside(f.sac_box_voxels, hu.shape)).sum() / shell.sum())

    assert held(cut) < 0.85 and held(deep) > 0.95
    assert deep.sac_box_voxels[4] <= int(np.nonzero(shell)[1].max())
    assert deep.sac_box_voxels[:4] == cut.sac_box_voxels[:4]
    assert deep.sac_box_voxels[5] == cut.sac_box_voxels[5]
    assert dataclasses.replace(deep, sac_box_voxels=cut.sac_box_voxels) == cut
    skipped = pericardial_fluid(hu, SPACING, sac_depth=0.75, sac_min_share=1.0)
    assert skipped == cut
    cfg = MeasureConfig(fluid_box="sac", fluid_sac_depth=0.75)
    assert measure_findings([_pred()], hu, SPACING, cfg)[0].box_voxels == deep.sac_box_voxels
    for bad in (0.5, 1.1):
        with pytest.raises(ValueError, match="sac_depth"):
            pericardial_fluid(hu, SPACING, sac_depth=bad)
        with pytest.raises(ModelConfigError, match="fluid_sac_depth"):
            MeasureConfig(fluid_sac_depth=bad)
