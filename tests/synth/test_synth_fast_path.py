"""Fast path (render straight to the model grid) vs write DICOM -> dicom_io -> resample."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dicom_io import load_volume
from medassist.synth.case import make_case
from medassist.synth.config import DicomConfig, FastPathConfig, SynthConfig
from medassist.synth.errors import SynthConfigError
from medassist.synth.fast_path import model_grid, placed_grid, render_tensor, resample_to_grid
from medassist.synth.findings import Vocabulary
from medassist.synth.phantom import Grid
from medassist.synth.writer import write_case

MAE_BOUND_HU = 25.0  # noise-free, voxels inside the body
NOISE_RATIO = (0.65, 1.35)


def _read_back(out: Path) -> tuple[np.ndarray, Grid]:
    """The series written under ``out`` read with dicom_io: the volume inferior slice first
    and its grid in patient mm."""
    vol = load_volume(out / "dicom")
    arr = np.asarray(vol.array, dtype=np.float32)
    o = vol.index_to_lps([0, 0, 0])
    if vol.affine[2, 0] < 0:  # slices top-down: flip to inferior-first
        arr = arr[::-1]
        o = vol.index_to_lps([vol.shape[0] - 1, 0, 0])
    return arr, Grid((float(o[2]), float(o[1]), float(o[0])), vol.spacing, vol.shape)


def _dicom_path(case_cfg: SynthConfig, vocab: Vocabulary, index: int, out: Path,
                noise: bool) -> tuple[np.ndarray, object]:
    cfg = dataclasses.replace(
        case_cfg, scanner=dataclasses.replace(case_cfg.scanner, noise=noise),
        dicom=DicomConfig(write_labels=False))
    case = make_case(cfg, vocab, 99, index, "test")
    write_case(case, cfg, out)
    arr, src = _read_back(out)
    dst = model_grid(case, cfg.fast_path)
    return resample_to_grid(arr, src, dst, pad=cfg.fast_path.pad_hu), case


@pytest.mark.parametrize("index", [0, 1, 2])
def test_fast_path_matches_dicom_path(tmp_path: Path, small_cfg: SynthConfig,
                                      vocab: Vocabulary, index: int) -> None:
    ref, case = _dicom_path(small_cfg, vocab, index, tmp_path / "clean", noise=False)
    fast, labels = render_tensor(case, small_cfg.fast_path, noise=False)  # type: ignore[arg-type]
    assert fast.shape == ref.shape == small_cfg.fast_path.shape
    body = (ref > -500) | (fast > -500)
    mae = float(np.mean(np.abs(fast[body] - ref[body])))
    print(f"case {index}: fast vs DICOM path MAE {mae:.1f} HU over {body.sum()} body voxels")
    assert mae < MAE_BOUND_HU
    # labels lie where the image has the finding in both paths
    assert set(np.unique(labels)) <= {0} | {f.index + 1 for f in case.findings}  # type: ignore[attr-defined]


def test_fast_path_noise_matches_resampled_dicom_noise(
        tmp_path: Path, small_cfg: SynthConfig, vocab: Vocabulary) -> None:
    clean, _ = _dicom_path(small_cfg, vocab, 4, tmp_path / "clean", noise=False)
    noisy, case = _dicom_path(small_cfg, vocab, 4, tmp_path / "noisy", noise=True)
    f_noisy, _ = render_tensor(case, small_cfg.fast_path, noise=True)  # type: ignore[arg-type]
    f_clean, _ = render_tensor(case, small_cfg.fast_path, noise=False)  # type: ignore[arg-type]
    inside = clean > -900
    sd_dicom = float(np.std((noisy - clean)[inside]))
    sd_fast = float(np.std((f_noisy - f_clean)[inside]))
    print(f"noise SD after resampling: DICOM path {sd_dicom:.2f} HU, fast path {sd_fast:.2f} HU")
    assert sd_dicom > 0
    assert NOISE_RATIO[0] <= sd_fast / sd_dicom <= NOISE_RATIO[1]


def test_fast_path_torch_output(small_cfg: SynthConfig, vocab: Vocabulary) -> None:
    case = make_case(small_cfg, vocab, 1, 0, "train")
    t, labels = render_tensor(case, small_cfg.fast_path, as_torch=True)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert tuple(t.shape) == (1, *small_cfg.fast_path.shape)
    assert labels.shape == small_cfg.fast_path.shape
    t2, _ = render_tensor(case, small_cfg.fast_path, as_torch=True)
    assert torch.equal(t, t2)


def test_fast_path_places_the_grid_on_the_lungs_as_the_dicom_path(
        tmp_path: Path, small_cfg: SynthConfig, vocab: Vocabulary) -> None:
    """A chest-and-abdomen scan (500-560 mm from just above the apices): the 355 mm grid
    centred on it leaves the apices out.  With ``placement`` "lungs" the fast path moves the
    grid along z, by whole slices, to where the DICOM path (``ResampleToGrid(...,
    "lungs").place`` on the scan read back) puts it, and renders what that path reads there."""
    from multimodal.transforms import ResampleToGrid

    fp = dataclasses.replace(small_cfg.fast_path, placement="lungs")
    cfg = dataclasses.replace(
        small_cfg, geometry=dataclasses.replace(small_cfg.geometry, coverage_mm=(500.0, 560.0)),
        scanner=dataclasses.replace(small_cfg.scanner, noise=False), fast_path=fp,
        dicom=DicomConfig(write_labels=False))
    case = make_case(cfg, vocab, 99, 0, "test")
    dz = fp.spacing_mm[0]
    centred, placed = model_grid(case, fp), placed_grid(case, fp)
    moved = (placed.origin[0] - centred.origin[0]) / dz
    assert moved >= 5 and abs(moved - round(moved)) < 1e-6  # towards the head, whole slices
    assert placed.origin[1:] == centred.origin[1:] and placed.shape == centred.shape
    assert placed_grid(case, dataclasses.replace(fp, placement="centre")) == centred
    # the DICOM path: the scan read back, resampled and placed by the model's transform
    write_case(case, cfg, tmp_path)
    arr, src = _read_back(tmp_path)
    _, where = ResampleToGrid(fp.spacing_mm, fp.shape, fp.pad_hu, "lungs",
                              fp.placement_max_loss).place(arr, src.spacing)
    size = round(src.shape[0] * src.spacing[0] / dz)
    # the world z of the placed grid's first slice (as medassist.drafting.Study.to_source)
    z0 = src.origin[0] + src.spacing[0] * ((where.start[0] + 0.5) * src.shape[0] / size - 0.5)
    print(f"grid moved {moved:.0f} slices; first slice at z {placed.origin[0]:.1f} mm (fast) "
          f"and {z0:.1f} mm (DICOM path)")
    assert abs(placed.origin[0] - z0) <= dz
    ref = resample_to_grid(arr, src, placed, pad=fp.pad_hu)
    fast, _ = render_tensor(case, fp, noise=False)
    body = (ref > -500) | (fast > -500)
    assert float(np.mean(np.abs(fast[body] - ref[body]))) < MAE_BOUND_HU
    # the centred render holds less of the lungs than the placed one
    flat, _ = render_tensor(case, dataclasses.replace(fp, placement="centre"), noise=False)
    assert int((fast < -400).sum()) > int((flat < -400).sum())


def test_fast_path_placement_leaves_shorter_scans_and_is_validated(
        small_cfg: SynthConfig, vocab: Vocabulary) -> None:
    fp = dataclasses.replace(small_cfg.fast_path, placement="lungs")
    case = make_case(small_cfg, vocab, 1, 0, "train")  # 300-340 mm: inside the 355 mm grid
    assert placed_grid(case, fp) == model_grid(case, fp)
    a, _ = render_tensor(case, fp, noise=False)
    b, _ = render_tensor(case, small_cfg.fast_path, noise=False)
    assert np.array_equal(a, b)
    with pytest.raises(SynthConfigError, match="placement must be"):
        FastPathConfig(placement="apex")
    with pytest.raises(SynthConfigError, match="placement_max_loss"):
        FastPathConfig(placement_max_loss=1.0)


def test_fast_path_placement_needs_no_render_where_the_lungs_fit(
        small_cfg: SynthConfig, vocab: Vocabulary, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scan a little longer than the grid whose lungs the centred grid holds: the anatomy's
    lungs settle it (no extra render: training data costs what it did)."""
    import medassist.synth.fast_path as fast_path

    fp = dataclasses.replace(small_cfg.fast_path, placement="lungs")
    cfg = dataclasses.replace(
        small_cfg, geometry=dataclasses.replace(small_cfg.geometry, coverage_mm=(370.0, 380.0)))
    case = make_case(cfg, vocab, 99, 1, "test")
    assert case.acquisition.grid.shape[0] * case.acquisition.grid.spacing[0] > 360.0

    def no_render(*_a: object, **_k: object) -> None:
        raise AssertionError("rendered")

    monkeypatch.setattr(fast_path, "render", no_render)
    assert fast_path.placed_grid(case, fp) == model_grid(case, fp)
