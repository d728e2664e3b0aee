"""Run one training step on W CPU processes (gloo) and return the resulting state dict.

Used by the per-method tests: one step on two ranks with B/2 images each must give the same weights and
buffers as one step on one rank with all B images — the check that every cross-sample statistic goes
through `selfsup_lab.distributed`.
"""
from __future__ import annotations

import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_step(rank: int, world: int, port: int, build, views, indices, result_path: str, lr: float):
    from selfsup_lab import distributed
    from selfsup_lab.models import convert_sync_batchnorm

    if world > 1:
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    method = build()
    if world > 1:
        method = convert_sync_batchnorm(method)
    method.train()
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    local = views[0].shape[0] // world
    part = slice(rank * local, (rank + 1) * local)
    out = method.training_step([v[part] for v in views], indices[part])
    optimizer.zero_grad()
    out.loss.backward()
    distributed.average_gradients(method)
    optimizer.step()
    method.after_optimizer_step(0.5)
    gathered = {key: distributed.gather_no_grad(getattr(out, key)) if getattr(out, key) is not None else None
                for key in ("assignments", "assignments_without_rule")}
    # What the trainer logs for the epoch: each rank's local-batch means, averaged over ranks
    logs = distributed.mean_over_ranks({"loss": out.loss.item(), **{k: float(v) for k, v in out.logs.items()}})
    if rank == 0:
        state = {k: v.detach().clone() for k, v in method.state_dict().items()}
        torch.save({"state": state, "loss": out.loss.detach(), "logs": logs, **gathered}, result_path)
    if world > 1:
        leave_process_group()


def leave_process_group() -> None:
    """Wait for every rank, then destroy the gloo group, as the command line does at its end (the two barriers
    keep torch < 2.8 from hanging in gloo's destructor: see `distributed.leave_process_group`)."""
    from selfsup_lab import distributed

    distributed.leave_process_group(together=True)


def one_step(build, views, indices, world: int, lr: float = 0.1) -> dict:
    """State dict (with rank 0's loss, and the step's logs averaged over ranks) after one step on `world`
    processes; `build()` makes the method."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "result.pt")
        if world == 1:
            _one_step(0, 1, 0, build, views, indices, path, lr)
        else:
            mp.spawn(_one_step, args=(world, free_port(), build, views, indices, path, lr), nprocs=world, join=True)
        return torch.load(path, weights_only=False)


def assert_same_state(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        if x.dtype.is_floating_point:
            assert torch.allclose(x, y, atol=atol, rtol=1e-4), f"{key}: max diff {(x - y).abs().max().item():.2e}"
        else:
            assert torch.equal(x, y), f"{key} differs"
