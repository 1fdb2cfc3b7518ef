"""Zoom augmentation (patient size): config validation, the array and dictionary transforms,
and the per-case draw that training and its resume share."""

from __future__ import annotations

import numpy as np
import pytest

from medassist.errors import MedAssistError
from medassist.model_cli import TrainConfig, augmented
from medassist.model_data import CaseRecord
from multimodal.augment import AugmentConfig, RandZoom, RandZoomd, case_rng, zoom_volume
from multimodal.errors import ModalityError, ModelConfigError, ShapeError


def _ball(shape: tuple[int, int, int], centre: tuple[float, float, float], r: float
          ) -> np.ndarray:
    z, y, x = np.indices(shape)
    return np.asarray((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= r * r)


def test_config_validation() -> None:
    assert not AugmentConfig().active
    assert not AugmentConfig(p=1.0).active  # zoom range [1, 1]: nothing to do
    assert AugmentConfig(p=0.5, zoom=[0.9, 1.2]).zoom == (0.9, 1.2)  # type: ignore[arg-type]
    with pytest.raises(ModelConfigError, match=r"augment\.p"):
        AugmentConfig(p=1.5)
    with pytest.raises(ModelConfigError, match=r"augment\.zoom"):
        AugmentConfig(zoom=(1.2, 0.9))
    with pytest.raises(ModelConfigError, match=r"augment\.zoom"):
        AugmentConfig(zoom=(0.1, 1.0))
    with pytest.raises(MedAssistError, match=r"train\.augment: unknown keys"):
        TrainConfig(augment={"sigma": 1.0})
    with pytest.raises(MedAssistError, match=r"train\.augment"):
        TrainConfig(augment={"p": 2.0})


def test_zoom_scales_a_finding_about_the_centre() -> None:
    shape = (33, 33, 33)
    lab = _ball(shape, (16, 16, 16), 4).astype(np.uint8)
    hu = np.where(lab > 0, 40.0, -800.0).astype(np.float32)
    before = hu.copy()
    out, zl = zoom_volume(hu, 1.5, lab)
    assert out.shape == shape and zl is not None and zl.shape == shape
    assert np.array_equal(hu, before)  # the input is not changed
    assert 2.8 < (zl > 0).sum() / (lab > 0).sum() < 3.9  # about 1.5^3 = 3.4
    assert zl[16, 16, 16] == 1 and out[16, 16, 16] == pytest.approx(40.0)
    same, same_lab = zoom_volume(hu, 1.0, lab)
    assert np.allclose(same, hu, atol=1e-3) and same_lab is not None
    assert np.array_equal(same_lab, lab)
    # an off-centre finding moves away from the centre as it grows
    off = _ball(shape, (16, 16, 24), 2).astype(np.uint8)
    _, moved = zoom_volume(np.zeros(shape, np.float32), 1.25, off)
    assert moved is not None  # centre x 16 + 8 * 1.25
    assert np.argwhere(moved > 0)[:, 2].mean() == pytest.approx(26.0, abs=0.5)
    with pytest.raises(ShapeError, match="label map"):
        zoom_volume(hu, 1.2, lab[:-1])
    with pytest.raises(ShapeError, match="z, y, x"):
        zoom_volume(hu[0], 1.2)


def test_shrinking_adds_air_in_plane_and_continues_the_slices_along_z() -> None:
    hu = np.full((20, 24, 24), 30.0, np.float32)  # body filling the whole grid
    out, _ = zoom_volume(hu, 0.8)
    assert out[10, 0, 0] == pytest.approx(-1024.0)  # beyond the old in-plane edge: air
    assert out[0, 12, 12] == pytest.approx(30.0, abs=1e-3)
    assert out[-1, 12, 12] == pytest.approx(30.0, abs=1e-3)


def test_rand_zoom_keeps_every_finding_or_leaves_the_case() -> None:
    shape = (24, 32, 32)
    hu = np.full(shape, -800.0, np.float32)
    lab = _ball(shape, (12, 16, 16), 3).astype(np.uint8)
    t = RandZoom(AugmentConfig(p=1.0, zoom=(1.3, 1.3)))
    _out, zl, f = t(hu, lab, np.random.default_rng(0))
    assert f == pytest.approx(1.3) and zl is not None and (zl > 0).sum() > (lab > 0).sum()
    edge = _ball(shape, (12, 16, 30), 2).astype(np.uint8)  # at the grid's edge: cut off
    kept, kept_lab, none = t(hu, edge, np.random.default_rng(0))
    assert none is None and kept_lab is not None and np.array_equal(kept_lab, edge)
    assert np.array_equal(kept, hu) and kept is not hu
    off = RandZoom(AugmentConfig(p=0.0, zoom=(1.3, 1.3)))
    assert off(hu, lab, np.random.default_rng(0))[2] is None


def test_dictionary_version_keeps_a_missing_ct_missing() -> None:
    t = RandZoomd(("ct",), AugmentConfig(p=1.0, zoom=(1.1, 1.2)), allow_missing_keys=True)
    out = t({"ct": None, "emr": "note", "rng": np.random.default_rng(0)})
    assert out["ct"] is None and "ct_zoom" not in out
    hu = np.zeros((8, 8, 8), np.float32)
    got = t({"ct": hu, "ct_labels": np.zeros((8, 8, 8), np.uint8),
             "rng": np.random.default_rng(0)})
    assert 1.1 <= got["ct_zoom"] <= 1.2 and got["ct_labels"].shape == (8, 8, 8)
    with pytest.raises(ModalityError, match="missing"):
        RandZoomd(("ct",), AugmentConfig())({"ct": None})
    with pytest.raises(ValueError, match="rng"):
        t({"ct": hu})


def test_training_case_zoom_scales_the_finding_sizes() -> None:
    shape = (16, 24, 24)
    lab = _ball(shape, (8, 12, 12), 3).astype(np.uint8)
    rec = CaseRecord(case_id="c", hu=np.full(shape, -800, np.int16), label_map=lab,
                     findings=[{"kind": "lung_nodule", "label_value": 1, "size_mm": 8.0}],
                     emr=None, report_text="", meta={"impression": []})
    t = RandZoom(AugmentConfig(p=0.5, zoom=(0.9, 1.2)))
    cases = [augmented(rec, t, 0, 7, i) for i in range(40)]
    zooms = [c.meta["zoom"] for c in cases]
    assert 8 < sum(z is None for z in zooms) < 32  # about half zoomed
    for c, z in zip(cases, zooms, strict=True):
        assert c.findings[0]["size_mm"] == pytest.approx(8.0 * (z or 1.0))
    assert zooms == [augmented(rec, t, 0, 7, i).meta["zoom"] for i in range(40)]
    assert zooms != [augmented(rec, t, 1, 7, i).meta["zoom"] for i in range(40)]
    assert rec.findings[0]["size_mm"] == 8.0 and rec.label_map is lab  # not changed
    assert case_rng(0, 7, 3).random() == case_rng(0, 7, 3).random()


def test_sample_building_returns_the_free_heap() -> None:
    import ctypes.util

    from medassist.model_cli import release_free_heap

    # glibc (every Linux CI image here) has malloc_trim; elsewhere the call reports False
    assert release_free_heap() is (ctypes.util.find_library("c") is not None)


def test_shift_moves_volume_and_labels_in_plane() -> None:
    """Whole voxels along y (+: towards the back) and x, air and label 0 coming in; a move
    past the grid leaves air, or the padding asked for; bad shapes refused; the input
    untouched."""
    from multimodal.augment import AIR, shift_volume

    hu = np.arange(2 * 5 * 6, dtype=np.float32).reshape(2, 5, 6)
    lab = np.zeros((2, 5, 6), np.uint8)
    lab[:, 1, 2] = 3
    out, moved = shift_volume(hu, 2, -1, lab)
    assert moved is not None and out.shape == hu.shape
    assert np.array_equal(out[:, 2:, :5], hu[:, :3, 1:])
    assert (out[:, :2, :] == AIR).all() and (out[:, :, 5] == AIR).all()
    assert np.argwhere(moved[0] == 3).tolist() == [[3, 1]] and moved.sum() == 6
    assert hu[0, 0, 0] == 0 and lab.sum() == 6
    gone, _ = shift_volume(hu, 9, 0)
    assert (gone == AIR).all()
    padded, _ = shift_volume(hu, 0, 2, pad=-1000.0)  # a grid's own padding (bench/position.py)
    assert (padded[:, :, :2] == -1000.0).all() and np.array_equal(padded[:, :, 2:], hu[:, :, :4])
    with pytest.raises(ShapeError):
        shift_volume(hu[0], 1, 1)
    with pytest.raises(ShapeError):
        shift_volume(hu, 1, 1, lab[:, :4])


def test_rand_shift_draws_whole_voxels_keeps_findings_and_validates() -> None:
    from multimodal.augment import RandShift, RandShiftd

    shape = (8, 40, 40)
    hu = np.full(shape, -800.0, np.float32)
    lab = _ball(shape, (4, 20, 20), 3).astype(np.uint8)
    t = RandShift(AugmentConfig(shift_p=1.0, shift_mm=11.0), (5.0, 2.75, 2.75))
    moves = [t(hu, lab, case_rng(0, 7, i))[2] for i in range(30)]
    assert all(d is None or max(abs(d[0]), abs(d[1])) <= 4 for d in moves)  # 11 / 2.75
    assert sum(d is not None for d in moves) >= 25
    assert moves == [t(hu, lab, case_rng(0, 7, i))[2] for i in range(30)]
    out, moved, d = t(hu, lab, case_rng(0, 7, 0))
    assert d is not None and moved is not None
    assert np.array_equal(np.roll(np.roll(lab, d[0], 1), d[1], 2), moved)  # inside the grid
    assert (out == -1024.0).any()  # air came in where the volume moved away
    edge = _ball(shape, (4, 20, 38), 2).astype(np.uint8)  # most of it would leave the grid
    far = RandShift(AugmentConfig(shift_p=1.0, shift_mm=30.0), (5.0, 1.0, 1.0))
    left = [far(hu, edge, case_rng(1, 7, i)) for i in range(20)]
    for kept, kept_lab, dd in left:
        assert kept_lab is not None
        if dd is None:
            assert np.array_equal(kept_lab, edge) and np.array_equal(kept, hu)
        else:
            assert (kept_lab > 0).sum() >= 0.5 * (edge > 0).sum()
    assert any(dd is None for _k, _l, dd in left)
    off = RandShift(AugmentConfig(shift_p=0.0, shift_mm=10.0), (5.0, 2.75, 2.75))
    same, same_lab, none = off(hu, lab, np.random.default_rng(0))
    assert none is None and np.array_equal(same, hu) and same is not hu
    assert same_lab is not None and np.array_equal(same_lab, lab)
    assert AugmentConfig(shift_p=0.5, shift_mm=20.0).active
    assert not AugmentConfig(shift_p=0.5).active and not AugmentConfig(shift_mm=9.0).active
    for bad in ({"shift_p": 1.5}, {"shift_mm": -1.0}, {"shift_mm": 500.0}):
        with pytest.raises(ModelConfigError, match=r"augment\.shift"):
            AugmentConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ShapeError):
        RandShift(AugmentConfig(), (5.0, 0.0, 2.75))
    d_t = RandShiftd(("ct",), AugmentConfig(shift_p=1.0, shift_mm=11.0), (5.0, 2.75, 2.75),
                     allow_missing_keys=True)
    assert d_t({"ct": None, "rng": np.random.default_rng(0)})["ct"] is None
    got = d_t({"ct": hu, "ct_labels": lab, "rng": case_rng(0, 7, 0)})
    assert got["ct_shift"] == d and np.array_equal(got["ct_labels"], moved)
    with pytest.raises(ValueError, match="rng"):
        d_t({"ct": hu})


