"""Data-parallel training in processes started by ``torchrun`` (torch.distributed).

torchrun sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.  With
WORLD_SIZE > 1, :func:`process_group` joins the group (gloo on CPU; nccl on CUDA, device
``cuda:LOCAL_RANK``) and always leaves it.  Every rank runs the same step schedule and takes
its share of each step's global batch (:func:`shard`); DistributedDataParallel averages the
gradients, so the ranks keep identical weights (:func:`state_digest` checks that)."""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from multimodal.errors import ModelConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def env_world(env: Mapping[str, str] | None = None) -> tuple[World, int]:
    """(world, LOCAL_RANK) as torchrun describes them in the environment."""
    env = os.environ if env is None else env
    try:
        size, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise ModelConfigError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers ({exc}); "
                               "let torchrun set them") from exc
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ModelConfigError(f"bad torchrun environment WORLD_SIZE={size} RANK={rank} "
                               f"LOCAL_RANK={local}; let torchrun set them")
    return World(rank, size), local


def current_world() -> World:
    """The world of the joined process group (a single process when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


@contextmanager
def process_group(device: str) -> Iterator[tuple[World, str]]:
    """Join torchrun's process group for the block (nothing to do for a single process) and
    destroy it afterwards, also on error.  Yields the world and this rank's device."""
    world, local = env_world()
    if not world.distributed:
        yield world, device
        return
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if local >= torch.cuda.device_count():
            raise ModelConfigError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} "
                                   "CUDA devices; use --nproc_per_node <= the GPU count")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if cuda else "gloo", rank=world.rank, world_size=world.size)
    try:
        yield world, device
    finally:
        # DistributedDataParallel sits in a reference cycle (its hooks refer back to it), so
        # after the block its reducer may still hold the process group; collected only at
        # interpreter exit, the group's worker threads were torn down there and the process
        # aborted ("terminate called without an active exception", exit -6) now and then
        # after a finished run.  Collect it first, so that the group is released here.
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


def check_batch(batch_size: int, world: World) -> None:
    """The global batch is split evenly over the processes."""
    if batch_size % world.size:
        raise ModelConfigError(
            f"train.optim.batch_size {batch_size} is not divisible by the {world.size} "
            f"training processes: set batch_size to a multiple of {world.size} (the global "
            "batch is split evenly over the ranks) or choose --nproc_per_node dividing it")


def shard(indices: Sequence[int], world: World) -> list[int]:
    """This rank's share of a step's global batch (every ``size``-th sample from ``rank``)."""
    return list(indices[world.rank::world.size])


def step_seed(seed: int, step: int, world: World) -> int:
    """Torch seed of a training step: ``seed * 1_000_003 + step`` on rank 0 (as in a single
    process); other ranks add ``rank << 48``, so that the training-time randomness (modality
    dropout) is drawn independently per rank instead of repeating rank 0's draws."""
    return (seed * 1_000_003 + step + (world.rank << 48)) % (1 << 64)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over ``model`` (whose forward should return the losses).
    ``find_unused_parameters``: routed experts no token chose, paths of a modality absent
    from a shard and parameters that feed no loss get no gradient in some steps."""
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def no_sync(net: nn.Module, skip: bool) -> AbstractContextManager[Any]:
    """Skip the gradient all-reduce (micro-batches before the last one of a step)."""
    if skip and isinstance(net, DistributedDataParallel):
        return net.no_sync()
    return nullcontext()


def mean_over_ranks(values: Mapping[str, float], device: torch.device) -> dict[str, float]:
    """Mean of each value over the ranks (every rank gets the same result)."""
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, t.tolist(), strict=True)}


def from_rank0(model: nn.Module, obj: Any) -> Any:
    """Copy rank 0's buffers (e.g. the fitted calibration) into ``model`` on every rank;
    returns rank 0's ``obj``."""
    for b in model.buffers():
        dist.broadcast(b, src=0)
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_digests(model: nn.Module) -> list[str]:
    """:func:`state_digest` of the model on every rank (all equal when in sync)."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, state_digest(model))
    return [str(d) for d in out]


def state_digest(model: nn.Module) -> str:
    """SHA-256 of the model's state (parameters and buffers, by name)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def barrier(world: World) -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if world.distributed:
        dist.barrier()
