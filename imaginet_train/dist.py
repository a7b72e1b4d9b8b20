"""Process-group plumbing: init, barriers and a differentiable all-gather.

The torchrun environment is read by `imaginet_shards.env.DistEnv`, the one detector shared with the
loaders.

One code path for one process, CPU tests (`torchrun --nproc_per_node=2`, gloo) and GPU clusters (nccl):
`init_distributed()` starts a process group only when WORLD_SIZE > 1.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from imaginet_shards.env import DistEnv, device_for

__all__ = ["DistEnv", "device_for", "init_distributed", "cleanup", "barrier", "is_main", "group_size",
           "group_rank", "all_gather_sizes", "all_gather_with_grad"]


def init_distributed(env: DistEnv | None = None, *, timeout: timedelta = timedelta(minutes=30)) -> DistEnv:
    """Start the process group when WORLD_SIZE > 1 (nccl with CUDA, gloo without); return the env.

    Rendezvous uses torchrun's MASTER_ADDR / MASTER_PORT (`env://`). A no-op for a single process or
    when a group already exists.
    """
    env = DistEnv.from_env() if env is None else env
    if not env.distributed or dist.is_initialized():
        return env
    device = device_for(env)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=env.rank, world_size=env.world_size, timeout=timeout,
                                device_id=device)
    else:
        dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size, timeout=timeout)
    return env


def cleanup() -> None:
    """Destroy the process group if one exists."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op for a single process)."""
    if dist.is_initialized():
        dist.barrier()


def is_main() -> bool:
    """True on global rank 0: of the process group when there is one, else of the environment."""
    return group_rank() == 0 if dist.is_initialized() else DistEnv.from_env().is_main


def group_size() -> int:
    """Size of the current process group (1 without one)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def group_rank() -> int:
    """Rank in the current process group (0 without one)."""
    return dist.get_rank() if dist.is_initialized() else 0


def all_gather_sizes(n: int, device: torch.device) -> list[int]:
    """Every rank's `n` (e.g. its batch size), in rank order."""
    if group_size() == 1:
        return [n]
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(group_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.int64, device=device))
    return [int(s.item()) for s in sizes]


def all_gather_with_grad(tensor: Tensor, sizes: Sequence[int] | None = None) -> Tensor:
    """Concatenate every rank's `tensor` along dim 0 in rank order, differentiably.

    Ranks may hold different numbers of rows (`sizes`, from `all_gather_sizes`; gathered when None).
    Backward all-reduces (sums) the gradient of the gathered tensor and returns this rank's rows: every
    rank's loss may depend on every rank's rows, so each rank's inputs receive the gradient of the
    *sum* of all ranks' losses. Works for any dtype; gradients flow for floating tensors.
    """
    if group_size() == 1:
        return tensor
    if sizes is None:
        sizes = all_gather_sizes(tensor.shape[0], tensor.device)
    if len(sizes) != group_size() or sizes[group_rank()] != tensor.shape[0]:
        raise ValueError(f"sizes {list(sizes)} do not match world size {group_size()} and this rank's "
                         f"{tensor.shape[0]} rows")
    return _AllGatherWithGrad.apply(tensor, tuple(sizes))


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor, sizes: tuple[int, ...]) -> Tensor:
        ctx.sizes = sizes
        longest = max(sizes)
        padded = tensor.contiguous()
        if tensor.shape[0] < longest:
            padded = tensor.new_zeros((longest, *tensor.shape[1:]))
            padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: dist.get_rank()])
        return grad[start: start + ctx.sizes[dist.get_rank()]], None
