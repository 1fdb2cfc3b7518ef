"""Shared fixtures: the real DICOM in ../shared/data and strict configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicom_io.config import DicomIOConfig

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    env = os.environ.get("MEDASSIST_SHARED_DATA")
    return Path(env) if env else (REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real data. Missing data fails (never skips) the tests that need it."""
    d = shared_data_dir()
    if not (d / "README.md").is_file():
        pytest.fail(f"shared test data not found at {d}; set MEDASSIST_SHARED_DATA")
    return d


@pytest.fixture(scope="session")
def a0001(shared_data: Path) -> Path:
    return shared_data / "ct" / "lung-pet-ct-dx" / "Lung_Dx-A0001"


@pytest.fixture()
def strict_config() -> DicomIOConfig:
    cfg = DicomIOConfig()
    assert cfg.assembly.strict
    return cfg
