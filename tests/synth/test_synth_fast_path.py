"""Fast path (render straight to the model grid) vs write DICOM -> dicom_io -> resample."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from dicom_io import load_volume
from medassist.synth.case import make_case
from medassist.synth.config import DicomConfig, SynthConfig
from medassist.synth.fast_path import model_grid, render_tensor, resample_to_grid
from medassist.synth.findings import Vocabulary
from medassist.synth.phantom import Grid
from medassist.synth.writer import write_case

MAE_BOUND_HU = 25.0  # noise-free, voxels inside the body
NOISE_RATIO = (0.65, 1.35)


def _dicom_path(case_cfg: SynthConfig, vocab: Vocabulary, index: int, out: Path,
                noise: bool) -> tuple[np.ndarray, object]:
    cfg = dataclasses.replace(
        case_cfg, scanner=dataclasses.replace(case_cfg.scanner, noise=noise),
        dicom=DicomConfig(write_labels=False))
    case = make_case(cfg, vocab, 99, index, "test")
    write_case(case, cfg, out)
    vol = load_volume(out / "dicom")
    arr = np.asarray(vol.array, dtype=np.float32)
    o = vol.index_to_lps([0, 0, 0])
    if vol.affine[2, 0] < 0:  # slices top-down: flip to inferior-first
        arr = arr[::-1]
        o = vol.index_to_lps([vol.shape[0] - 1, 0, 0])
    src = Grid((float(o[2]), float(o[1]), float(o[0])), vol.spacing, vol.shape)
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
