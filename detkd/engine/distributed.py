"""Distributed training under ``torchrun``: process group, rank facts, and the reductions KD needs.

detkd does not spawn workers itself: ``torchrun`` starts one process per device (on one node or many) and sets
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``. Each process builds its own frozen teacher (never wrapped in DDP), the
student is wrapped in DDP by Ultralytics' trainer, and the pieces outside the student that learn (the KD adapters
and method modules) have their gradients averaged here, the same way DDP averages the student's.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched() -> bool:
    """True in a process started by ``torchrun`` (or another launcher that sets the same variables) with >1 ranks."""
    return world_size() > 1 and "LOCAL_RANK" in os.environ


def is_main() -> bool:
    """True on rank 0 (and in a single process)."""
    return not launched() or rank() == 0


def is_local_main() -> bool:
    """True on the first rank of each node (``LOCAL_RANK`` 0), and in a single process."""
    return not launched() or local_rank() == 0


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def init(device: str | int | None) -> None:
    """Join the process group (NCCL on GPUs, gloo on CPU) when launched by ``torchrun``; a no-op otherwise."""
    if not launched() or active():
        return
    on_cpu = str(device).lower() == "cpu" or not torch.cuda.is_available()
    if not on_cpu:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(
        backend="gloo" if on_cpu else "nccl",
        timeout=datetime.timedelta(hours=3),
        rank=rank(),
        world_size=world_size(),
    )


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    if active():
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` unchanged without a process group)."""
    if not active():
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over ranks (what DDP does for the modules it wraps)."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers of ``module``."""
    if not active():
        return
    for t in (*module.parameters(), *module.buffers()):
        dist.broadcast(t.data, src=0)


def mean_over_ranks(values: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Each scalar of ``values`` averaged over ranks (same keys on every rank); unchanged without a process group."""
    keys = list(values)
    if not active() or not keys:
        return {k: torch.as_tensor(values[k]) for k in keys}
    device = next((v.device for v in values.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    vec = torch.stack([torch.as_tensor(values[k], dtype=torch.float64).to(device).reshape(()) for k in keys])
    dist.all_reduce(vec, op=dist.ReduceOp.SUM)
    vec /= dist.get_world_size()
    return {k: vec[i].float() for i, k in enumerate(keys)}


def pooled_means(sums: dict[str, float], counts: dict[str, int]) -> dict[str, float]:
    """Per key, the sum over ranks of ``sums`` divided by the sum over ranks of ``counts`` (keys missing on a rank
    count as zero there); keys with no count anywhere are left out. Every rank gets the same dict."""
    keys = set(sums)
    if active():
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, sorted(keys))
        keys = {k for ks in gathered for k in ks}
    order = sorted(keys)
    vec = torch.tensor([[sums.get(k, 0.0), float(counts.get(k, 0))] for k in order], dtype=torch.float64)
    if active() and order:
        if dist.get_backend() == "nccl":
            vec = vec.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(vec, op=dist.ReduceOp.SUM)
    return {k: float(vec[i, 0] / vec[i, 1]) for i, k in enumerate(order) if vec[i, 1] > 0}


def mean_tensor(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over ranks (a new tensor; ``t`` itself without a process group)."""
    if not active():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on any rank (so every rank takes the same decision)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


@contextlib.contextmanager
def ddp_without_device_ids() -> Iterator[None]:
    """Ultralytics wraps DDP with ``device_ids=[device.index]``, which torch refuses for CPU modules; on CPU (gloo)
    the wrap is made without device ids. Scoped to the trainer's setup."""
    original = nn.parallel.DistributedDataParallel

    class CPUDistributedDataParallel(original):  # type: ignore[misc, valid-type]
        def __init__(self, module: nn.Module, *args: Any, device_ids: Any = None, **kwargs: Any) -> None:
            super().__init__(module, *args, **kwargs)

    nn.parallel.DistributedDataParallel = CPUDistributedDataParallel  # type: ignore[misc]
    try:
        yield
    finally:
        nn.parallel.DistributedDataParallel = original  # type: ignore[misc]
