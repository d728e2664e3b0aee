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


# --- joining the process group ------------------------------------------------------------------------------

def test_torchrun_processes_take_their_own_gpu_and_gloo_on_the_cpu(monkeypatch):
    import pytest
    import torch.distributed as dist

    from selfsup_lab import distributed
    from selfsup_lab.errors import UserError

    joined = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend: joined.append(backend))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with 2 GPUs, simulated
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: joined.append(device))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    # --device cpu on a GPU machine: gloo (NCCL reduces GPU tensors only)
    assert distributed.init_from_environment(torch.device("cpu")) == torch.device("cpu") and joined == ["gloo"]
    assert distributed.init_from_environment(torch.device("cuda")) == torch.device("cuda", 1)
    assert joined[1:] == [torch.device("cuda", 1), "nccl"]  # each rank its own GPU, not all on cuda:0
    with pytest.raises(UserError, match=r"--device cuda:0 would put them all on one; use --device cuda \(or auto\)"):
        distributed.init_from_environment(torch.device("cuda", 0))
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(UserError, match=r"more processes on this machine than the 2 GPU\(s\) visible; use "
                                        r"--nproc_per_node=2 \(or fewer\)"):
        distributed.init_from_environment(torch.device("cuda"))
    monkeypatch.setenv("WORLD_SIZE", "1")  # not under torchrun: the device as asked, no process group
    assert distributed.init_from_environment(torch.device("cuda", 0)) == torch.device("cuda", 0)
    assert len(joined) == 3


def _first_and_after(rank: int, world: int, port: int, folder: str) -> None:
    import time

    import torch.distributed as dist

    from selfsup_lab import distributed
    from selfsup_lab.errors import UserError

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    with distributed.main_process_first():
        if rank == 0:
            time.sleep(0.5)  # a slow download: rank 1 must not start before it ends
            Path(folder, "downloaded").write_text("done")
        else:
            Path(folder, "rank1-saw").write_text(str(Path(folder, "downloaded").exists()))
    try:  # a download that fails on rank 0: rank 1 neither waits forever nor tries it
        with distributed.main_process_first():
            Path(folder, f"rank{rank}-tried").write_text("")
            if rank == 0:
                raise UserError("no network")
    except UserError as err:
        Path(folder, f"rank{rank}-error").write_text(str(err))
    leave_process_group()


def test_the_main_process_runs_a_download_before_the_others():
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_first_and_after, args=(2, free_port(), folder), nprocs=2, join=True)
        assert Path(folder, "rank1-saw").read_text() == "True"
        assert Path(folder, "rank0-error").read_text() == "no network"
        assert Path(folder, "rank1-error").read_text().startswith("rank 0 failed to prepare the data set")
        assert not Path(folder, "rank1-tried").exists()


# --- the command line under torchrun: two CPU processes (gloo), end to end -----------------------------------

def torchrun(*args: str, out: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m selfsup_lab.cli train ...` on tiny synthetic data; a hang
    (a rank waiting for another that has gone) fails the test by its timeout."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "selfsup_lab.cli", "train", "--dataset", "synthetic:n=128,classes=4,size=16", "--batch-size", "32",
               "--backbone", "convnet", "--no-progress", "--no-figures", "--out", str(out), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_mistake_under_torchrun_is_one_sentence_once(tmp_path):
    result = torchrun("--set", "temperature=abc", out=tmp_path / "run")  # found on every rank, before they meet
    assert result.returncode != 0
    assert result.stderr.count("error: option 'temperature'") == 1, result.stderr[-2000:]
    # found by rank 0 while the others wait for it to load the data: they stop too, quietly
    result = torchrun("--dataset", "imagefolder:" + str(tmp_path / "missing"), out=tmp_path / "run")
    assert result.returncode != 0
    assert result.stderr.count("does not exist") == 1 and "[rank1]" not in result.stderr, result.stderr[-2000:]


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
    assert "interrupted" not in result.stderr  # rank 1, stopped by torchrun's SIGTERM, says nothing
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
