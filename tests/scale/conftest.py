"""Shared fixtures of the scale-out tests: 20 generated studies (one of them corrupt) and a
tiny model whose decoder is short (generation dominates CPU inference time)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
N_STUDIES = 20
BAD = 7  # index of the corrupt study (a truncated instance file)


def corrupt(case: Path) -> None:
    files = sorted(p for p in (case / "dicom").rglob("*") if p.is_file())
    victim = files[len(files) // 2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="session")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``studies/case_000NN`` (``medassist synth`` layout: dicom/ + emr.txt), 20 of them;
    ``case_00007`` has a truncated instance file."""
    from tests.core.test_pipeline import _write_cases

    base = tmp_path_factory.mktemp("scale") / "studies"
    cases = _write_cases(base, list(range(N_STUDIES)))
    corrupt(cases[BAD])
    return base


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """configs/model/tiny.yaml with a 32-token decoder, trained for two steps."""
    from medassist.model_cli import TrainConfig, train

    out = tmp_path_factory.mktemp("ck")
    raw = yaml.safe_load((ROOT / "configs/model/tiny.yaml").read_text(encoding="utf-8"))
    raw["model"]["decoder"]["max_len"] = 32
    cfg = out.parent / "tiny_short.yaml"
    cfg.write_text(yaml.safe_dump(raw), encoding="utf-8")
    optim = {"seed": 0, "steps": 2, "batch_size": 2, "grad_accum": 1, "lr": 3e-3,
             "warmup_steps": 1, "checkpoint_every": 2, "log_every": 100}
    train(TrainConfig(model_config=str(cfg),
                      synth_config=str(ROOT / "configs/synth/small.yaml"), data_seed=3,
                      train_cases=2, max_emr_tokens=256, out=str(out), optim=optim))
    return out
