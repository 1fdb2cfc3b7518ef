"""A called nodule's or mass's size measured on the image (multimodal.measure)."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
import pytest

from multimodal.config import HeadsConfig, MeasureConfig, from_mapping
from multimodal.errors import ModelConfigError, ShapeError
from multimodal.measure import measure_findings, measure_lesion
from multimodal.outputs import FindingPrediction

SPACING = (5.0, 2.75, 2.75)
SHAPE = (64, 128, 128)
Arr = npt.NDArray[np.float32]


def _mm() -> tuple[Arr, Arr, Arr]:
    z, y, x = (np.arange(n, dtype=np.float32) * s for n, s in zip(SHAPE, SPACING, strict=True))
    return z[:, None, None], y[None, :, None], x[None, None, :]


def chest() -> Arr:
    """A body (40 HU) in air with two lungs (-850 HU) either side of a mediastinum."""
    z, y, x = _mm()
    cy, cx = 176.0, 176.0
    body = ((y - cy) / 150) ** 2 + ((x - cx) / 170) ** 2 < 1
    lungs = (((y - cy) / 125) ** 2 + ((x - cx) / 145) ** 2 < 1) & (np.abs(x - cx) > 30) \
        & (z > 20) & (z < 300)
    hu = np.where(body, np.float32(40.0), np.float32(-1000.0))
    return np.where(lungs, np.float32(-850.0), hu).astype(np.float32)


def add_ellipsoid(hu: Arr, centre: tuple[float, float, float],
                  radii: tuple[float, float, float], value: float = 40.0) -> Arr:
    """An axis-aligned ellipsoid (z, y, x mm) with a 2 mm soft edge (partial volume)."""
    z, y, x = _mm()
    q = np.sqrt(((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
                + ((x - centre[2]) / radii[2]) ** 2)
    occ = np.clip(0.5 - (q - 1) * float(np.mean(radii)) / 2.0, 0, 1)
    out: Arr = (hu * (1 - occ) + value * occ).astype(np.float32)
    return out


def add_spicules(hu: Arr, centre: tuple[float, float, float], radius: float,
                 n: int = 10, seed: int = 0) -> Arr:
    """Thin tissue strands leaving the lesion (spiculation), 1.5 mm thick, 12 mm long."""
    z, y, x = _mm()
    rng = np.random.default_rng(seed)
    out = hu.copy()
    for d in rng.normal(size=(n, 3)):
        d /= np.linalg.norm(d)
        a = np.asarray(centre) + d * radius * 0.9
        b = a + d * 12.0
        ab = b - a
        t = np.clip(((z - a[0]) * ab[0] + (y - a[1]) * ab[1] + (x - a[2]) * ab[2])
                    / float(ab @ ab), 0, 1)
        dist = np.sqrt((z - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2
                       + (x - a[2] - t * ab[2]) ** 2)
        out = np.where(dist < 1.5, np.float32(40.0), out)
    return out


def box_around(centre: tuple[float, float, float], half_mm: float = 45.0
               ) -> tuple[int, int, int, int, int, int]:
    lo = [max(0, int((c - half_mm) / s)) for c, s in zip(centre, SPACING, strict=True)]
    hi = [min(n - 1, int((c + half_mm) / s)) for c, n, s in zip(centre, SHAPE, SPACING,
                                                                 strict=True)]
    return (lo[0], lo[1], lo[2], hi[0], hi[1], hi[2])


LEFT_LUNG = (160.0, 176.0, 260.0)  # (z, y, x) mm, well inside the lung


@pytest.mark.parametrize("radii", [(20.0, 16.0, 15.0), (15.0, 16.0, 22.0), (9.0, 8.0, 8.0)])
def test_an_ellipsoid_in_the_lung_is_measured_to_its_longest_diameter(
        radii: tuple[float, float, float]) -> None:
    hu = add_ellipsoid(chest(), LEFT_LUNG, radii)
    m = measure_lesion(hu, SPACING, box_around(LEFT_LUNG), MeasureConfig())
    assert m is not None
    assert m.diameter_mm == pytest.approx(2 * max(radii), abs=1.5)
    assert m.axes_mm[0] == m.diameter_mm and m.axes_mm[0] >= m.axes_mm[1] >= m.axes_mm[2]
    assert sorted(m.axes_mm) == pytest.approx(sorted(2 * r for r in radii), abs=2.0)
    want = [c / s for c, s in zip(LEFT_LUNG, SPACING, strict=True)]
    assert m.centre_voxel == pytest.approx(want, abs=0.5)
    assert m.fit_fraction >= 0.85
    # what a reader measures: the axial section's long and short axis, the craniocaudal extent
    assert m.axial_mm == pytest.approx(sorted((2 * radii[1], 2 * radii[2]), reverse=True),
                                       abs=2.0)
    assert m.craniocaudal_mm == pytest.approx(2 * radii[0], abs=2.0)


def test_spicules_do_not_lengthen_the_measurement() -> None:
    radii = (18.0, 16.0, 15.0)
    hu = add_spicules(add_ellipsoid(chest(), LEFT_LUNG, radii), LEFT_LUNG, 16.0)
    m = measure_lesion(hu, SPACING, box_around(LEFT_LUNG), MeasureConfig())
    assert m is not None and m.diameter_mm == pytest.approx(36.0, abs=2.0)


def test_the_lesion_is_found_anywhere_in_a_large_evidence_box() -> None:
    """The box is the evidence of a coarse patch map: the lesion is one structure in it."""
    hu = add_ellipsoid(chest(), LEFT_LUNG, (15.0, 14.0, 13.0))
    m = measure_lesion(hu, SPACING, (16, 32, 64, 47, 95, 127), MeasureConfig())
    assert m is not None and m.diameter_mm == pytest.approx(30.0, abs=1.5)


def test_nothing_is_measured_where_there_is_no_lesion() -> None:
    hu = chest()
    cfg = MeasureConfig()
    assert measure_lesion(hu, SPACING, box_around(LEFT_LUNG), cfg) is None
    # the mediastinum and chest wall are tissue but not enclosed by lung
    assert measure_lesion(hu, SPACING, (16, 32, 48, 47, 95, 79), cfg) is None
    assert measure_lesion(hu, SPACING, (16, 0, 100, 47, 20, 127), cfg) is None


def test_a_lesion_broadly_against_the_chest_wall_keeps_the_head_size() -> None:
    """Half in the wall: the rays into the wall find no edge; the ellipsoid explains too few
    of them to be taken (rather than a wrong measurement)."""
    hu = chest()
    # the lung's lateral edge at y = 176 is x = 176 + 145 = 321 mm
    centre = (160.0, 176.0, 321.0)
    m = measure_lesion(add_ellipsoid(hu, centre, (20.0, 20.0, 20.0)), SPACING,
                       box_around(centre), MeasureConfig())
    assert m is None


def test_a_lesion_against_the_chest_wall_is_measured_from_its_lung_facing_surface() -> None:
    """Its centre 0.6 radii inside the lung: the rays into the wall find no edge (or the
    body's surface far beyond).  Up to ``max_wall_share`` of such rays the ellipsoid is judged on
    the others, and the size comes from the lesion's surface against the lung; with 0 every
    ray counts and the fit is refused."""
    centre = (160.0, 176.0, 321.0 - 12.0)
    hu = add_ellipsoid(chest(), centre, (20.0, 20.0, 20.0))
    m = measure_lesion(hu, SPACING, box_around(centre), MeasureConfig(max_wall_share=0.35))
    assert m is not None
    assert m.diameter_mm == pytest.approx(40.0, abs=2.0)
    assert 0.0 < m.wall_share <= 0.35 and m.fit_fraction >= 0.85
    assert measure_lesion(hu, SPACING, box_around(centre), MeasureConfig(max_wall_share=0.0)) \
        is None


def test_a_lesion_half_in_the_wall_is_refused_with_the_wall_option_too() -> None:
    centre = (160.0, 176.0, 321.0)
    hu = add_ellipsoid(chest(), centre, (20.0, 20.0, 20.0))
    assert measure_lesion(hu, SPACING, box_around(centre),
                          MeasureConfig(max_wall_share=0.35)) is None


def test_a_bronchus_through_the_centre_does_not_lose_the_measurement() -> None:
    """The fitted centre lies in the air of a bronchus crossing the lesion: rays from there
    would start in air, so the fit from the previous origin (in tissue) stands."""
    z, y, x = _mm()
    radii = (25.0, 22.0, 20.0)
    hu = add_ellipsoid(chest(), LEFT_LUNG, radii)
    tube = ((z - LEFT_LUNG[0]) ** 2 + (y - LEFT_LUNG[1]) ** 2 < 2.0 ** 2) \
        & (np.abs(x - LEFT_LUNG[2]) < 30.0)
    hu = np.where(tube, np.float32(-900.0), hu).astype(np.float32)
    m = measure_lesion(hu, SPACING, box_around(LEFT_LUNG), MeasureConfig())
    assert m is not None and m.diameter_mm == pytest.approx(50.0, abs=2.0)


def test_a_diameter_outside_the_labels_range_is_not_taken() -> None:
    hu = add_ellipsoid(chest(), LEFT_LUNG, (20.0, 16.0, 15.0))
    box = box_around(LEFT_LUNG)
    assert measure_lesion(hu, SPACING, box, MeasureConfig(), (3.0, 30.0)) is None
    assert measure_lesion(hu, SPACING, box, MeasureConfig(), (30.0, 120.0)) is not None


def _pred(label: str, present: bool = True,
          box: tuple[int, int, int, int, int, int] | None = box_around(LEFT_LUNG)
          ) -> FindingPrediction:
    return FindingPrediction(label=label, present=present, probability=0.9 if present else 0.1,
                             laterality="left" if present else None, location=None,
                             size_mm=55.0 if present else None,
                             slices=None if box is None else (box[0], box[3]),
                             box_voxels=box if present else None, emr_token_spans=())


def test_measure_findings_replaces_only_measurable_called_lesions() -> None:
    hu = add_ellipsoid(chest(), LEFT_LUNG, (20.0, 16.0, 15.0))
    preds = [_pred("lung_mass"), _pred("lung_nodule", present=False), _pred("consolidation"),
             _pred("lung_nodule")]
    before = list(preds)
    out = measure_findings(preds, hu, SPACING, MeasureConfig())
    assert preds == before  # the input is not modified
    mass, absent, other, nodule = out
    assert mass.size_source == "image" and mass.size_mm == pytest.approx(40.0, abs=1.5)
    assert mass.size_axes_mm == pytest.approx((32.0, 30.0, 40.0), abs=2.0)
    assert dataclasses.replace(mass, size_mm=55.0, size_source="head",
                               size_axes_mm=None) == preds[0]
    assert absent == preds[1] and other == preds[2]  # absent, or not a measured label
    assert nodule == preds[3]  # 40 mm is outside a nodule's range: the head's size stays
    assert measure_findings(preds, None, SPACING, MeasureConfig()) == preds
    off = MeasureConfig(enabled=False)
    assert measure_findings(preds, hu, SPACING, off) == preds


def test_bad_arguments_and_config_are_refused() -> None:
    with pytest.raises(ShapeError):
        measure_lesion(np.zeros((4, 4), np.float32), SPACING, (0, 0, 0, 1, 1, 1),
                       MeasureConfig())
    with pytest.raises(ShapeError):
        measure_lesion(chest(), SPACING, (0, 0, 0, 1, 1), MeasureConfig())
    for bad in ({"lesions": (("lung_mass", 30.0, 20.0),)},
                {"lesions": (("lung_mass", 3.0, 30.0), ("lung_mass", 30.0, 90.0))},
                {"air_hu": -100.0, "tissue_hu": -200.0}, {"enclosure": ()},
                {"enclosure": (1.2,)}, {"trim": 1.5}, {"min_depth_mm": 80.0},
                {"n_tries": 0}, {"max_wall_share": 1.0}, {"max_wall_share": -0.1}):
        with pytest.raises(ModelConfigError):
            MeasureConfig(**bad)
    heads = from_mapping(HeadsConfig, {"labels": ["lung_mass"], "measure": {
        "enabled": False, "lesions": [["lung_mass", 30, 90]]}}, "heads")
    assert heads.measure == MeasureConfig(enabled=False, lesions=(("lung_mass", 30.0, 90.0),))
    with pytest.raises(ModelConfigError, match="unknown keys"):
        from_mapping(HeadsConfig, {"labels": ["lung_mass"], "measure": {"size": 1}}, "heads")


def test_a_measured_lesion_is_shown_by_its_own_box() -> None:
    """With a tighter box to show (``focus_box``, heads.evidence_box "cells"), a measured
    lesion's evidence becomes the fitted ellipsoid's bounding box; the search still ran in
    the wide box. A fluid band found on the CT keeps its own box."""
    hu = add_ellipsoid(chest(), LEFT_LUNG, (20.0, 16.0, 15.0))
    wide = _pred("lung_mass")
    p = dataclasses.replace(wide, focus_box=(30, 60, 90, 31, 61, 91))
    (m,) = measure_findings([p], hu, SPACING, MeasureConfig())
    assert m.size_source == "image" and m.focus_box is None
    # z 140-180 mm, y 160-192, x 245-275 (voxels 28-36, 58.2-69.8, 89.1-100)
    assert m.box_voxels == pytest.approx((28, 58, 89, 36, 70, 100), abs=1)
    assert m.box_voxels is not None and m.slices == (m.box_voxels[0], m.box_voxels[3])
    (w,) = measure_findings([wide], hu, SPACING, MeasureConfig())
    assert w.box_voxels == wide.box_voxels  # nothing to show instead: the wide box stays
    fluid = dataclasses.replace(p, label="pericardial_effusion", present_source="image")
    assert measure_findings([fluid], None, SPACING, MeasureConfig())[0] == fluid


def test_each_start_is_fitted_once_and_none_too_shallow_for_the_range(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The work ``measure_lesion`` saves, with the same result: a candidate tried at both
    enclosure levels is fitted once, and one too shallow for the range's smallest diameter
    (a fit from depth d is taken only up to 3 d + 10 mm) is not fitted at all."""
    import multimodal.measure as measure

    starts: list[tuple[float, ...]] = []
    real = measure._edge_fit

    def counting(vol: object, c_mm: npt.NDArray[np.float64], *args: object) -> object:
        starts.append(tuple(float(v) for v in c_mm))
        return real(vol, c_mm, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(measure, "_edge_fit", counting)
    # half in the chest wall: refused, after tries at both enclosure levels
    centre = (160.0, 176.0, 321.0)
    hu = add_ellipsoid(chest(), centre, (20.0, 20.0, 20.0))
    assert measure_lesion(hu, SPACING, box_around(centre), MeasureConfig()) is None
    assert len(starts) >= 2 and len(set(starts)) == len(starts)
    # a 20 mm nodule: no candidate is deeper than 6 mm, so no mass (30 mm or more) can be
    # measured from it; it is measured as a nodule
    starts.clear()
    hu = add_ellipsoid(chest(), LEFT_LUNG, (10.0, 10.0, 10.0))
    assert measure_lesion(hu, SPACING, box_around(LEFT_LUNG), MeasureConfig(),
                          (30.0, 120.0)) is None
    assert starts == []
    m = measure_lesion(hu, SPACING, box_around(LEFT_LUNG), MeasureConfig(), (3.0, 30.0))
    assert m is not None and m.diameter_mm == pytest.approx(20.0, abs=1.0) and starts


@pytest.mark.parametrize("min_depth", [6.0, 20.0 / 3.0, 9.0])
def test_shallow_candidates_are_left_out_before_their_whole_rays(min_depth: float) -> None:
    """``_candidates`` with a depth floor: exactly the candidates (with the same enclosure
    and depth) that reach it without the floor."""
    from multimodal.measure import _candidates

    hu = add_ellipsoid(chest(), LEFT_LUNG, (20.0, 16.0, 15.0))
    sp = np.asarray(SPACING, np.float64)
    c0, e0, d0 = _candidates(hu, box_around(LEFT_LUNG), sp, MeasureConfig(), 0.0)
    c1, e1, d1 = _candidates(hu, box_around(LEFT_LUNG), sp, MeasureConfig(), min_depth)
    deep = d0 >= min_depth
    assert 0 < len(c1) < len(c0)
    np.testing.assert_array_equal(c1, c0[deep])
    np.testing.assert_array_equal(e1, e0[deep])
    np.testing.assert_array_equal(d1, d0[deep])
