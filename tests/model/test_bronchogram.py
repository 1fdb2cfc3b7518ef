"""Air bronchograms (multimodal.bronchogram) and the mass calls measure_findings takes back
for them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from multimodal.bronchogram import air_bronchograms, withdraw_masses
from multimodal.config import MeasureConfig
from multimodal.errors import ModelConfigError, ShapeError
from multimodal.measure import measure_findings
from multimodal.outputs import FindingPrediction
from tests.model.test_measure import LEFT_LUNG, SPACING, _mm, add_ellipsoid, box_around, chest

CFG = MeasureConfig()
RADII = (25.0, 22.0, 24.0)


def _noisy(hu: np.ndarray, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, 15.0, hu.shape).astype(np.float32)
    return (hu + noise).astype(np.float32)


def consolidation(bronchi: bool = True) -> np.ndarray:
    """A dense opacity (30 HU) in the left lung with, when ``bronchi``, two aerated bronchi
    (-900 HU, 1.4 mm radius: one voxel of the model grid wide) running through it left
    to right, 10 mm apart."""
    hu = add_ellipsoid(chest(), LEFT_LUNG, RADII, 30.0)
    if bronchi:
        z, y, x = _mm()
        for dy in (-5.0, 5.0):
            tube = ((z - LEFT_LUNG[0]) ** 2 + (y - LEFT_LUNG[1] - dy) ** 2 < 1.4 ** 2) \
                & (np.abs(x - LEFT_LUNG[2]) < 18.0)
            hu = np.where(tube, np.float32(-900.0), hu).astype(np.float32)
    return _noisy(hu)


def _count(hu: np.ndarray, box: tuple[int, ...]) -> int:
    return air_bronchograms(hu, SPACING, box, radius_mm=CFG.bronchogram_radius_mm,
                            share=CFG.bronchogram_share, hu_range=CFG.bronchogram_hu)


def _pred(label: str, present: bool = True, box: tuple[int, ...] | None = None
          ) -> FindingPrediction:
    return FindingPrediction(label=label, present=present, probability=0.6 if present else 0.1,
                             laterality="left" if present else None,
                             location="LUL" if present else None,
                             size_mm=40.0 if present else None, slices=None,
                             box_voxels=box, emr_token_spans=())  # type: ignore[arg-type]


def test_bronchi_inside_an_opacity_count_and_a_solid_mass_or_the_chest_wall_does_not() -> None:
    box = box_around(LEFT_LUNG)
    assert _count(consolidation(), box) >= 10
    # the same opacity solid (a mass): the lung around it sees half its square dense at most
    assert _count(consolidation(bronchi=False), box) == 0
    # the lung against the chest wall and mediastinum, no lesion
    assert _count(_noisy(chest()), box_around((160.0, 176.0, 300.0))) == 0
    # only the box counts: a box away from the opacity sees none of its bronchi
    far = box_around((160.0, 176.0, 100.0), 20.0)
    assert _count(consolidation(), far) == 0
    with pytest.raises(ShapeError, match="6-value box"):
        _count(consolidation(), box[:4])


def test_a_mass_call_in_a_called_consolidation_is_taken_back() -> None:
    hu = consolidation()
    box = box_around(LEFT_LUNG)
    preds = [_pred("lung_mass", box=box), _pred("consolidation", box=box),
             _pred("pleural_effusion", present=False)]
    before = list(preds)
    out = measure_findings(preds, hu, SPACING, CFG)
    assert preds == before  # the input is not modified
    mass = out[0]
    assert not mass.present and mass.present_source == "image"
    assert mass.size_source == "head"  # not measured: no longer a finding
    assert out[1:] == preds[1:]
    # no consolidation called: the mass call stands (and is measured)
    alone = measure_findings([preds[0], _pred("consolidation", present=False)], hu, SPACING,
                             CFG)
    assert alone[0].present and alone[0].present_source == "head"
    # a solid opacity: the call stands
    solid = measure_findings(preds, consolidation(bronchi=False), SPACING, CFG)
    assert solid[0].present and solid[0].present_source == "head"
    # switched off, or no CT
    off = dataclasses.replace(CFG, bronchogram_labels=())
    assert measure_findings(preds, hu, SPACING, off)[0].present
    assert measure_findings(preds, None, SPACING, CFG)[0].present
    # below the configured count
    few = withdraw_masses(preds, hu, SPACING, ("lung_mass",), "consolidation", 10_000,
                          radius_mm=CFG.bronchogram_radius_mm, share=CFG.bronchogram_share,
                          hu_range=CFG.bronchogram_hu)
    assert few == preds


@pytest.mark.parametrize("bad", [
    {"bronchogram_labels": ("",)}, {"bronchogram_within": ""},
    {"bronchogram_within": "lung_mass"}, {"bronchogram_min_voxels": 0},
    {"bronchogram_share": 0.0}, {"bronchogram_share": 1.5},
    {"bronchogram_radius_mm": 0.0}, {"bronchogram_hu": (-300.0, -600.0)},
    {"bronchogram_hu": (-600.0,)}])
def test_bronchogram_config_is_validated(bad: dict[str, object]) -> None:
    with pytest.raises(ModelConfigError, match="bronchogram"):
        MeasureConfig(**bad)  # type: ignore[arg-type]
