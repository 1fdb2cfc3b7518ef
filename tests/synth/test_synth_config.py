from __future__ import annotations

from pathlib import Path

import pytest

from medassist.synth.config import SynthConfig, config_from_mapping, load_config
from medassist.synth.errors import SynthConfigError
from medassist.synth.findings import KINDS, load_vocabulary, vocabulary_from_mapping

ROOT = Path(__file__).resolve().parents[2]


SYNTH_CONFIGS = sorted(f.name for f in (ROOT / "configs" / "synth").glob("*.yaml"))


@pytest.mark.parametrize("name", SYNTH_CONFIGS)
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(ROOT / "configs" / "synth" / name)
    assert isinstance(cfg, SynthConfig)


def test_shipped_vocabulary_covers_the_issue() -> None:
    vocab = load_vocabulary(ROOT / "configs" / "findings.yaml")
    assert {s.name for s in vocab.specs} == set(KINDS)


@pytest.mark.parametrize("mapping", [
    {"findings": {"normal_fraction": 0.2}},
    {"geometry": {"matrix": [16]}},
    {"geometry": {"coverage_mm": [300, 100]}},
    {"dicom": {"transfer_syntax": "jpeg2000"}},
    {"scanner": {"bogus": 1}},
])
def test_invalid_config_raises_typed_error(mapping: dict[str, object]) -> None:
    with pytest.raises(SynthConfigError):
        config_from_mapping(mapping)


def test_invalid_vocabulary_raises() -> None:
    with pytest.raises(SynthConfigError):
        vocabulary_from_mapping({"findings": {"unicorn": {"weight": 1, "size_mm": [1, 2],
                                                           "size_median_mm": 1,
                                                           "size_sigma": 0.1}}})


def test_shift_changes_distribution() -> None:
    cfg = SynthConfig()
    s = cfg.shifted()
    assert s.scanner.kvp != cfg.scanner.kvp
    assert s.geometry.slice_thickness_mm != cfg.geometry.slice_thickness_mm
    assert s.anatomy.size_scale[0] > cfg.anatomy.size_scale[0]


def test_shift_one_group_at_a_time() -> None:
    import dataclasses

    cfg = SynthConfig()
    size = cfg.shifted(("size",))
    assert size.anatomy.size_scale == cfg.shift.size_scale
    assert dataclasses.replace(size, anatomy=cfg.anatomy) == cfg  # nothing else changed
    scanner = cfg.shifted(("scanner",))
    assert scanner.scanner.noise_scale == cfg.scanner.noise_scale * cfg.shift.noise_scale
    assert scanner.geometry == cfg.geometry and scanner.anatomy == cfg.anatomy
    every = cfg.shifted(("scanner",)).shifted(("slices", "size", "fat"))
    assert every == cfg.shifted()
    assert cfg.shifted(()) == cfg
    with pytest.raises(SynthConfigError, match="unknown shift groups"):
        cfg.shifted(("kernel",))
