"""Data-parallel training: `medassist train` under torchrun with 2 CPU processes (gloo, on
loopback) against the same global batch in one process (docs/model.md, "Distributed
training")."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from medassist.model_cli import TrainConfig, train
from multimodal.checkpoint import WEIGHTS, build_model, load_checkpoint
from multimodal.config import ModelConfig
from multimodal.distributed import World, check_batch, env_world, shard, state_digest, step_seed
from multimodal.errors import ModelConfigError

ROOT = Path(__file__).resolve().parents[2]
OPTIM = {"seed": 0, "steps": 4, "batch_size": 4, "grad_accum": 2, "lr": 3e-3,
         "warmup_steps": 2, "checkpoint_every": 2, "log_every": 1}
#: Loss terms whose global-batch value is NOT the mean of equal-sized shards' values are
#: switched off, and so is modality dropout (random draws per rank): see docs/model.md.
SEPARABLE = {"gating": {"drop_emr": 0.0, "drop_ct": 0.0}, "align_weight": 0.0,
             "attr_weight": 0.0, "loc_weight": 0.0, "lm_weight": 0.0,
             "fusion": {"balance_coef": 0.0}, "context": {"weight": 0.0}}


def _configs(tmp: Path, out: Path, separable: bool = True, **optim: Any
             ) -> tuple[Path, TrainConfig]:
    model = yaml.safe_load((ROOT / "configs/model/tiny.yaml").read_text())["model"]
    for k, v in SEPARABLE.items() if separable else ():
        model[k] = {**model[k], **v} if isinstance(v, dict) else v
    (tmp / "model.yaml").write_text(yaml.safe_dump({"model": model}))
    body: dict[str, Any] = {"model_config": str(tmp / "model.yaml"),
            "synth_config": str(ROOT / "configs/synth/small.yaml"), "data_seed": 3,
            "train_cases": 8, "val_cases": 3, "max_emr_tokens": 256, "out": str(out),
            "optim": {**OPTIM, **optim}}
    (tmp / "train.yaml").write_text(yaml.safe_dump({"train": body}))
    return tmp / "train.yaml", TrainConfig(**body)


def _torchrun(config: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    # --standalone: a rendezvous store on localhost with a free port chosen by torchrun
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         str(nproc), "-m", "medassist.cli", "train", "--config", str(config),
         "--device", "cpu", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / WEIGHTS))


def _dist(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names: list[str]
          ) -> tuple[float, float]:
    """(L2 norm, max abs) of a - b over the named parameters."""
    d = [(a[k].double() - b[k].double()).reshape(-1) for k in names]
    flat = torch.cat(d)
    return float(flat.norm()), float(flat.abs().max())


def test_two_processes_match_one(tmp_path: Path) -> None:
    cfg_path, tc = _configs(tmp_path, tmp_path / "ddp")
    run = _torchrun(cfg_path)
    assert run.returncode == 0, run.stderr[-4000:]
    summary = json.loads(run.stdout)  # rank 0 alone prints it
    # (a) one checkpoint, from rank 0, of the finished run
    model, cfg, _kind, _tok, meta = load_checkpoint(tmp_path / "ddp")
    assert meta["step"] == 4 and meta["world_size"] == 2
    assert summary["world_size"] == 2 and summary["final"]["step"] == 4
    # sharded, not each rank on the whole batch: 4 steps x 2 micro-batches x 4 / 2 ranks
    assert summary["cases_this_rank"] == 4 * 2 * 4 // 2
    # (b) the ranks ended with identical weights and buffers (calibration included), and
    # they are the checkpoint's
    digests = summary["rank_digests"]
    assert len(digests) == 2 and digests[0] == digests[1] == state_digest(model)
    cal = summary["calibration"]
    assert meta["calibration"] == cal
    temp = float(model.get_submodule("findings").get_buffer("temperature"))
    assert temp == pytest.approx(cal["temperature"], abs=1e-4)

    # (c) the same global batch in one process
    single = train(replace(tc, out=str(tmp_path / "one")))
    w_ddp, w_one = _weights(tmp_path / "ddp"), _weights(tmp_path / "one")
    torch.manual_seed(OPTIM["seed"])
    net = build_model(cfg, "fusion")
    init, names = net.state_dict(), [n for n, _ in net.named_parameters()]
    moved, _ = _dist(w_one, init, names)
    diff, diff_max = _dist(w_ddp, w_one, names)
    # Not bit-identical: the all-reduce averages per-shard float32 means (another summation
    # order; each shard pads EMR to its own longest note), so gradients agree to ~1e-7
    # relative, and Adam turns rounding noise on parameters with a ~0 true gradient (e.g.
    # attention key biases) into small updates.  Measured: 8e-5 relative, 4e-5 at most per
    # element; the bounds: 1e-3 of the distance trained, a tenth of one Adam step (lr).
    assert diff < 1e-3 * moved and diff_max < 0.1 * OPTIM["lr"], (diff, moved, diff_max)
    for k in ("total", "presence"):
        assert summary["final"][k] == pytest.approx(single["final"][k], rel=1e-4)
    # the temperature is a grid search (steps of 2 %): at most one step apart
    assert cal["temperature"] == pytest.approx(single["calibration"]["temperature"], rel=0.021)
    # the bound separates: training on half the global batch per step (what a rank alone
    # would see) lands far away (measured: 0.4 of the distance trained)
    half = train(replace(tc, out=str(tmp_path / "half"), optim={**OPTIM, "batch_size": 2}))
    assert half["final"]["step"] == 4
    assert _dist(_weights(tmp_path / "half"), w_one, names)[0] > 0.1 * moved


def test_all_losses_ranks_in_sync_and_resume(tmp_path: Path) -> None:
    """The tiny config as it is (modality dropout drawn per rank, contrastive, MoE balance
    and attribute losses): the ranks stay identical, also across a resume (all ranks load)."""
    cfg_path, _tc = _configs(tmp_path, tmp_path / "ddp", separable=False)
    first = _torchrun(cfg_path, "--stop-after", "2")
    assert first.returncode == 0, first.stderr[-4000:]
    assert json.loads((tmp_path / "ddp" / "meta.json").read_text())["step"] == 2
    assert len(set(json.loads(first.stdout)["rank_digests"])) == 1
    run = _torchrun(cfg_path, "--resume")
    assert run.returncode == 0, run.stderr[-4000:]
    summary = json.loads(run.stdout)
    assert summary["final"]["step"] == 4 and summary["cases_this_rank"] == 2 * 2 * 4 // 2
    assert all(math.isfinite(v) for v in summary["final"].values())
    model, *_rest, meta = load_checkpoint(tmp_path / "ddp")
    assert meta["step"] == 4 and "calibration" in meta
    digests = summary["rank_digests"]
    assert len(digests) == 2 and digests[0] == digests[1] == state_digest(model)


def test_mean_of_shard_gradients(tiny_cfg: ModelConfig, tiny_records: list[Any]) -> None:
    """What DDP averages (the shards' gradients) is the batch gradient for the separable
    losses (measured 2e-7 apart), and is not once the per-positive, per-token and batch-level
    terms are on (measured 3e-2 apart)."""
    from medassist.model_data import build_tokenizer, record_sample

    tok = build_tokenizer(tiny_records, tiny_cfg.emr.vocab_size)
    samples = [record_sample(r, tiny_cfg, tok, 256) for r in tiny_records]
    no_drop = replace(tiny_cfg, gating=replace(tiny_cfg.gating, drop_emr=0.0, drop_ct=0.0))
    sep = replace(no_drop, fusion=replace(tiny_cfg.fusion, balance_coef=0.0), align_weight=0.0,
                  attr_weight=0.0, loc_weight=0.0, lm_weight=0.0,
                  context=replace(tiny_cfg.context, weight=0.0))
    gaps = []
    for cfg in (sep, no_drop):
        full = _grad(cfg, samples)
        mean = sum(_grad(cfg, [samples[i] for i in shard(range(len(samples)), World(r, 2))])
                   for r in range(2)) / 2
        gaps.append(float((full - mean).norm() / full.norm()))
    assert gaps[0] < 1e-5 and gaps[1] > 1e-3, gaps


def _grad(cfg: ModelConfig, batch: list[dict[str, Any]]) -> torch.Tensor:
    """Gradient of the total loss of ``batch`` (fresh seed-0 model, training mode)."""
    from multimodal.batching import collate
    from multimodal.training import WithLoss, collate_targets

    torch.manual_seed(0)
    model = build_model(cfg, "fusion")
    x, rep = collate(batch)
    WithLoss(model, cfg)(x, collate_targets(batch, rep))["total"].backward()
    return torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1)
                      for p in model.parameters()])


def test_batch_not_divisible_by_world_size(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    check_batch(4, World(1, 2))
    with pytest.raises(ModelConfigError, match=r"batch_size 5 is not divisible by the 2 "
                                               r".*multiple of 2"):
        check_batch(5, World(0, 2))
    # the command refuses before joining a process group (no peer needed, nothing written)
    _cfg, tc = _configs(tmp_path, tmp_path / "out", batch_size=3)
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ModelConfigError, match="not divisible"):
        train(tc)
    assert not (tmp_path / "out").exists()


def test_world_shards_and_seeds() -> None:
    assert env_world({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}) == (World(1, 2), 1)
    assert env_world({}) == (World(0, 1), 0)
    with pytest.raises(ModelConfigError, match="torchrun"):
        env_world({"WORLD_SIZE": "2", "RANK": "2"})
    idx = [7, 1, 5, 3, 0, 6]
    parts = [shard(idx, World(r, 3)) for r in range(3)]
    assert sorted(i for p in parts for i in p) == sorted(idx) and parts[1] == [1, 0]
    assert shard(idx, World()) == idx
    # rank 0 (and a single process) keeps the single-process seed; other ranks differ
    assert step_seed(2, 5, World(0, 2)) == 2 * 1_000_003 + 5 == step_seed(2, 5, World())
    assert step_seed(2, 5, World(1, 2)) != step_seed(2, 5, World(0, 2))


_RELEASE = """
import gc, sys, weakref
import torch
from multimodal.distributed import process_group, wrap
gc.disable()  # no automatic collection: only what process_group does
with process_group("cpu") as (world, dev):
    net = wrap(torch.nn.Linear(3, 3), torch.device(dev))
    net(torch.ones(2, 3)).sum().backward()
    ref = weakref.ref(net)
    del net
    held = ref() is not None  # DistributedDataParallel sits in a reference cycle
print(f"rank{world.rank} held={held} after={ref() is not None}", flush=True)
"""


def test_process_group_releases_ddp_before_exit(tmp_path: Path) -> None:
    """The process group is released when the block ends, not at interpreter exit: a
    DistributedDataParallel left in its reference cycle still held the group there, and the
    teardown of its threads at exit aborted a finished run now and then (exit -6,
    "terminate called without an active exception")."""
    script = tmp_path / "release.py"
    script.write_text(_RELEASE)
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", str(script)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = sorted(ln for ln in run.stdout.splitlines() if ln.startswith("rank"))
    # held inside the block (the cycle is real), gone once the block has ended
    assert lines == ["rank0 held=True after=False", "rank1 held=True after=False"], run.stdout
