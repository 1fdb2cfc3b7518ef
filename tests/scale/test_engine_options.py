"""``--engine ray`` without Ray installed fails with a typed error saying how to install it,
before any work; the Ray options are refused with the in-process engine; impossible Ray
configurations are refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from medassist.batch_cli import main, run_batch
from medassist.errors import EngineUnavailableError, UsageError


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate a machine without the extra: ``import ray`` raises ImportError."""
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)


def test_ray_missing_is_a_clear_typed_error(no_ray: None, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from medassist.scale.ray_engine import RAY_INSTALL, require_ray

    with pytest.raises(EngineUnavailableError) as ei:
        require_ray()
    assert ei.value.engine == "ray" and ei.value.install == RAY_INSTALL
    assert "pip install 'medassist[ray]'" in str(ei.value)
    assert isinstance(ei.value, UsageError) and ei.value.exit_code == 2

    db = tmp_path / "b.db"
    inp = tmp_path / "in"
    inp.mkdir()
    with pytest.raises(EngineUnavailableError):
        run_batch(inp, db=f"sqlite:///{db}", checkpoint=str(tmp_path / "nope"), engine="ray")
    rc = main(["batch", str(inp), "--db", f"sqlite:///{db}", "--engine", "ray"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "pip install 'medassist[ray]'" in err and "--engine inprocess" in err
    assert not db.exists()  # refused before any work


def test_ray_options_need_the_ray_engine(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["batch", str(tmp_path), "--actors", "2", "--gpus-per-actor", "1"])
    assert rc == 2
    assert "--actors, --gpus-per-actor only apply to --engine ray" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--engine must be one of"):
        run_batch(tmp_path, db=None, checkpoint="x", engine="spark")


def test_ray_config_validation() -> None:
    from medassist.scale.ray_engine import RayConfig, _check_fits

    with pytest.raises(UsageError, match="--actors"):
        RayConfig(actors=0)
    with pytest.raises(UsageError, match="--batch-size"):
        RayConfig(batch_size=0)
    with pytest.raises(UsageError, match="leave less than"):
        _check_fits(RayConfig(actors=2, cpus_per_actor=1.0), {"cpus": 2.0, "gpus": 0.0})
    with pytest.raises(UsageError, match="exceed the cluster's 1 GPUs"):
        _check_fits(RayConfig(actors=2, gpus_per_actor=1.0, cpus_per_actor=0.5),
                    {"cpus": 8.0, "gpus": 1.0})
    _check_fits(RayConfig(actors=2, cpus_per_actor=0.5), {"cpus": 2.0, "gpus": 0.0})