def test_training_case_shift_after_the_zoom_with_the_same_draws() -> None:
    """A training case moved in-plane: the label map moves with it, the sizes stay; the move
    is recorded; a zoom-only run draws as before the shift existed."""
    shape = (16, 32, 32)
    lab = _ball(shape, (8, 16, 16), 3).astype(np.uint8)
    rec = CaseRecord(case_id="c", hu=np.full(shape, -800, np.int16), label_map=lab,
                     findings=[{"kind": "lung_nodule", "label_value": 1, "size_mm": 8.0}],
                     emr=None, report_text="", meta={"impression": []})
    from multimodal.augment import RandShift

    aug = AugmentConfig(shift_p=1.0, shift_mm=8.25)
    zoom = RandZoom(aug)
    cases = [augmented(rec, zoom, 0, 7, i, RandShift(aug, (5.0, 2.75, 2.75)))
             for i in range(10)]
    for c in cases:
        assert c.meta["zoom"] is None and c.findings[0]["size_mm"] == 8.0
        d = c.meta["shift"]
        assert c.label_map is not None
        if d is None:
            assert np.array_equal(c.label_map, lab)
        else:
            assert np.array_equal(c.label_map, np.roll(np.roll(lab, d[0], 1), d[1], 2))
    assert any(c.meta["shift"] for c in cases)
    both = AugmentConfig(p=0.5, zoom=(0.9, 1.2), shift_p=1.0, shift_mm=8.25)
    only = AugmentConfig(p=0.5, zoom=(0.9, 1.2))
    assert [augmented(rec, RandZoom(both), 0, 7, i, RandShift(both, (5.0, 2.75, 2.75)))
            .meta["zoom"] for i in range(20)] == \
        [augmented(rec, RandZoom(only), 0, 7, i).meta["zoom"] for i in range(20)]
    assert "shift" not in augmented(rec, RandZoom(only), 0, 7, 0).meta
    assert rec.label_map is lab and rec.meta == {"impression": []}
    # no zoom at all (a shift-only run passes none): the same cases as an idle zoom's
    bare = [augmented(rec, None, 0, 7, i, RandShift(aug, (5.0, 2.75, 2.75)))
            for i in range(10)]
    assert [c.meta for c in bare] == [c.meta for c in cases]
    assert all(c.hu is not None and a.hu is not None and np.array_equal(c.hu, a.hu)
               for c, a in zip(bare, cases, strict=True))
    assert all(c.hu is rec.hu for c in bare if c.meta["shift"] is None)  # left as it was
