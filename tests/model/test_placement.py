"""Where the model grid lies on a scan (multimodal.transforms.place_grid, crop_or_pad's start,
medassist.drafting.Study's mapping back to the scan)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from medassist.drafting import Study
from multimodal.config import CTStemConfig
from multimodal.errors import ModelConfigError
from multimodal.transforms import GridPlacement, ResampleToGrid, crop_or_pad, place_grid

REPO = Path(__file__).resolve().parents[2]


def chest(n_slices: int, lungs: tuple[int, int], gas: tuple[int, int] | None = None
          ) -> np.ndarray:
    """(n_slices, 48, 48): a soft-tissue body in air, two lungs on slices lungs[0]..lungs[1]
    (inclusive), optionally a pocket of bowel gas on slices gas[0]..gas[1]."""
    y, x = np.mgrid[:48, :48]
    body = ((y - 24) / 18.0) ** 2 + ((x - 24) / 22.0) ** 2 <= 1.0
    vol = np.full((n_slices, 48, 48), -1000.0, np.float32)
    vol[:, body] = 40.0
    for cx in (13, 35):
        lung = ((y - 24) / 12.0) ** 2 + ((x - cx) / 8.0) ** 2 <= 1.0
        vol[lungs[0]:lungs[1] + 1, lung] = -850.0
    if gas is not None:
        vol[gas[0]:gas[1] + 1, 22:27, 22:27] = -1000.0
    return vol


def test_crop_or_pad_start() -> None:
    a = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    centre = crop_or_pad(a, (4, 2, 2), -1.0)
    assert centre[:, 0, 0].tolist() == [3, 4, 5, 6]  # the centre by default
    assert crop_or_pad(a, (4, 2, 2), -1.0, (0, 0, 0))[:, 0, 0].tolist() == [0, 1, 2, 3]
    assert crop_or_pad(a, (4, 2, 2), -1.0, (8, 0, 0))[:, 0, 0].tolist() == [8, 9, -1, -1]
    assert crop_or_pad(a, (4, 2, 2), -1.0, (-2, 0, 0))[:, 0, 0].tolist() == [-1, -1, 0, 1]
    padded = crop_or_pad(a, (14, 2, 2), -1.0)
    assert padded[:, 0, 0].tolist() == [-1, -1, *range(10), -1, -1]
    assert (crop_or_pad(a, (4, 2, 2), -1.0, (20, 0, 0)) == -1).all()  # nothing inside
    assert a[0, 0, 0] == 0  # input untouched


def test_lungs_kept_in_a_long_scan() -> None:
    # 100 slices, grid of 64: the centre window (18..81) would cut the lungs (2..60)
    vol = chest(100, (2, 60))
    centre = place_grid(vol, (64, 48, 48), "centre")
    assert centre.start == (18, 0, 0) and centre.lung_slices == (2, 60)
    assert centre.lung_in_grid == pytest.approx(43 / 59, abs=1e-3)
    lungs = place_grid(vol, (64, 48, 48), "lungs")
    assert lungs.start == (2, 0, 0) and lungs.lung_in_grid == 1.0
    assert lungs.scan_cuts_lung == () and lungs.grid_cuts_lung == ()
    assert centre.grid_cuts_lung == ("inferior",)
    # a tolerated loss: the centre leaves 16 of 59 lung slices out (27 %)
    assert place_grid(vol, (64, 48, 48), "lungs", max_loss=0.3).start == (18, 0, 0)
    assert place_grid(vol, (64, 48, 48), "lungs", max_loss=0.2).start == (2, 0, 0)
    # the same moved above: lungs high in the scan
    high = place_grid(chest(100, (45, 95)), (64, 48, 48), "lungs")
    assert high.start == (32, 0, 0) and high.lung_in_grid == 1.0
    out, where = ResampleToGrid((1.0, 1.0, 1.0), (64, 48, 48), placement="lungs").place(
        vol, (1.0, 1.0, 1.0))
    assert where == dataclasses.replace(lungs, lung_ml=where.lung_ml)
    y, x = np.mgrid[:48, :48]
    one_lung = np.count_nonzero(((y - 24) / 12.0) ** 2 + ((x - 13) / 8.0) ** 2 <= 1.0)
    assert where.lung_ml == pytest.approx(2 * 59 * one_lung / 1000.0, abs=0.1)  # 1 mm³ voxels
    assert np.array_equal(out, vol[2:66])


def test_lungs_inside_the_centre_stay_centred() -> None:
    vol = chest(100, (30, 70))
    a = ResampleToGrid((1.0, 1.0, 1.0), (64, 48, 48), placement="lungs")(vol, (1, 1, 1))
    b = ResampleToGrid((1.0, 1.0, 1.0), (64, 48, 48), placement="centre")(vol, (1, 1, 1))
    assert np.array_equal(a, b) and np.array_equal(a, vol[18:82])
    # a scan shorter than the grid is padded around its centre either way
    short = place_grid(chest(40, (5, 35)), (64, 48, 48), "lungs")
    assert short.start == (-12, 0, 0) and short.lung_in_grid == 1.0


def test_lungs_longer_than_the_grid_centred_on_them() -> None:
    vol = chest(120, (10, 109))  # 100 lung slices, grid 64
    p = place_grid(vol, (64, 48, 48), "lungs")
    assert p.start == (28, 0, 0) and p.grid_cuts_lung == ("inferior", "superior")
    assert p.lung_in_grid == pytest.approx(0.64, abs=1e-3)


def test_scan_ends_in_the_lungs_and_bowel_gas() -> None:
    p = place_grid(chest(80, (0, 50)), (64, 48, 48), "lungs")
    assert p.scan_cuts_lung == ("inferior",) and p.start == (0, 0, 0)
    assert place_grid(chest(80, (20, 79)), (64, 48, 48)).scan_cuts_lung == ("superior",)
    # gas in the bowel below the lungs, apart from them: not part of the lungs' run
    g = place_grid(chest(100, (40, 95), gas=(2, 30)), (64, 48, 48), "lungs")
    assert g.lung_slices == (40, 95) and g.start == (32, 0, 0) and g.scan_cuts_lung == ()
    # bowel gas on the scan's first slice is not the lungs ending there
    g0 = place_grid(chest(100, (40, 95), gas=(0, 30)), (64, 48, 48), "lungs")
    assert g0.lung_slices == (40, 95) and g0.scan_cuts_lung == ()


def test_no_lungs_and_bad_arguments() -> None:
    vol = np.full((70, 20, 20), 40.0, np.float32)
    p = place_grid(vol, (64, 20, 20), "lungs")
    assert p == GridPlacement(start=(3, 0, 0)) and p.lung_in_grid == 1.0
    with pytest.raises(ValueError, match="placement"):
        place_grid(vol, (64, 20, 20), "top")
    with pytest.raises(ValueError, match="placement"):
        ResampleToGrid((1, 1, 1), (2, 2, 2), placement="top")
    with pytest.raises(ValueError, match="max_loss"):
        place_grid(vol, (64, 20, 20), "lungs", max_loss=1.0)
    with pytest.raises(ValueError, match="max_loss"):
        ResampleToGrid((1, 1, 1), (2, 2, 2), max_loss=-0.1)
    with pytest.raises(ModelConfigError, match="placement"):
        CTStemConfig(placement="middle")
    with pytest.raises(ModelConfigError, match="placement_max_loss"):
        CTStemConfig(placement_max_loss=1.5)
    assert CTStemConfig().placement == "lungs" and CTStemConfig().placement_max_loss == 0.1


def test_study_maps_the_grid_back_through_its_placement() -> None:
    def study(placement: GridPlacement | None) -> Study:
        return Study(hu=np.zeros((4, 6, 6), np.float32), affine=np.eye(4), src_shape=(10, 6, 6),
                     src_spacing=(1.0, 1.0, 1.0), series_uid="1.2", dicom_sha256="0" * 64,
                     header={}, grid_shape=(4, 6, 6), grid_spacing=(1.0, 1.0, 1.0),
                     placement=placement)

    assert study(None).to_source((0, 0, 0)).tolist() == [3.0, 0.0, 0.0]  # centred
    moved = study(GridPlacement(start=(6, 0, 0)))
    assert moved.to_source((1, 2, 3)).tolist() == [7.0, 2.0, 3.0]
    assert moved.to_mm((0, 0, 0)).tolist() == [6.0, 0.0, 0.0]
    lab = np.zeros((10, 6, 6), np.uint8)
    lab[7] = 1
    assert np.flatnonzero(moved.resample_labels(lab).any(axis=(1, 2))).tolist() == [1]


def test_coverage_text() -> None:
    from medassist.drafting import coverage_text

    grid, sp = (64, 128, 128), (5.0, 2.75, 2.75)
    assert coverage_text(None, grid, sp) == ""
    assert coverage_text(GridPlacement(start=(0, 0, 0), lung_slices=(3, 50)), grid, sp) == ""
    cut = coverage_text(GridPlacement(start=(0, 0, 0), lung_slices=(0, 50),
                                      scan_cuts_lung=("inferior",)), grid, sp)
    assert cut == ("The scan ends within the lungs inferiorly: the lung bases are not fully "
                   "included.")
    both = coverage_text(GridPlacement(start=(28, 0, 0), lung_slices=(10, 109),
                                       lung_in_grid=0.64,
                                       scan_cuts_lung=("inferior", "superior"),
                                       grid_cuts_lung=("inferior", "superior")), grid, sp)
    assert "lung apices are not fully included" in both
    assert both.endswith("About 36 % of the lung volume (lowest part and highest part) lies "
                         "outside the field the draft model reads (320 mm along the body "
                         "axis, 352 x 352 mm across) and was not assessed by it.")
    tip = coverage_text(GridPlacement(start=(0, 0, 0), lung_slices=(0, 70),
                                      lung_in_grid=0.993, grid_cuts_lung=("in-plane",)),
                        grid, sp)
    assert tip.startswith("Less than 1 % of the lung volume (outer edges) lies outside")
    # below 0.5 %: not stated (air enclosed in the table can read as lung)
    assert coverage_text(GridPlacement(start=(0, 0, 0), lung_slices=(0, 70),
                                       lung_in_grid=0.996, grid_cuts_lung=("in-plane",)),
                         grid, sp) == ""


def test_a_grid_narrower_than_the_chest_reports_its_in_plane_loss() -> None:
    """A 48-voxel-wide chest read on a 32 x 32 grid in-plane: the lungs' outer parts are out;
    that counts in the share, but does not move the grid along z (moving cannot help)."""
    vol = chest(100, (30, 70))
    p = place_grid(vol, (64, 32, 32), "lungs", max_loss=0.1)
    assert p.start == (18, 8, 8) and p.grid_cuts_lung == ("in-plane",)
    assert 0.3 < p.lung_in_grid < 0.9
    assert place_grid(vol, (64, 48, 48), "lungs").grid_cuts_lung == ()


def _long_scan(out: Path) -> Path:
    """A 500 mm chest-and-abdomen scan (100 slices of 5 mm, 128 x 128 of 2.75 mm): a soft-tissue
    body, two lungs in its upper half (world z 250 to 495 mm), reaching the scan's top."""
    from tests.dicom_factory import write_series

    def world(p: np.ndarray) -> np.ndarray:
        x, y, z = p[..., 0] - 176.0, p[..., 1] - 176.0, p[..., 2]
        hu = np.where((x / 150.0) ** 2 + (y / 110.0) ** 2 <= 1.0, 40.0, -1000.0)
        for cx in (-70.0, 70.0):
            lung = ((x - cx) / 50.0) ** 2 + (y / 80.0) ** 2 <= 1.0
            hu = np.where(lung & (z >= 250.0), -850.0, hu)
        return hu

    write_series(out, [(0.0, 0.0, 5.0 * k) for k in range(100)], rows=128, cols=128,
                 pixel_spacing=(2.75, 2.75), fn=world)
    return out


