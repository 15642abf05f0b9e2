"""Private: device selection and the torchrun process group, one copy for every command.

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; a plain process is rank 0 of 1. Each
rank uses the CUDA device of its local rank, and a process group is created only where there is
more than one rank and none exists yet -- and then destroyed by whoever created it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lscindex.errors import ConfigError

__all__ = ["Ranks", "process_group", "ranks", "select_device"]


@dataclass(frozen=True)
class Ranks:
    """Where this process sits in a torchrun job (``world == 1``: a plain process)."""

    world: int
    rank: int
    local_rank: int


def ranks() -> Ranks:
    """This process's ranks, from torchrun's environment variables."""
    env = os.environ
    return Ranks(
        world=int(env.get("WORLD_SIZE", "1")),
        rank=int(env.get("RANK", "0")),
        local_rank=int(env.get("LOCAL_RANK", "0")),
    )


def select_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """The device for ``name`` ("auto", "cpu", "cuda" or "cuda:N") on this rank.

    "auto" and "cuda" take the CUDA device of the local rank; "auto" falls back to the CPU.

    Raises:
        ConfigError: CUDA asked for where none is available.
    """
    if local_rank is None:
        local_rank = ranks().local_rank
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {name!r} requested but no CUDA device is available; use --device cpu"
            )
        if name != "cuda" and not name.removeprefix("cuda:").isdigit():
            raise ConfigError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")
        return torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device(name)
    if name != "cpu":
        raise ConfigError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")
    return torch.device("cpu")


@contextmanager
def process_group(device: torch.device, *, backend: str | None = None) -> Iterator[Ranks]:
    """Run the body inside the job's process group, creating (and then destroying) it if needed.

    Args:
        device: this rank's device; picks the backend (NCCL for CUDA, else gloo) unless
            ``backend`` is given.
    """
    here = ranks()
    created = False
    if here.world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend or ("nccl" if device.type == "cuda" else "gloo"))
        created = True
    try:
        yield here
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()
