"""Shared fixtures of the case-generator tests (small 128^2 studies)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medassist.synth.config import SynthConfig, load_config
from medassist.synth.findings import Vocabulary, load_vocabulary

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def small_cfg() -> SynthConfig:
    return load_config(ROOT / "configs" / "synth" / "small.yaml")


@pytest.fixture(scope="session")
def vocab(small_cfg: SynthConfig) -> Vocabulary:
    return load_vocabulary(small_cfg.findings.vocabulary_path())