def test_a_chest_and_abdomen_scan_is_read_on_its_lungs(tmp_path: Path) -> None:
    """Read from DICOM with the shipped checkpoint's grid (64 slices of 5 mm): the centred
    grid would hold 64 % of the lungs; the placed one holds them all, maps back to the right
    world z, and the draft's technique says the scan ends within the lungs."""
    from medassist.drafting import infer, load_model, load_study, prepare

    study_dir = _long_scan(tmp_path / "dicom")
    lm = load_model(REPO / "models/demo")
    cfg = lm.cfg
    placed = load_study(study_dir, cfg)
    assert placed.placement is not None
    assert placed.placement.start[0] == 36 and placed.placement.lung_slices == (50, 99)
    assert placed.placement.lung_in_grid == 1.0
    assert placed.placement.scan_cuts_lung == ("superior",)
    assert placed.to_mm((0, 0, 0))[2] == pytest.approx(180.0)
    assert placed.to_mm((63, 0, 0))[2] == pytest.approx(495.0)
    assert (placed.hu[14:, 64, 40] < -800).all() and (placed.hu[:13, 64, 40] > 0).all()
    centred = load_study(study_dir, dataclasses.replace(
        cfg, ct=dataclasses.replace(cfg.ct, placement="centre")))
    assert centred.placement is not None and centred.placement.start[0] == 18
    assert centred.placement.lung_in_grid == pytest.approx(0.64, abs=1e-3)
    draft = infer(lm, [prepare(study_dir, None, cfg)])[0]
    assert draft["coverage"] == {"lung_in_model_grid": 1.0, "scan_cuts_lung": ["superior"]}
    assert draft["sections"]["technique"].endswith(
        "The scan ends within the lungs superiorly: the lung apices are not fully included.")


