"""Islands of tissue the lung surrounds, and a mass the head missed found on the CT
(multimodal.islands, multimodal.measure.find_lesion)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from multimodal.config import MeasureConfig
from multimodal.errors import ModelConfigError, ShapeError
from multimodal.islands import inner_air_share, lung_islands
from multimodal.measure import find_lesion, measure_findings
from multimodal.outputs import FindingPrediction
from tests.model.test_bronchogram import RADII, consolidation
from tests.model.test_measure import LEFT_LUNG, SPACING, _pred, add_ellipsoid, chest

RIGHT_LUNG = (160.0, 176.0, 92.0)  # (z, y, x) mm: +x is the patient's left
ISLANDS = MeasureConfig(island_labels=("lung_mass",))
LOBES = ("none", "RUL", "LLL", "LUL", "RLL", "other")


def _voxels(mm: tuple[float, float, float]) -> tuple[float, ...]:
    return tuple(c / s for c, s in zip(mm, SPACING, strict=True))


def _inside(box: tuple[int, int, int, int, int, int], mm: tuple[float, float, float]) -> bool:
    v = _voxels(mm)
    return all(box[i] <= v[i] <= box[i + 3] for i in range(3))


def _absent(label: str = "lung_mass") -> FindingPrediction:
    p: FindingPrediction = dataclasses.replace(_pred(label, present=False),
                                               location_order=LOBES)
    return p


def test_a_lesion_the_lung_surrounds_is_an_island_and_the_chest_has_none() -> None:
    assert lung_islands(chest(), SPACING, air_hu=-500.0) == []
    hu = add_ellipsoid(chest(), LEFT_LUNG, (20.0, 16.0, 15.0))
    (island,) = lung_islands(hu, SPACING, air_hu=-500.0)
    assert _inside(island.box_voxels, LEFT_LUNG)
    # the 40 x 32 x 30 mm ellipsoid (20 mL) with its partial-volume rim
    assert 15.0 < island.volume_ml < 40.0
    # too small to measure (a vessel cut across): left out
    small = add_ellipsoid(chest(), LEFT_LUNG, (5.0, 4.0, 4.0))
    assert lung_islands(small, SPACING, air_hu=-500.0) == []


def test_a_lesion_joined_to_the_chest_wall_is_no_island() -> None:
    # the lung's lateral edge is at x = 176 + 145 = 321 mm: the lesion reaches into the wall
    hu = add_ellipsoid(chest(), (160.0, 176.0, 310.0), (20.0, 16.0, 15.0))
    assert lung_islands(hu, SPACING, air_hu=-500.0) == []


def test_air_inside_a_lesion_is_measured() -> None:
    # consolidation(): a dense opacity (noise SD 15 HU), with or without two aerated bronchi
    solid, aerated = consolidation(bronchi=False), consolidation()
    centre, half = _voxels(LEFT_LUNG), RADII
    assert inner_air_share(solid, centre, half, SPACING, air_hu=-500.0) == 0.0
    assert 0.01 < inner_air_share(aerated, centre, half, SPACING, air_hu=-500.0) < 0.2
    with pytest.raises(ValueError):
        inner_air_share(solid, centre, (20.0, 0.0, 15.0), SPACING, air_hu=-500.0)
    with pytest.raises(ShapeError):
        lung_islands(solid[0], SPACING, air_hu=-500.0)
    with pytest.raises(ValueError):
        lung_islands(solid, SPACING, air_hu=-500.0, lung_share=0.0)


def test_a_mass_the_head_missed_is_found_on_the_ct() -> None:
    hu = add_ellipsoid(chest(), LEFT_LUNG, (20.0, 16.0, 15.0))
    missed = _absent()
    before = dataclasses.replace(missed)
    (m,) = measure_findings([missed], hu, SPACING, ISLANDS)
    assert missed == before  # the input is not modified
    assert m.present and m.present_source == "image" and m.size_source == "image"
    assert m.size_mm == pytest.approx(40.0, abs=1.5)
    # its side from the lesion's centre, its lobe the location head's first on that side
    assert m.laterality == "left" and m.location == "LLL"
    assert m.box_voxels == pytest.approx((28, 58, 89, 36, 70, 100), abs=1)
    assert m.box_voxels is not None and m.slices == (m.box_voxels[0], m.box_voxels[3])
    right = add_ellipsoid(chest(), RIGHT_LUNG, (20.0, 16.0, 15.0))
    (r,) = measure_findings([missed], right, SPACING, ISLANDS)
    assert r.present and r.laterality == "right" and r.location == "RUL"


def test_where_no_mass_is_found_the_head_decides() -> None:
    mass = add_ellipsoid(chest(), LEFT_LUNG, (20.0, 16.0, 15.0))
    missed = _absent()
    # the rule is off by default, and never runs without a CT
    assert measure_findings([missed], mass, SPACING, MeasureConfig()) == [missed]
    assert measure_findings([missed], None, SPACING, ISLANDS) == [missed]
    # nothing in the lungs; a lesion of a nodule's size is no mass
    assert measure_findings([missed], chest(), SPACING, ISLANDS) == [missed]
    nodule = add_ellipsoid(chest(), LEFT_LUNG, (9.0, 8.0, 8.0))
    assert measure_findings([missed], nodule, SPACING, ISLANDS) == [missed]
    # air bronchograms inside: a consolidation, not a mass
    aerated = consolidation()
    assert find_lesion(consolidation(bronchi=False), SPACING, ISLANDS, (30.0, 120.0)) \
        is not None
    assert find_lesion(aerated, SPACING, ISLANDS, (30.0, 120.0)) is None
    assert measure_findings([missed], aerated, SPACING, ISLANDS) == [missed]
    # a call taken back on the CT (air bronchograms in a consolidation) is not made again
    taken_back = dataclasses.replace(missed, present_source="image")
    assert measure_findings([taken_back], mass, SPACING, ISLANDS) == [taken_back]
    # a label not named is left to the head
    other = _absent("lung_nodule")
    assert measure_findings([other], mass, SPACING, ISLANDS) == [other]


def test_island_settings_are_validated() -> None:
    for bad in ({"island_labels": ("consolidation",)}, {"island_min_ml": 0.0},
                {"island_lung_share": 1.5}, {"island_max_air_share": 1.0},
                {"island_max_tries": 0}):
        with pytest.raises(ModelConfigError):
            MeasureConfig(**bad)


def test_the_eval_counts_the_calls_found_on_the_ct() -> None:
    """``medassist eval``'s ``size_measured``: per label, the calls and true positives the CT
    measurement made where the head did not, beside those whose size it measured."""
    from medassist.model_eval import size_measured_counts

    head = dataclasses.replace(_pred("lung_mass"), size_source="image")
    found = dataclasses.replace(head, present_source="image")
    absent = _absent()
    preds = [[head], [found], [found], [absent]]
    truth = np.array([[True], [True], [False], [True]])
    assert size_measured_counts(["lung_mass"], preds, truth, ["lung_mass"]) == {
        "lung_mass": {"called": 3, "measured": 3, "tp": 2, "tp_measured": 2,
                      "found_on_ct": 2, "tp_found_on_ct": 1}}
