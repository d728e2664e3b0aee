"""Cross-sample statistics under torchrun / DDP, in one small place.

Self-supervised losses are *batch* losses: SimCLR's negatives, SwAV's column sums, CoKe's cluster counts
and ExCB's size estimate all look across the whole batch. When the batch is split over several processes,
each of those statistics has to be computed over the *global* batch, or two GPUs of 256 images silently
train a different model than one GPU of 512. Methods therefore never call `torch.distributed` themselves;
they call the three helpers below, which are the identity in a single process:

* `gather(x)`     — concatenate `x` from all ranks (rank order), gradient flowing back to every rank's part;
* `all_reduce_sum(x)` — sum a statistic (counts, column sums) over ranks, no gradient;
* `average_gradients(module)` — after `backward()`, average parameter gradients over ranks.

The trainer uses one more, `mean_over_ranks`, so that the numbers it logs (each step's, and so each epoch's)
are the global batch's.

Convention: each rank's loss is the mean over *its* anchors; with equal local batches, averaging the
gradients over ranks then equals the gradient of the mean over the global batch.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def launched_rank() -> int:
    """This process's rank as torchrun set it, known before (or without) the process group: who may print."""
    return int(os.environ.get("RANK", "0"))


def init_from_environment(device: torch.device) -> torch.device:
    """Join the process group when started by torchrun (WORLD_SIZE > 1) and return the device this process
    trains on: on GPUs each process takes the one of its LOCAL_RANK and reduces over NCCL; on the CPU, gloo."""
    from .errors import UserError

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes <= 1:
        return device
    if device.type == "cuda":
        if device.index is not None:
            raise UserError(f"under torchrun every process takes the GPU of its LOCAL_RANK, so --device {device} "
                            f"would put them all on one; use --device cuda (or auto)")
        local_rank, visible = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local_rank >= visible:
            raise UserError(f"torchrun started more processes on this machine than the {visible} GPU(s) visible; "
                            f"use --nproc_per_node={visible} (or fewer)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not is_distributed():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def leave_process_group(together: bool = True) -> None:
    """Destroy the process group. `together`: every rank calls this at the same point (a finished command), so
    wait for all first, twice: on torch < 2.8 gloo's destructor holds the GIL while its worker thread frees the
    last collective's tensors, which needs the GIL (a hang in about 1 run in 6 on torch 2.3 when that collective
    was a training step's all_gather); after an extra barrier it holds no tensor of ours. A rank that failed or
    was interrupted leaves at once: the others may be gone, or waiting in a collective that a barrier would be
    mistaken for (torchrun stops them)."""
    if together:
        dist.barrier()
        dist.barrier()
    dist.destroy_process_group()


@contextlib.contextmanager
def main_process_first(device: torch.device | str = "cpu"):
    """Rank 0 runs the block first and the other ranks after it: a download, or a cache written once and then
    read, rather than every rank writing the same files at once. If the block fails on rank 0 (a missing path,
    no network), the other ranks do not run it but stop with a `UserError` of their own, and rank 0's says why.
    `device`: where the process group can send a tensor (this rank's GPU under NCCL)."""
    from .errors import UserError

    if not is_distributed():
        yield
        return
    rank_0_succeeded = torch.zeros(1, device=device)
    if is_main_process():
        try:
            yield
        except BaseException:
            dist.broadcast(rank_0_succeeded, src=0)  # 0: the others must not wait for a download that failed
            raise
        dist.broadcast(rank_0_succeeded.fill_(1), src=0)
    else:
        dist.broadcast(rank_0_succeeded, src=0)
        if not rank_0_succeeded.item():
            raise UserError("rank 0 failed to prepare the data set (its own message says why), so this rank stops")
        yield


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over ranks and keeps this rank's slice.

    Every rank's loss uses every rank's embeddings, so the gradient reaching my embeddings is the sum of
    what all ranks' losses send back — an all_reduce of the full gradient, then my slice of it.
    (Written out rather than torch.distributed.nn.all_gather so it runs on the CPU `gloo` backend too.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.batch = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # autograd's own tensor is not ours to reduce into
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` over ranks (dim 0, rank order); gradients flow back to each rank's own rows."""
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` over ranks for statistics that need no gradient (labels, indices, assignments)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum a statistic over ranks (returns a new tensor; the input is left untouched)."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x


def mean_over_ranks(values: dict[str, float], device: torch.device | str = "cpu") -> dict[str, float]:
    """Each number's mean over ranks (every rank holds the same keys). A step's logged loss and rates are
    means over the local batch; with equal local batches, their mean over ranks is the global batch's mean.
    `device` is where NCCL can reduce (the rank's GPU)."""
    if world_size() == 1:
        return values
    keys = sorted(values)
    totals = all_reduce_sum(torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device))
    return dict(zip(keys, (totals / world_size()).tolist()))


def global_offset(local_batch: int) -> int:
    """Index of this rank's first sample in the gathered (global) batch."""
    return rank() * local_batch


@torch.no_grad()
def average_gradients(module: torch.nn.Module) -> None:
    """Average `.grad` of every parameter over ranks (what DDP does, without its bucketing/overlap)."""
    if world_size() == 1:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size()


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers from rank `src` so every rank starts identical."""
    if world_size() == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)