def test_a_scan_without_lungs_is_refused(tmp_path: Path, shared_data: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The shared head CT (dcm_qa_ct/GE, 28 tilted slices) holds a few tens of mL of enclosed
    air (sinuses), not lungs: `medassist report` refuses it with a typed input error naming
    the folder (exit 3) instead of drafting chest findings on a head; --min-lung-ml 0 drafts
    it anyway. A phantom body without air is refused on its own config too."""
    from medassist.cli import main
    from medassist.drafting import load_study
    from medassist.errors import InputError, NotAChestCTError
    from multimodal.checkpoint import load_checkpoint

    head = shared_data / "ct" / "dcm_qa_ct" / "GE"
    assert main(["report", str(head), "--json"]) == 3
    err = capsys.readouterr().err
    assert f"{head}: the scan holds" in err and "mL of aerated lung" in err
    assert "--min-lung-ml 0" in err
    assert main(["report", str(head), "--json", "--min-lung-ml", "0"]) == 0
    assert '"coverage"' in capsys.readouterr().out
    assert main(["report", str(head), "--min-lung-ml", "-1"]) == 2
    # not stored: the pipeline refuses such a scan whatever the command line says
    assert main(["report", str(head), "--min-lung-ml", "0", "--db",
                 f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert "drop --db" in capsys.readouterr().err
    # the Philips head phantom: a thin shell (bits of under a quarter of a slice's largest
    # piece of tissue on the model grid) round air; the air the body does not enclose is not
    # lung (stop 33 read 820 mL here and drafted a chest)
    phantom = shared_data / "ct" / "dcm_qa_ct" / "Philips-S21610"
    assert main(["report", str(phantom), "--json"]) == 3
    assert f"{phantom}: the scan holds" in capsys.readouterr().err
    _m, cfg, *_ = load_checkpoint(REPO / "models/demo")
    from tests.dicom_factory import write_series

    body = tmp_path / "body"
    write_series(body, [(0.0, 0.0, 5.0 * k) for k in range(20)], rows=64, cols=64,
                 pixel_spacing=(5.0, 5.0),
                 fn=lambda p: np.where(np.hypot(p[..., 0] - 160, p[..., 1] - 160) < 120,
                                       40.0, -1000.0))
    with pytest.raises(NotAChestCTError) as info:
        load_study(body, cfg)
    assert isinstance(info.value, InputError) and info.value.path == str(body)
    assert info.value.exit_code == 3
    anyway = load_study(body, dataclasses.replace(cfg, ct=dataclasses.replace(
        cfg.ct, min_lung_ml=0.0)))
    assert anyway.placement is not None and anyway.placement.lung_ml == 0.0
    with pytest.raises(ModelConfigError, match="min_lung_ml"):
        CTStemConfig(min_lung_ml=-5.0)


def test_midline_air_tells_a_mediastinum_from_a_hollow_object() -> None:
    """Two lungs beside a mediastinum leave the body's midline tissue; the air inside a hollow
    shell crosses it; lung slices with less than half the largest area are not read."""
    from multimodal.cardiac import body_and_lungs
    from multimodal.transforms import midline_air

    body, lung = body_and_lungs(chest(12, (2, 9)), -400.0, lateral=False)
    assert lung.any() and midline_air(lung, body) == 0.0
    y, x = np.mgrid[:48, :48]
    r = np.hypot(y - 24, x - 24)
    shell = np.full((12, 48, 48), -1000.0, np.float32)
    shell[:, (r >= 16) & (r < 20)] = 40.0
    body, lung = body_and_lungs(shell, -400.0, lateral=False)
    assert 0.75 < midline_air(lung, body) < 0.85  # 31 of 39 midline voxels are air
    # a chest whose few top slices hold a hollow ring: the median of the chest slices rules
    mixed = chest(12, (0, 11))
    mixed[10:] = shell[10:]
    body, lung = body_and_lungs(mixed, -400.0, lateral=False)
    assert midline_air(lung, body) == 0.0
    assert midline_air(np.zeros((3, 8, 8), bool), np.ones((3, 8, 8), bool)) == 0.0
    # the placement reports it (the body labelled once for the lungs and the midline)
    body, lung = body_and_lungs(shell, -400.0, lateral=False)
    assert place_grid(shell, (12, 48, 48)).midline_air == midline_air(lung, body) > 0.75
    assert place_grid(chest(12, (2, 9)), (12, 48, 48)).midline_air == 0.0


def test_a_hollow_object_is_refused(tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """An air-filled shell with a wall as thick as a chest's (litres of enclosed air, so the
    lung-volume check passes) is no chest: `load_study` refuses it with a typed input error
    naming the folder, `medassist report` exits 3, and `--min-lung-ml 0` drafts it anyway;
    the generated chest beside it and its setting are accepted."""
    from medassist.cli import main
    from medassist.drafting import load_study
    from medassist.errors import NotAChestCTError
    from multimodal.checkpoint import load_checkpoint
    from tests.dicom_factory import write_series

    _m, cfg, *_ = load_checkpoint(REPO / "models/demo")
    assert cfg.ct.max_midline_air == 0.65
    shell = tmp_path / "shell"
    write_series(shell, [(0.0, 0.0, 5.0 * k) for k in range(24)], rows=64, cols=64,
                 pixel_spacing=(5.0, 5.0),
                 fn=lambda p: np.where(np.abs(np.hypot(p[..., 0] - 160, p[..., 1] - 160)
                                              - 110) < 12, 40.0, -1000.0))
    with pytest.raises(NotAChestCTError, match="of the body's midline") as info:
        load_study(shell, cfg)
    assert info.value.path == str(shell) and info.value.exit_code == 3
    assert main(["report", str(shell), "--json"]) == 3
    assert f"{shell}: its air fills" in capsys.readouterr().err
    anyway = load_study(shell, dataclasses.replace(cfg, ct=dataclasses.replace(
        cfg.ct, min_lung_ml=0.0)))
    assert anyway.placement is not None and anyway.placement.midline_air > 0.65
    assert anyway.placement.lung_ml > 300.0  # the volume check alone would draft it
    off = dataclasses.replace(cfg, ct=dataclasses.replace(cfg.ct, max_midline_air=1.0))
    assert load_study(shell, off).placement is not None
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ModelConfigError, match="max_midline_air"):
            CTStemConfig(max_midline_air=bad)
