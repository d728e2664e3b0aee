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


def init_from_environment() -> bool:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); returns whether we did."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


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
        grad = grad.contiguous()
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
