"""Two CPU processes with B/2 images each must take exactly the step one process takes with B images."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from ddp_utils import assert_same_state, one_step
from selfsup_lab.methods import MethodContext
from selfsup_lab.methods.simclr import SimCLR, SimCLROptions
from selfsup_lab.models import build_backbone


def build_simclr():
    context = MethodContext(num_train=64, num_classes=4, batch_size=8, epochs=1, steps_per_epoch=1, image_size=16)
    return SimCLR(build_backbone("convnet"), SimCLROptions(proj_hidden=32, proj_dim=16), context)


def test_simclr_two_ranks_match_one_rank():
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    indices = torch.arange(8)
    single = one_step(build_simclr, views, indices, world=1)
    double = one_step(build_simclr, views, indices, world=2)
    assert_same_state(single["state"], double["state"])
    # and the step did something: weights moved away from initialisation
    torch.manual_seed(0)
    initial = build_simclr().state_dict()
    moved = max((single["state"][k] - initial[k]).abs().max().item() for k in initial if initial[k].is_floating_point())
    assert moved > 1e-4


def test_gather_without_process_group_is_identity():
    from selfsup_lab import distributed

    x = torch.randn(3, 2)
    assert distributed.gather(x) is x
    assert distributed.world_size() == 1 and distributed.rank() == 0


# --- the command line under torchrun: two CPU processes (gloo), end to end -----------------------------------

def torchrun(*args: str, out: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m selfsup_lab.cli train ...` on tiny synthetic data; a hang
    (a rank waiting for another that has gone) fails the test by its timeout."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "selfsup_lab.cli", "train", "--dataset", "synthetic:n=128,classes=4,size=16", "--batch-size", "32",
               "--backbone", "convnet", "--no-progress", "--no-figures", "--out", str(out), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_torchrun_trains_on_two_ranks_and_only_rank_0_reports(tmp_path):
    result = torchrun("--method", "excb", "--epochs", "2", out=tmp_path / "run")
    assert result.returncode == 0, result.stderr[-2000:]
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 2 and checkpoint["global_step"] == 2 * 128 // 32  # --batch-size is the global batch
    assert result.stdout.count("done: ") == 1
    assert result.stderr.count("warning: kNN takes k = 200") == 1  # not once per rank


def test_an_error_on_rank_0_alone_ends_every_rank(tmp_path):
    # Only rank 0 clears a replaced run's files: a figure it cannot delete stops rank 0 while rank 1 has gone on
    # to train and waits for it in the first all_gather. torchrun sees rank 0 exit and stops rank 1.
    (tmp_path / "run" / "figures" / "stuck.png").mkdir(parents=True)
    result = torchrun("--epochs", "1", "--overwrite", out=tmp_path / "run")
    assert result.returncode != 0
    assert result.stderr.count("error: cannot replace the run in") == 1 and "stuck.png cannot be deleted" in result.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
