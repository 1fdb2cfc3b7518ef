"""The cardiothoracic ratio measured on the image (multimodal.cardiac) and its use by
measure_findings."""

from __future__ import annotations

import numpy as np
import pytest

from multimodal.cardiac import cardiothoracic_ratio, components, lung_mask
from multimodal.config import MeasureConfig
from multimodal.errors import ModelConfigError, ShapeError
from multimodal.measure import measure_findings, measured_ratios, measured_sizes
from multimodal.outputs import FindingPrediction
from tests.model.test_measure import SPACING, _mm, chest

LUNG_HALF_WIDTH_MM = 145.0  # chest(): the lungs' outer extent is 2 x 145 mm


def with_heart(half_width_mm: float) -> np.ndarray:
    """chest() with a heart (60 HU) in the anterior mediastinum, wrapped in 4 mm of
    pericardial fat (-90 HU) that pushes the lungs aside."""
    hu = chest()
    z, y, x = _mm()
    q = np.sqrt(((z - 160.0) / 60.0) ** 2 + ((y - 136.0) / 50.0) ** 2
                + ((x - 176.0) / half_width_mm) ** 2)
    fat = np.sqrt(((z - 160.0) / 64.0) ** 2 + ((y - 136.0) / 54.0) ** 2
                  + ((x - 176.0) / (half_width_mm + 4.0)) ** 2) < 1
    hu = np.where(fat, np.float32(-90.0), hu)
    return np.where(q < 1, np.float32(60.0), hu).astype(np.float32)


def _bfs_pieces(mask: np.ndarray) -> list[set[tuple[int, int, int]]]:
    """Each slice's 4-connected pieces of ``mask``, by a plain breadth-first search."""
    seen = np.zeros_like(mask)
    pieces = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        piece, todo = set(), [tuple(int(v) for v in start)]
        while todo:
            k, i, j = todo.pop()
            piece.add((k, i, j))
            for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
                if 0 <= a < mask.shape[1] and 0 <= b < mask.shape[2] and mask[k, a, b] \
                        and not seen[k, a, b]:
                    seen[k, a, b] = True
                    todo.append((k, a, b))
        pieces.append(piece)
    return pieces


@pytest.mark.parametrize("density", [0.3, 0.55, 0.7])
def test_components_are_each_slices_4_connected_pieces(density: float) -> None:
    """components() labels exactly the breadth-first search's pieces: one number per piece,
    none shared between pieces or slices (random masks about the percolation threshold,
    where pieces wind and touch diagonally)."""
    rng = np.random.default_rng(int(density * 100))
    mask = rng.random((4, 23, 31)) < density
    lab = components(mask)
    assert np.array_equal(lab > 0, mask)
    pieces = _bfs_pieces(mask)
    numbers = [{int(lab[v]) for v in piece} for piece in pieces]
    assert all(len(n) == 1 for n in numbers)
    assert len({n.pop() for n in numbers}) == len(pieces)
    assert not components(np.zeros((2, 5, 5), dtype=bool)).any()
    with pytest.raises(ShapeError):
        components(mask[0])


def test_the_tables_hollow_core_is_not_lung_and_a_cut_body_keeps_its_lungs() -> None:
    """A CT table under the patient (a 200 HU shell round a hollow core, 6 mm of air below the
    back) encloses air as the chest does; it is the table's, not the body's.  A body wider
    than the field of view comes in two halves, and both still enclose the lungs."""
    hu = chest()
    _z, y, x = _mm()
    shell = (y > 332) & (y < 346) & (np.abs(x - 176.0) < 116)
    core = (y > 336) & (y < 342) & (np.abs(x - 176.0) < 110)
    hu = np.where(shell & ~core, np.float32(200.0), hu).astype(np.float32)
    lungs = hu == np.float32(-850.0)
    for lateral in (True, False):
        lung = lung_mask(hu, -400.0, lateral=lateral)
        assert not (lung & np.broadcast_to(core, hu.shape)).any()
        assert np.array_equal(lung, lungs)
    cut = hu[:, :, 12:-12]  # the body's sides (and the lungs' outer edges) out of the field
    lung = lung_mask(cut, -400.0, lateral=False)
    assert np.array_equal(lung, lungs[:, :, 12:-12])


@pytest.mark.parametrize("half_width", [65.0, 90.0])
def test_ratio_is_the_heart_over_the_thorax(half_width: float) -> None:
    m = cardiothoracic_ratio(with_heart(half_width), SPACING)
    assert m is not None
    expected = half_width / LUNG_HALF_WIDTH_MM
    assert m.ratio == pytest.approx(expected, abs=0.03)
    assert m.heart_width_mm == pytest.approx(2 * half_width, abs=6.0)
    assert m.thoracic_width_mm == pytest.approx(2 * LUNG_HALF_WIDTH_MM, abs=6.0)
    assert 20 <= m.heart_slice <= 44  # the heart's centre is at z = 160 mm (slice 32)


def test_outside_air_is_not_lung_and_implausible_ratios_are_refused() -> None:
    hu = with_heart(90.0)
    lung = lung_mask(hu, -400.0)
    assert not lung[:, 0, 0].any()  # the air around the body
    assert lung.sum() > 0 and not (lung & (hu > -400)).any()
    # no lung at all, or a ratio outside the range: no measurement
    assert cardiothoracic_ratio(np.full((8, 32, 32), 40.0, np.float32), SPACING) is None
    assert cardiothoracic_ratio(hu, SPACING, ratio_range=(0.7, 0.85)) is None
    # a field of view that cuts through a lung (a large patient): the thorax's width is not
    # known, so nothing is measured
    assert cardiothoracic_ratio(hu[:, :, 30:], SPACING) is None
    assert cardiothoracic_ratio(hu[:, :, 8:], SPACING) is not None  # only the wall cut
    with pytest.raises(ShapeError):
        cardiothoracic_ratio(np.zeros((4, 4), np.float32), SPACING)
    with pytest.raises(ValueError, match="spacing_mm"):
        cardiothoracic_ratio(hu, (5.0, 0.0, 2.75))
    for bad in ({"ratio_range": (0.8, 0.3)}, {"ratio_labels": ("",)},
                {"ratio_labels": ("lung_mass",)}):
        with pytest.raises(ModelConfigError):
            MeasureConfig(**bad)


def _pred(label: str, present: bool = True) -> FindingPrediction:
    return FindingPrediction(label=label, present=present, probability=0.9 if present else 0.1,
                             laterality="midline" if present else None, location="heart",
                             size_mm=0.7 if present else None, slices=None, box_voxels=None,
                             emr_token_spans=())


def test_a_called_cardiomegaly_gets_the_measured_ratio() -> None:
    hu = with_heart(90.0)
    preds = [_pred("cardiomegaly"), _pred("pericardial_effusion")]
    out = measure_findings(preds, hu, SPACING, MeasureConfig())
    assert out[0].size_source == "image"
    assert out[0].size_mm == pytest.approx(90.0 / LUNG_HALF_WIDTH_MM, abs=0.03)
    assert out[1] == preds[1] and preds[0].size_source == "head"  # input not modified
    assert measured_ratios(out, ("cardiomegaly",)) == {"cardiomegaly": out[0].size_mm}
    assert measured_sizes(out, ("cardiomegaly",)) == {}  # a ratio is no length
    # not called, or not a ratio label in this config: unchanged
    assert measure_findings([_pred("cardiomegaly", False)], hu, SPACING,
                            MeasureConfig()) == [_pred("cardiomegaly", False)]
    assert measure_findings(preds, hu, SPACING, MeasureConfig(ratio_labels=())) == preds
