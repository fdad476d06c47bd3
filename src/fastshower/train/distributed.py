"""Data-parallel set-up with torch.distributed, started by ``torchrun`` (no launcher of our own).

``torchrun`` exports ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init` reads them and joins the process group (NCCL when the run is on CUDA, gloo on CPU).
Without them the run is a single process and every helper here is a no-op.

Learning-rate rules: the recipe's rates are used as given (``none``, the default: neither original
scales them with the batch); ``workers`` multiplies them by the number of ranks (the Horovod
``EcalEnergyTrain_hvd.py`` runs), ``linear`` by global batch / reference batch; a linear warm-up
ramps that multiplier from 1 to its full value over the first ``warmup`` steps.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init(device_preference: str) -> DistInfo:
    """Join the torchrun process group if there is one; pick this rank's device."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo(0, 1, 0, resolve_device(device_preference))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, device)


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def mean_over_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average each value over the ranks (float64 all-reduce)."""
    if not info.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64,
                     device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return {k: float(v) / info.world for k, v in zip(keys, t.tolist())}


def gather_to_main(obj: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (a list in rank order), None elsewhere."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any, info: DistInfo) -> Any:
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if ``flag`` is true on any rank."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def lr_scale(global_batch: int, reference_batch: int, mode: str, world: int = 1) -> float:
    """Learning-rate multiplier: 1 (``none``), the number of ranks (``workers``, the Horovod rule of
    ``EcalEnergyTrain_hvd.py``) or global batch / reference batch (``linear``)."""
    if mode == "linear":
        return global_batch / reference_batch
    return float(world) if mode == "workers" else 1.0


def lr_factor(step: int, reference_steps: float, scale: float, warmup_steps: int, decay_rate: float,
              decay_start: float) -> float:
    """Multiplier of the recipe learning rate after ``step`` global steps, i.e. ``reference_steps``
    steps of the recipe's reference batch (samples seen / reference batch): the scale, reached
    linearly from 1 over ``warmup_steps``, times exp(-rate (reference_steps - start)) once
    ``reference_steps`` passes ``decay_start``. Counted over the whole run, never reset."""
    warm = scale if warmup_steps <= 0 or step >= warmup_steps else 1.0 + (scale - 1.0) * step / warmup_steps
    decay = (math.exp(-decay_rate * (reference_steps - decay_start))
             if decay_rate > 0 and reference_steps > decay_start else 1.0)
    return warm * decay
