"""Spreading sampling work over the processes of a ``torchrun`` job (``torch.distributed``).

The sampler splits its ``checkpoints × chains`` parameter sets into contiguous shares, one per
rank, runs each share on its rank's device and gathers the recorded draws on every rank.
Because each chain's random stream derives from ``(seed, checkpoint, chain)`` and never from
the rank (:func:`stagewise.sampling.chain_seed`), the gathered result equals that of a single
process with the same seed.  Outside a ``torch.distributed`` job everything here is a no-op
for one process.

A script started by ``torchrun`` needs no set-up of its own: the first sampling call joins the
job from the environment (:func:`join_from_environment`, gloo) when no process group exists.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

import torch
import torch.distributed as dist


def rank_and_size() -> tuple[int, int]:
    """``(rank, world size)`` of the current ``torch.distributed`` job, ``(0, 1)`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def share(count: int, rank: int, size: int) -> range:
    """The contiguous share of ``range(count)`` that ``rank`` of ``size`` works on (sizes differ
    by at most one; a rank may get nothing when ``count < size``)."""
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} outside a world of size {size}")
    base, extra = divmod(count, size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def all_gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (any picklable object; tensors should be on the CPU), in rank order."""
    rank, size = rank_and_size()
    if size == 1:
        return [value]
    gathered: list[Any] = [None] * size
    dist.all_gather_object(gathered, value)
    return gathered


def init_from_environment() -> torch.device:
    """Join the ``torchrun`` job described by the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``) and return this rank's device: ``cuda:LOCAL_RANK`` with the NCCL backend
    when GPUs are present, else the CPU with gloo.  Without ``torchrun`` variables it joins
    nothing and returns ``cuda`` or ``cpu``."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ or (dist.is_available() and dist.is_initialized()):
        if cuda and dist.is_available() and dist.is_initialized():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cuda" if cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return torch.device("cuda", local_rank)
    dist.init_process_group("gloo")
    return torch.device("cpu")


def join_from_environment() -> bool:
    """Join the ``torchrun`` job described by the environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``) when one is described, has more than one process and no
    process group exists yet; returns whether a multi-process group is now available.

    The group uses the gloo backend whatever the sampling device, since the sampler exchanges
    only its recorded draws, on the CPU, once per call; a group the user initialised (NCCL or
    gloo) is used as it is.
    """
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist.init_process_group("gloo")
    atexit.register(_leave)
    return True


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
