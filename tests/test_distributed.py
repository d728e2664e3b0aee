"""Two CPU processes with B/2 images each must take exactly the step one process takes with B images."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from ddp_utils import assert_same_state, free_port, leave_process_group, one_step
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
    # The logged numbers averaged over ranks (what the trainer records per epoch) are one rank's with all B
    # images, not rank 0's half
    assert single["logs"].keys() == double["logs"].keys() == {"loss", "pos_top1", "pos_top5"}
    for key, value in single["logs"].items():
        assert abs(double["logs"][key] - value) < 1e-5, (key, double["logs"][key], value)
    assert abs(double["loss"].item() - single["loss"].item()) > 1e-4  # rank 0's own half differs: averaging matters


def _train_and_record(rank: int, world: int, port: int, out: str, result_dir: str):
    import torch.distributed as dist

    from selfsup_lab.api import make_config
    from selfsup_lab.train import Callback, Trainer

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    seen = {"local": [], "steps": [], "records": []}

    class Record(Callback):
        def on_step_end(self, trainer, logs):
            seen["steps"].append((trainer.epoch, logs["loss"]))

        def on_epoch_end(self, trainer, record):
            seen["records"].append(record["loss"])

    config = make_config("simclr", "synthetic:n=64,classes=4,size=16", epochs=2, batch_size=16, backbone="convnet",
                         out=out, progress=False, figures=False, eval_every=0, proj_hidden=32, proj_dim=16)
    trainer = Trainer(config, callbacks=[Record()])
    training_step = trainer.method.training_step

    def record_local_loss(views, indices):  # the loss over this rank's own half of the batch
        step = training_step(views, indices)
        seen["local"].append(step.loss.item())
        return step

    trainer.method.training_step = record_local_loss
    trainer.fit()
    torch.save(seen, os.path.join(result_dir, f"rank{rank}.pt"))
    leave_process_group()


def test_the_trainer_logs_the_global_batchs_loss_on_every_rank(tmp_path):
    # Each rank's steps see its own half of the batch; the loss a callback sees each step (the progress bar's)
    # and the epoch's record are the means over both halves, the same on every rank.
    import torch.multiprocessing as mp

    mp.spawn(_train_and_record, args=(2, free_port(), str(tmp_path / "run"), str(tmp_path)), nprocs=2, join=True)
    seen = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert len(seen[0]["local"]) == len(seen[1]["steps"]) == 8  # 2 epochs of 64/16 steps
    assert max(abs(a - b) for a, b in zip(seen[0]["local"], seen[1]["local"])) > 1e-4  # the halves differ
    for s in seen:
        for (_, logged), local0, local1 in zip(s["steps"], seen[0]["local"], seen[1]["local"]):
            assert abs(logged - (local0 + local1) / 2) < 1e-6
        for epoch in range(2):
            step_losses = [loss for e, loss in s["steps"] if e == epoch]
            assert abs(s["records"][epoch] - sum(step_losses) / len(step_losses)) < 1e-6


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
