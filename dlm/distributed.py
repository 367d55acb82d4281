"""Several processes started by ``torchrun``: the process group, the device mesh, and sharded prompts.

``torchrun --nproc-per-node N`` starts N copies of a command and tells each its ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK``. The world is laid out as ``dp × ep × tp`` (tp fastest): consecutive ranks form one model
group of ``tensor_parallel × expert_parallel`` ranks sharing one model and the same prompts
(:mod:`dlm.models.parallel`: heads split over the ``tp`` ranks, routed experts over the ``ep`` slices), and the
groups split the prompts between them (data parallelism, :func:`shard`). Without torchrun the world is one
process and every helper here is the identity, so the single-process path never touches ``torch.distributed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch

from dlm.errors import CompositionError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place: global rank and size, and its data-, expert- and tensor-parallel coordinates."""

    rank: int = 0
    size: int = 1
    tp: int = 1  # ranks per tensor-parallel group
    ep: int = 1  # expert slices per model group

    @property
    def group(self) -> int:
        """Ranks per model group (one model, the same prompts): ``tp × ep`` consecutive ranks."""
        return self.tp * self.ep

    @property
    def dp_size(self) -> int:
        return self.size // self.group

    @property
    def dp_rank(self) -> int:
        return self.rank // self.group

    @property
    def ep_rank(self) -> int:
        return self.rank // self.tp % self.ep

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def main(self) -> bool:
        """The process that prints and writes files."""
        return self.rank == 0


def world(tp: int = 1, ep: int = 1) -> World:
    """The world torchrun describes in the environment (one process without it), with model groups of
    ``tp × ep`` ranks (``tensor_parallel``, ``expert_parallel``)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    n = tp * ep
    if size == 1 and n > 1:
        raise CompositionError(
            f"{group_settings(tp, ep)} needs {n} processes; launch with torchrun --nproc-per-node {n} "
            "$(which dlm) generate ..."
        )
    if size % n:
        raise CompositionError(
            f"{group_settings(tp, ep)} must divide the number of processes ({size}); launch with "
            f"torchrun --nproc-per-node {n} (or a multiple of it for data parallelism over model groups)"
        )
    return World(rank=rank, size=size, tp=tp, ep=ep)


def group_settings(tp: int, ep: int) -> str:
    """The settings that size a model group, as a user wrote them: ``tensor_parallel: 2 × expert_parallel: 2``."""
    parts = [f"{name}: {n}" for name, n in (("tensor_parallel", tp), ("expert_parallel", ep)) if n > 1]
    parts = parts or ["tensor_parallel: 1"]
    return " × ".join(parts) + (f" ({tp * ep} ranks per model)" if len(parts) > 1 else "")


def local_device(device: torch.device) -> torch.device:
    """A bare ``cuda`` becomes this process's own GPU (``cuda:LOCAL_RANK``) when several processes run."""
    if device.type == "cuda" and device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init(device: torch.device) -> bool:
    """Join the process group (gloo on CPU, nccl on CUDA) when started by torchrun; True when distributed."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_device(device))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def shard(items: Sequence[T], w: World) -> list[T]:
    """This data-parallel group's share of ``items``: every ``dp_size``-th one, from ``dp_rank`` on."""
    return list(items[w.dp_rank :: w.dp_size])


def unshard(per_group: Sequence[Sequence[T]]) -> list[T]:
    """Undo :func:`shard`: the groups' shares (in group order) back in the original order."""
    out: list[T] = []
    longest = max((len(s) for s in per_group), default=0)
    for i in range(longest):
        out.extend(s[i] for s in per_group if i < len(s))
    return out


def _collective_device() -> torch.device:
    """Where collectives' tensors must live: this process's GPU under NCCL, else the CPU (gloo)."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_ints(values: Sequence[int], w: World, device: torch.device | None = None) -> list[list[int]]:
    """Every data-parallel group's list of integers (each model group's first rank speaks for it), in group order.

    Moves plain integers as tensors (no pickling): lengths first, then the padded values.
    """
    import torch.distributed as dist

    if w.size == 1:
        return [list(values)]
    device = device or _collective_device()
    mine = torch.tensor(list(values), dtype=torch.long, device=device)
    lengths = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(w.size)]
    dist.all_gather(lengths, torch.tensor([len(mine)], dtype=torch.long, device=device))
    longest = max(int(n) for n in lengths)
    padded = torch.zeros(longest, dtype=torch.long, device=device)
    padded[: len(mine)] = mine
    parts = [torch.zeros(longest, dtype=torch.long, device=device) for _ in range(w.size)]
    dist.all_gather(parts, padded)
    return [parts[r][: int(lengths[r])].tolist() for r in range(0, w.size, w.group)]


def gather_floats(values: Sequence[float], w: World, device: torch.device | None = None) -> list[list[float]]:
    """As :func:`gather_ints`, for float64 values."""
    import torch.distributed as dist

    if w.size == 1:
        return [list(values)]
    device = device or _collective_device()
    n = len(values)
    counts = gather_ints([n], w, device)
    longest = max(c[0] for c in counts)
    padded = torch.zeros(longest, dtype=torch.float64, device=device)
    padded[:n] = torch.tensor(list(values), dtype=torch.float64, device=device)
    parts = [torch.zeros(longest, dtype=torch.float64, device=device) for _ in range(w.size)]
    dist.all_gather(parts, padded)
    return [parts[r][: counts[r // w.group][0]].tolist() for r in range(0, w.size, w.group)]
