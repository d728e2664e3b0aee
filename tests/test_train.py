"""The trainer: resume reproduces an uninterrupted run, NaN stops cleanly, checkpoints are atomic."""
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import selfsup_lab
from selfsup_lab.errors import TrainingDiverged, UserError
from selfsup_lab.train import CHECKPOINT, Callback, LARS, learning_rate

QUICK = dict(dataset="synthetic:n=96,classes=3,size=16", batch_size=32, backbone="convnet", device="cpu",
             progress=False, figures=False, proj_hidden=64, proj_dim=32)


class InterruptAt(Callback):
    """Simulates Ctrl-C in the middle of an epoch."""

    def __init__(self, epoch, step):
        self.epoch, self.step, self.seen = epoch, step, 0

    def on_step_end(self, trainer, logs):
        if trainer.epoch == self.epoch:
            self.seen += 1
            if self.seen == self.step:
                raise KeyboardInterrupt


def test_interrupted_and_resumed_run_reproduces_uninterrupted_weights(tmp_path):
    full = selfsup_lab.train("simclr", epochs=3, out=str(tmp_path / "full"), **QUICK)
    with pytest.raises(KeyboardInterrupt):
        selfsup_lab.train("simclr", epochs=3, out=str(tmp_path / "cut"), callbacks=[InterruptAt(epoch=1, step=2)], **QUICK)
    saved = torch.load(tmp_path / "cut" / CHECKPOINT, weights_only=False)
    assert saved["epoch"] == 1  # the epoch in progress was not checkpointed
    resumed = selfsup_lab.train("simclr", epochs=3, out=str(tmp_path / "cut"), resume=True, **QUICK)
    a, b = full.method.state_dict(), resumed.method.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    history = [json.loads(line) for line in (tmp_path / "cut" / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    def without_timing(records):
        return [{k: v for k, v in r.items() if k != "views_per_s"} for r in records]

    assert without_timing(history) == without_timing(json.loads(json.dumps(full.history)))


def test_the_method_hears_the_training_progress_after_every_step_up_to_one(tmp_path, monkeypatch):
    """EMA teachers (BYOL, ExCB) follow cosine_momentum(progress): it must reach 1 at the last step, not lag."""
    from selfsup_lab.methods.simclr import SimCLR

    heard = []
    monkeypatch.setattr(SimCLR, "after_optimizer_step", lambda self, progress: heard.append(progress))
    run = selfsup_lab.train("simclr", epochs=2, out=str(tmp_path), **QUICK)
    steps = run.trainer.total_steps
    assert steps >= 4 and heard == pytest.approx([(i + 1) / steps for i in range(steps)])


def test_run_directory_contents_and_metrics(tmp_path):
    run = selfsup_lab.train("simclr", epochs=2, out=str(tmp_path / "r"), **{**QUICK, "figures": True})
    out = tmp_path / "r"
    for name in ("config.json", "history.jsonl", "metrics.json", CHECKPOINT, "figures/training_curves.png",
                 "figures/embedding_tsne.png"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("knn_top1", "linear_top1", "nmi", "ari", "acc"):
        assert 0.0 <= metrics[key] <= 1.0 or key == "ari"
    record = run.history[-1]
    assert {"epoch", "loss", "lr", "views_per_s", "pos_top1"} <= record.keys()
    features, labels = run.embed("test")
    assert features.shape[0] == labels.shape[0] and features.ndim == 2
    assert run.assign("test") is None  # SimCLR has no clusters


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(tmp_path):
    class Poison(Callback):
        def on_epoch_end(self, trainer, record):
            if trainer.epoch == 1:
                with torch.no_grad():
                    for p in trainer.method.projector.parameters():
                        p.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 1.*checkpoint of epoch 1 is kept.*if that diverges "
                                               r"again, the checkpoint's weights have blown up too: start again with "
                                               r"--overwrite"):
        selfsup_lab.train("simclr", epochs=3, out=str(tmp_path / "nan"), callbacks=[Poison()], **QUICK)
    saved = torch.load(tmp_path / "nan" / CHECKPOINT, weights_only=False)
    assert saved["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["method"].values() if v.is_floating_point())
    assert not (tmp_path / "nan" / "metrics.json").exists()


def test_non_finite_weights_behind_a_finite_loss_are_not_checkpointed(tmp_path):
    """A batch norm's running variance can overflow while the training loss (batch statistics) stays finite;
    the epoch must then stop like a NaN loss instead of saving weights that evaluate to garbage."""
    class PoisonRunningVariance(Callback):
        def on_step_end(self, trainer, logs):
            if trainer.epoch == 1:  # during epoch 2
                bn = next(m for m in trainer.method.modules() if isinstance(m, torch.nn.BatchNorm2d))
                bn.running_var.fill_(float("inf"))

    with pytest.raises(TrainingDiverged, match=r"buffer backbone\..*running_var became NaN or infinite during epoch 2"
                                               r".*checkpoint of epoch 1 is kept"):
        selfsup_lab.train("simclr", epochs=3, out=str(tmp_path / "inf"), callbacks=[PoisonRunningVariance()], **QUICK)
    saved = torch.load(tmp_path / "inf" / CHECKPOINT, weights_only=False)
    assert saved["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["method"].values() if v.is_floating_point())


def test_stop_request_keeps_checkpoint_and_skips_metrics(tmp_path):
    class StopAfterFirstEpoch(Callback):
        def on_epoch_end(self, trainer, record):
            trainer.request_stop()

    run = selfsup_lab.train("simclr", epochs=3, out=str(tmp_path / "s"), callbacks=[StopAfterFirstEpoch()], **QUICK)
    assert run.status == "stopped after epoch 1"
    assert not (tmp_path / "s" / "metrics.json").exists()
    reopened = selfsup_lab.load_run(tmp_path / "s", device="cpu")
    assert reopened.trainer.epoch == 1


def test_unknown_method_option_is_one_clear_sentence(tmp_path):
    with pytest.raises(UserError, match="unknown option 'temprature' for simclr; valid options: temperature"):
        selfsup_lab.train("simclr", temprature=0.1, **{**QUICK, "out": str(tmp_path)})


@pytest.mark.parametrize("setting, message", [
    ({"lr": 0.0}, "--lr must be above 0, got 0.0"),
    ({"weight_decay": -1e-4}, "--weight-decay must be 0 or more"),
    ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
    ({"train_subset": 1}, "--train-subset must be 2 or more images"),
    ({"knn_temperature": 0}, "knn_temperature must be above 0"),
    ({"crop_scale": (0.0, 1.0)}, r"--crop-scale must be two fractions of the image area in \(0, 1\]"),
    ({"crop_scale": (0.6, 0.3)}, "--crop-scale takes two numbers LOW HIGH with LOW <= HIGH"),
    ({"temperature": 0}, "option 'temperature' of simclr must be above 0, got 0"),
    ({"proj_dim": 0}, "option 'proj_dim' of simclr must be 1 or more"),
    ({"temperature": float("inf")}, "option 'temperature' of simclr must be above 0, got inf"),
    ({"lr": float("inf")}, "--lr must be above 0, got inf"),
    ({"epochs": 2.5}, "--epochs must be a whole number, got 2.5"),
    ({"batch_size": "64"}, "--batch-size must be a whole number, got '64'"),
    ({"lr": "0.1"}, "--lr must be a number, got '0.1'"),
    ({"weight_decay": True}, "--weight-decay must be a number, got True"),
    ({"amp": "no"}, "amp must be True or False"),
    ({"method_options": "temperature=0.5"}, "method_options must be a dict such as"),
    ({"seed": 1_700_000_000_000}, r"--seed must be between 0 and 4294967295 \(2\*\*32 − 1\), got 1700000000000"),
    ({"seed": -1}, "--seed must be between 0 and 4294967295"),
    ({"dataset": "synthetic:n=96,classes=3,size=4"}, "the convnet backbone needs images of at least 8×8 pixels"),
    ({"epochs": 3, "warmup_epochs": 5}, r"--warmup-epochs \(5\) must not exceed the epochs \(3\)"),
])
def test_settings_out_of_range_are_one_clear_sentence(tmp_path, setting, message):
    with pytest.raises(UserError, match=message):
        selfsup_lab.train("simclr", **{**QUICK, "out": str(tmp_path), **setting})
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("method, option, value, message", [
    ("excb", "size_momentum", 1.5, r"in \[0, 1\]"),
    ("coke", "num_clusters", (10, 1), "2 or more, got \\(10, 1\\)"),  # every head's K is checked
    ("swav", "epsilon", 0.0, "above 0"),
    ("gsimclr", "num_pseudo", 1, "2 or more"),
])
def test_method_options_out_of_range_are_refused(tmp_path, method, option, value, message):
    with pytest.raises(UserError, match=f"option '{option}' of {method} must be {message}"):
        selfsup_lab.train(method, **{**QUICK, "out": str(tmp_path), option: value})


@pytest.mark.parametrize("method, option, value, message", [
    ("simclr", "temperature", [0.5], r"expects float, got \[0.5\]"),
    ("simclr", "one_pass", 1, "expects bool, got 1"),
    ("coke", "num_clusters", (), r"expects one or more values, got \(\)"),
    ("coke", "num_clusters", "", "needs one or more values, e.g. num_clusters=10,20"),  # --set num_clusters=
    ("deepcluster", "num_prototypes", [10, 2.5], "expects int, got 2.5"),
    ("triplet", "deputy", 3, "expects str, got 3"),
])
def test_method_options_of_the_wrong_type_are_refused(tmp_path, method, option, value, message):
    with pytest.raises(UserError, match=f"option '{option}' {message}"):
        selfsup_lab.train(method, **{**QUICK, "out": str(tmp_path), option: value})


def test_method_options_from_python_take_the_declared_type():
    from selfsup_lab.methods import get_method_class, parse_options

    coke = parse_options(get_method_class("coke").Options, {"num_clusters": [4, 6.0], "temperature": 1})
    assert coke.num_clusters == (4, 6) and type(coke.num_clusters[1]) is int  # a whole float is an int
    assert coke.temperature == 1.0 and type(coke.temperature) is float
    assert parse_options(get_method_class("simclr").Options, {"one_pass": "yes"}).one_pass is True  # --set text


def test_resume_refuses_settings_that_would_make_it_another_run(tmp_path):
    out = str(tmp_path / "r")
    selfsup_lab.train("simclr", epochs=1, out=out, **QUICK)
    for changed, message in [({"batch_size": 16}, "--batch-size is 16 here and 32 in the run"),
                             ({"temperature": 0.9}, "option 'temperature' is 0.9 here and 0.2 in the run"),
                             ({"seed": 3}, "--seed is 3 here and 0 in the run")]:
        with pytest.raises(UserError, match=f"--resume continues the run in .* with its own settings, but {message}"):
            selfsup_lab.train("simclr", epochs=2, out=out, resume=True, **{**QUICK, **changed})
    with pytest.raises(UserError, match="method is 'byol' here and 'simclr' in the run"):
        selfsup_lab.train("byol", epochs=2, out=out, resume=True, **QUICK)
    # what may change: how far it goes, the learning rate, what it shows
    run = selfsup_lab.train("simclr", epochs=2, out=out, resume=True, lr=0.01, eval_every=1, **QUICK)
    assert run.status == "finished" and run.trainer.epoch == 2 and run.trainer.base_lr == 0.01
    with pytest.raises(UserError, match="has already trained 2 epochs, more than --epochs 1"):
        selfsup_lab.train("simclr", epochs=1, out=out, resume=True, **QUICK)  # would train nothing


def test_resume_accepts_the_same_synthetic_data_written_otherwise_and_says_auto_not_none(tmp_path):
    out = str(tmp_path / "r")
    selfsup_lab.train("simclr", epochs=1, out=out, **QUICK)
    reordered = "synthetic:size=16,classes=3,n=96,seed=0"  # the run's data, options in another order
    run = selfsup_lab.train("simclr", epochs=2, out=out, resume=True, **{**QUICK, "dataset": reordered})
    assert run.trainer.epoch == 2
    with pytest.raises(UserError, match=r"--warmup-epochs is 0 here and auto \(left to its default\) in the run"):
        selfsup_lab.train("simclr", epochs=3, out=out, resume=True, warmup_epochs=0, **QUICK)


def _image_folder(root, classes=("cat", "dog"), per_class=10):
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (16, 16), (40 * c, 10 * i, 90)).save(root / name / f"{i}.png")
    return root


def test_a_run_whose_image_folder_changed_or_moved_says_so_on_resume_and_reopen(tmp_path):
    images = _image_folder(tmp_path / "imgs")
    settings = {**QUICK, "dataset": f"imagefolder:{images}", "batch_size": 8, "knn_k": 4}
    out = str(tmp_path / "r")
    selfsup_lab.train("deepcluster", epochs=1, out=out, data_dir=str(tmp_path / "cache"), **settings)
    _image_folder(images, classes=("bird",))  # a class added after training
    for attempt in (lambda: selfsup_lab.train(resume=True, out=out, epochs=2, progress=False),
                    lambda: selfsup_lab.load_run(out)):
        with pytest.raises(UserError, match=r"the data of imagefolder:.*imgs changed since the run in .* was trained "
                                            r"\(16 → 24 training images; 4 → 6 test images; classes cat, dog → bird, "
                                            r"cat, dog\); restore it as it was"):
            attempt()
    images.rename(tmp_path / "moved")
    for attempt, doing in ((lambda: selfsup_lab.train(resume=True, out=out, epochs=2, progress=False), "continue"),
                           (lambda: selfsup_lab.load_run(out), "reopen")):
        with pytest.raises(UserError, match=rf"was trained on .*imgs, which is no longer there \(moved or deleted\); "
                                            rf"put it back at that path to {doing} the run"):
            attempt()


def test_a_fresh_run_in_a_folder_of_other_files_warns_that_it_mixes_in(tmp_path):
    mine = tmp_path / "mydocs"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    with pytest.warns(UserWarning, match=r"mydocs already holds files that are not a run's \(notes.txt\)"):
        selfsup_lab.train("simclr", epochs=1, out=str(mine), **QUICK)
    assert (mine / "notes.txt").read_text() == "my notes"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not a run's")  # a new folder, or a run's trained again
        selfsup_lab.train("simclr", epochs=1, out=str(tmp_path / "fresh"), **QUICK)
        selfsup_lab.train("simclr", epochs=1, out=str(tmp_path / "fresh"), **QUICK)


def test_resume_from_python_takes_the_runs_own_settings(tmp_path):
    out = str(tmp_path / "r")
    with pytest.raises(KeyboardInterrupt):
        selfsup_lab.train("simclr", epochs=3, out=out, callbacks=[InterruptAt(epoch=1, step=1)],
                          **{**QUICK, "batch_size": 16, "temperature": 0.5})
    # only `out`: the method, data, batch size, epochs and options are the run's (not this function's defaults)
    run = selfsup_lab.train(resume=True, out=out, progress=False)
    assert run.status == "finished" and run.trainer.epoch == 3 and run.trainer.config.batch_size == 16
    assert run.trainer.config.dataset == QUICK["dataset"] and run.method.options.temperature == 0.5
    assert json.loads((tmp_path / "r" / "config.json").read_text())["epochs"] == 3
    extended = selfsup_lab.train(resume=True, out=out, epochs=4, progress=False)  # a change a resume may make
    assert extended.trainer.epoch == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without a GPU does")
def test_a_run_from_a_gpu_machine_resumes_on_a_machine_without_one(tmp_path):
    out = tmp_path / "r"
    selfsup_lab.train("simclr", epochs=1, out=str(out), **QUICK)
    checkpoint = torch.load(out / CHECKPOINT, weights_only=False)
    checkpoint["config"].update(device="cuda", compile="reduce-overhead", backbone="auto")  # as on a GPU machine
    torch.save(checkpoint, out / CHECKPOINT)
    # "auto" would follow this machine's device: the run keeps the network it was built with instead
    _, _, settings = selfsup_lab.api.resume_settings(None, None, {"out": str(out)})
    assert settings["backbone"] == checkpoint["backbone"] == "convnet" and "device" not in settings
    run = selfsup_lab.train(resume=True, out=str(out), epochs=2, progress=False)
    assert run.trainer.device.type == "cpu" and run.trainer.epoch == 2
    with pytest.raises(UserError, match="no GPU is visible"):  # asked for explicitly: refused as before
        selfsup_lab.train(resume=True, out=str(out), epochs=3, device="cuda", progress=False)


def test_resume_of_a_checkpoint_without_method_or_dataset_is_one_sentence(tmp_path):
    selfsup_lab.train("simclr", epochs=1, out=str(tmp_path), **QUICK)
    checkpoint = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    torch.save({**checkpoint, "config": {}}, tmp_path / CHECKPOINT)  # e.g. written by hand
    with pytest.raises(UserError, match="names no method or dataset"):
        selfsup_lab.train(resume=True, out=str(tmp_path))


def test_unsupported_devices_are_refused_in_one_sentence():
    from selfsup_lab.train import resolve_device

    for name in ("mps", "meta", "xpu"):
        with pytest.raises(UserError, match=f"--device {name} is not supported; use auto, cpu or cuda"):
            resolve_device(name)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cuda:5 was asked for but no GPU is visible"):
            resolve_device("cuda:5")
    assert resolve_device("cpu").type == "cpu"


def test_ctrl_c_while_writing_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    from selfsup_lab.train import _write_atomically

    target = tmp_path / CHECKPOINT
    target.write_bytes(b"epoch 1")

    def interrupted_write(tmp):
        tmp.write_bytes(b"half of epo")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _write_atomically(target, interrupted_write)
    assert target.read_bytes() == b"epoch 1" and sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]

    def no_permission(tmp):
        raise PermissionError(13, "Permission denied")

    with pytest.raises(UserError, match=rf"\(Permission denied\); make {tmp_path} writable \(a new run can also go to "
                                        r"another --out\)$"):
        _write_atomically(target, no_permission)  # not "free some disk space"

    def disk_full(tmp):
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match=r"\(No space left on device\); free some disk space"):
        _write_atomically(target, disk_full)


def test_replacing_a_run_whose_files_cannot_be_deleted_is_one_sentence(tmp_path, monkeypatch):
    from pathlib import Path

    out = tmp_path / "r"
    selfsup_lab.train("simclr", epochs=1, out=str(out), **QUICK)
    real_unlink = Path.unlink

    def read_only(path, missing_ok=False):
        if path.parent == out:
            raise PermissionError(13, "Permission denied")
        return real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)  # as in a read-only folder (root ignores chmod)
    with pytest.raises(UserError, match="cannot replace the run in .*: metrics.json cannot be deleted"):
        selfsup_lab.train("simclr", epochs=1, out=str(out), **QUICK)


def test_a_checkpoint_damaged_into_nan_weights_is_called_damaged_not_diverged(tmp_path):
    selfsup_lab.train("simclr", epochs=1, out=str(tmp_path), **QUICK)
    checkpoint = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    name = next(k for k, v in checkpoint["method"].items() if v.is_floating_point() and v.numel() > 10)
    checkpoint["method"][name].view(-1)[:5] = float("nan")  # as flipped bits on a disk would
    torch.save(checkpoint, tmp_path / CHECKPOINT)
    for reopen in (lambda: selfsup_lab.train(resume=True, out=str(tmp_path), epochs=2),
                   lambda: selfsup_lab.load_run(tmp_path, device="cpu")):
        with pytest.raises(UserError, match=f"holds NaN or infinite values \\(\\w+ {name}\\).*the file is damaged"):
            reopen()


def test_evaluation_warns_when_k_is_most_of_the_knn_bank(tmp_path):
    import warnings

    with pytest.warns(UserWarning, match=r"kNN takes k = 200 neighbours from a bank of only \d+ labelled"):
        selfsup_lab.train("simclr", epochs=1, out=str(tmp_path / "a"), **QUICK)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # k = 20 of the same bank: no warning
        selfsup_lab.train("simclr", epochs=1, out=str(tmp_path / "b"), knn_k=20, **QUICK)


@pytest.mark.parametrize("option, message", [
    ({"crop_scale": (0.5, "a")}, "--crop-scale must be two numbers"),
    ({"out": 123}, "out must be a path such as 'runs/my-run', got 123"),
    ({"data_dir": 5}, "data_dir must be a path"),
    ({"callbacks": 5}, "callbacks must be a list such as"),
    ({"callbacks": [print]}, r"callbacks must be selfsup_lab.Callback objects \(subclass it"),
    ({"device": None}, "--device must be a name such as 'auto', 'cpu' or 'cuda', got None"),
])
def test_python_arguments_of_the_wrong_type_are_one_sentence(option, message):
    with pytest.raises(UserError, match=message):
        selfsup_lab.train("simclr", **{**QUICK, **option})


def test_load_run_arguments_of_the_wrong_type_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="load_run takes the path of a run directory"):
        selfsup_lab.load_run(None)
    selfsup_lab.train("simclr", epochs=1, out=str(tmp_path), **QUICK)
    with pytest.raises(UserError, match="--device must be a name"):
        selfsup_lab.load_run(tmp_path, device=None)


def test_ctrl_c_closes_the_progress_bar_before_the_message_is_printed(tmp_path):
    from selfsup_lab.train import ProgressBar

    bar = ProgressBar()
    with pytest.raises(KeyboardInterrupt):
        selfsup_lab.train("simclr", epochs=2, out=str(tmp_path), callbacks=[bar, InterruptAt(epoch=0, step=2)],
                          **{**QUICK, "progress": True})
    assert bar.bar.disable and bar.bar.n == 2  # closed where it stopped: nothing redraws it below the message


def test_callbacks_are_closed_last_and_a_failing_close_does_not_hide_ctrl_c(tmp_path):
    from selfsup_lab.train import ProgressBar

    calls = []

    class Recorder(Callback):
        def on_train_end(self, trainer):
            calls.append("on_train_end")

        def close(self):
            calls.append("close")

    selfsup_lab.train("simclr", epochs=1, out=str(tmp_path / "a"), callbacks=[Recorder()], **QUICK)
    assert calls == ["on_train_end", "close"]  # a finished run may still use in on_train_end what close releases

    class BrokenClose(Callback):
        def close(self):
            raise RuntimeError("cannot close")

    bar, calls[:] = ProgressBar(), []
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match=r"BrokenClose.close\(\) failed"):
        selfsup_lab.train("simclr", epochs=2, out=str(tmp_path / "b"), overwrite=True,
                          callbacks=[BrokenClose(), Recorder(), bar, InterruptAt(epoch=0, step=2)],
                          **{**QUICK, "progress": True})
    assert calls == ["close"] and bar.bar.disable  # the others are closed all the same; on_train_end never ran


def test_corrupt_checkpoint_is_reported(tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="unreadable"):
        selfsup_lab.train("simclr", epochs=1, out=str(tmp_path), resume=True, **QUICK)


def test_schedule_warms_up_then_decays_to_zero():
    lrs = [learning_rate(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] < 0.01
    no_warmup = [learning_rate(s, 100, 0, 1.0) for s in range(100)]  # --warmup-epochs 0
    assert no_warmup[0] == 1.0 and all(a >= b for a, b in zip(no_warmup, no_warmup[1:]))


@pytest.mark.parametrize("warmup", [1, 10])
def test_schedule_matches_torchs_own_warmup_and_cosine_schedulers(warmup):
    """The hand-written schedule (a pure function, so a resumed run recomputes it from the step alone) is
    exactly torch's LinearLR warm-up followed by CosineAnnealingLR to 0."""
    total, base = 100, 0.24
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    schedulers = [torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, end_factor=1.0,
                                                    total_iters=max(1, warmup - 1)),
                  torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=0.0)]
    scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, schedulers, milestones=[warmup])
    for step in range(total):
        assert learning_rate(step, total, warmup, base) == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-12)
        optimizer.step()
        scheduler.step()


def test_lars_scales_update_by_trust_ratio():
    w = torch.nn.Parameter(torch.full((4, 4), 2.0))
    w.grad = torch.full((4, 4), 100.0)
    opt = LARS([{"params": [w]}], lr=1.0, momentum=0.0, weight_decay=0.0, trust=0.01)
    opt.step()
    # update = trust·‖w‖/‖g‖ · g = 0.01 · 8/400 · 100 = 0.02 per entry, independent of the gradient's scale
    assert torch.allclose(w.detach(), torch.full((4, 4), 2.0 - 0.02))


def test_gpu_code_paths_run_on_cpu(tmp_path):
    """channels_last and LARS are the GPU defaults; their logic must also hold on a CPU."""
    plain = selfsup_lab.train("simclr", epochs=1, out=str(tmp_path / "a"), **QUICK)
    fast = selfsup_lab.train("simclr", epochs=1, out=str(tmp_path / "b"), channels_last=True, **QUICK)
    assert fast.history[0]["loss"] == pytest.approx(plain.history[0]["loss"], rel=1e-3)
    lars = selfsup_lab.train("simclr", epochs=1, out=str(tmp_path / "c"), optimizer="lars", **QUICK)
    assert lars.trainer.base_lr == pytest.approx(0.3 * 32 / 256)
    assert torch.isfinite(torch.tensor(lars.history[0]["loss"]))


def test_untrained_run_starts_where_every_method_starts():
    """The reference of the experiments: the same random backbone any method with this seed builds, with
    batch-norm statistics calibrated on the training images (or left at their initial 0 / 1)."""
    from selfsup_lab.api import untrained_run
    from selfsup_lab.train import Trainer

    options = dict(dataset="synthetic:n=64,classes=4,size=16", backbone="convnet", device="cpu", batch_size=16,
                   seed=3, linear=False)
    reference = untrained_run(**options)
    assert reference.metrics["epochs_trained"] == 0 and 0.0 <= reference.metrics["knn_top1"] <= 1.0
    assert reference.metrics["clustering_from"].startswith("spherical k-means")
    config = selfsup_lab.api.make_config("excb", **{k: v for k, v in options.items() if k != "linear"},
                                         progress=False)
    excb_start = Trainer(config, callbacks=[]).method.backbone.state_dict()
    weights = {k: v for k, v in reference.method.backbone.state_dict().items() if "running" not in k
               and "num_batches" not in k}
    assert all(torch.equal(v, excb_start[k]) for k, v in weights.items())
    norms = [m for m in reference.method.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.running_mean.abs().sum() > 0 for m in norms)  # calibrated from the data
    assert all(m.momentum == 0.1 for m in norms)  # the calibration's cumulative averaging is undone afterwards
    plain = untrained_run(calibrate_batchnorm=False, **options)
    norms = [m for m in plain.method.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.running_mean.abs().sum() == 0 and torch.all(m.running_var == 1) for m in norms)


class FakeSTL10:
    """torchvision's STL10 interface on a little made-up data: 60 labelled (3 classes), 90 unlabelled (-1)."""

    def __init__(self, root, split, download):
        g = np.random.default_rng(0 if split != "test" else 1)
        labelled = 30 if split == "test" else 60
        unlabelled = 90 if split == "train+unlabeled" else 0
        self.labels = np.concatenate([np.arange(labelled) % 3, -np.ones(unlabelled, dtype=np.int64)])
        self.data = g.integers(0, 256, (labelled + unlabelled, 3, 16, 16), dtype=np.uint8)
        self.data[:labelled, self.labels[:labelled]] = 255  # a class is its saturated channel: easy to tell apart
        self.classes = ["red", "green", "blue"]


def test_unlabelled_images_are_trained_on_and_left_out_of_evaluation(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets, "STL10", FakeSTL10)
    settings = {**QUICK, "dataset": "stl10", "data_dir": str(tmp_path / "data"), "eval_every": 1}
    run = selfsup_lab.train("simclr", epochs=2, out=str(tmp_path / "run"), **settings)
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    assert resolved["num_train"] == 150 and resolved["num_train_labelled"] == 60
    assert run.trainer.steps_per_epoch == 150 // 32  # the unlabelled images are trained on
    features, labels = run.embed("train")
    assert features.shape[0] == 60 and labels.min() == 0  # evaluation sees the labelled ones only
    assert 0.0 <= run.history[0]["knn_top1"] <= 1.0 and 0.0 <= run.metrics["linear_top1"] <= 1.0
    assert 0.0 <= run.history[-1]["same_class_neg_rate"] < 1.0
    # the guided sampler's oracle pseudo-labels would be the true ones, which 90 images do not have
    with pytest.raises(UserError, match="pseudo_labels=autoencoder or encoder"):
        selfsup_lab.train("simclr", epochs=1, out=str(tmp_path / "oracle"), sampler="guided",
                          **{"sampler.pseudo_labels": "oracle"}, **settings)


def test_crop_scale_sets_the_random_resized_crop_and_is_recorded(tmp_path):
    from selfsup_lab.train import Trainer

    config = selfsup_lab.api.make_config("simclr", **{**QUICK, "out": str(tmp_path), "crop_scale": [0.5, 1.0]})
    trainer = Trainer(config, callbacks=[])
    assert trainer.augment.config.scale == (0.5, 1.0)
    assert trainer.augment.config.ratio == (3 / 4, 4 / 3)  # the rest of the recipe is unchanged
    default = Trainer(selfsup_lab.api.make_config("simclr", **{**QUICK, "out": str(tmp_path / "d")}), callbacks=[])
    assert default.augment.config.scale == (0.08, 1.0)
    run = selfsup_lab.train("simclr", **{**QUICK, "out": str(tmp_path / "r"), "crop_scale": (0.5, 1.0), "epochs": 1})
    assert json.loads((run.out / "config.json").read_text())["crop_scale"] == [0.5, 1.0]


def test_torchvision_augmentation_trains_is_recorded_and_cannot_change_on_resume(tmp_path):
    from selfsup_lab.augment import TorchvisionAugmenter

    run = selfsup_lab.train("simclr", epochs=1, out=str(tmp_path / "r"), augmentation="torchvision", **QUICK)
    assert isinstance(run.trainer.augment, TorchvisionAugmenter) and run.trainer.augment.config.scale == (0.08, 1.0)
    assert json.loads((run.out / "config.json").read_text())["augmentation"] == "torchvision"
    assert np.isfinite(run.history[-1]["loss"])
    with pytest.raises(UserError, match="--augmentation is 'device' here and 'torchvision' in the run"):
        selfsup_lab.train("simclr", epochs=2, out=str(tmp_path / "r"), resume=True, augmentation="device", **QUICK)
    with pytest.raises(UserError, match="unknown augmentation 'kornia'; choose device .* or torchvision"):
        selfsup_lab.train("simclr", epochs=1, out=str(tmp_path / "bad"), augmentation="kornia", **QUICK)


def test_torchvision_workers_run_during_training_and_stop_when_it_ends_or_is_interrupted(tmp_path, monkeypatch):
    import importlib
    import multiprocessing

    trainer_module = importlib.import_module("selfsup_lab.train")  # the module; selfsup_lab.train is the function
    monkeypatch.setattr(trainer_module.os, "cpu_count", lambda: 4)  # worker processes even on a one-core machine

    class RecordWorkers(Callback):
        def __init__(self, interrupt=False):
            self.interrupt, self.workers = interrupt, []

        def on_step_end(self, trainer, logs):
            self.workers.append(len(multiprocessing.active_children()))
            if self.interrupt:
                raise KeyboardInterrupt

    before = len(multiprocessing.active_children())
    finished = RecordWorkers()
    selfsup_lab.train("simclr", epochs=1, out=str(tmp_path / "r"), augmentation="torchvision",
                      callbacks=[finished], **QUICK)
    assert min(finished.workers) >= before + 2  # the views came from worker processes...
    assert len(multiprocessing.active_children()) == before  # ...which ended with the training
    interrupted = RecordWorkers(interrupt=True)
    with pytest.raises(KeyboardInterrupt):
        selfsup_lab.train("simclr", epochs=1, out=str(tmp_path / "cut"), augmentation="torchvision",
                          callbacks=[interrupted], **QUICK)
    assert interrupted.workers[0] >= before + 2 and len(multiprocessing.active_children()) == before


def test_compile_modes_are_named_and_checked():
    from selfsup_lab.train import resolve_compile_mode, uses_cuda_graphs

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_compile_mode(False, cpu) is None and resolve_compile_mode(None, cpu) is None
    assert resolve_compile_mode(True, cpu) == "default"  # plain --compile
    assert resolve_compile_mode("reduce-overhead", cuda) == "reduce-overhead"  # no GPU needed to decide
    with pytest.raises(UserError, match="needs a GPU"):
        resolve_compile_mode("reduce-overhead", cpu)
    with pytest.raises(UserError, match="unknown compile mode 'fast'"):
        resolve_compile_mode("fast", cpu)
    # only the graph-replaying modes on a GPU need each step marked
    assert uses_cuda_graphs("reduce-overhead", cuda) and uses_cuda_graphs("max-autotune", cuda)
    assert not uses_cuda_graphs("default", cuda) and not uses_cuda_graphs("max-autotune", cpu)


def test_reopening_a_run_whose_weights_are_not_finite_is_one_sentence(tmp_path):
    out = tmp_path / "run"
    selfsup_lab.train("simclr", epochs=1, out=str(out), **QUICK)
    checkpoint = torch.load(out / CHECKPOINT, weights_only=False)
    first_weight = next(k for k in checkpoint["method"] if k.startswith("backbone.") and k.endswith("weight"))
    checkpoint["method"][first_weight].fill_(float("inf"))  # as from an older run that diverged unnoticed
    torch.save(checkpoint, out / CHECKPOINT)
    with pytest.raises(UserError, match="holds NaN or infinite values .*diverged run"):
        selfsup_lab.load_run(out, device="cpu").evaluate()


# --- schedule, optimiser, occupancy windows --------------------------------------------------------------------

def _trainer(tmp_path, **config):
    from selfsup_lab.train import Trainer, TrainConfig

    options = {"dataset": "synthetic:n=64,classes=4,size=16", "batch_size": 16, "backbone": "convnet", "device": "cpu",
               "progress": False, "figures": False, "epochs": 1, **config}
    return Trainer(TrainConfig(method="simclr", out=str(tmp_path / "run"),
                               method_options={"proj_hidden": 32, "proj_dim": 16}, **options))


def test_warm_up_lasts_the_given_number_of_epochs_counted_in_steps(tmp_path):
    default = _trainer(tmp_path, epochs=20)  # default warm-up: min(10, 20 // 10) = 2 epochs
    assert default.steps_per_epoch == 4 and default.warmup_steps == 2 * 4
    assert _trainer(tmp_path, epochs=20, warmup_epochs=3).warmup_steps == 3 * 4


def test_the_default_sgd_learning_rate_is_0_06_per_128_images(tmp_path):
    assert _trainer(tmp_path, batch_size=16).base_lr == pytest.approx(0.06 * 16 / 128)
    assert _trainer(tmp_path, batch_size=32).base_lr == pytest.approx(0.06 * 32 / 128)
    assert _trainer(tmp_path, batch_size=32, lr=0.5).base_lr == 0.5


@pytest.mark.parametrize("optimizer", ["sgd", "lars"])
def test_weight_decay_skips_batch_norm_parameters_and_biases(optimizer):
    from selfsup_lab.train import TrainConfig, build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    opt = build_optimizer(model, TrainConfig(optimizer=optimizer, weight_decay=0.1), lr=0.1)
    decayed = {id(p) for group in opt.param_groups if group["weight_decay"] > 0 for p in group["params"]}
    assert decayed == {id(model[0].weight), id(model[2].weight)}
    assert sum(len(group["params"]) for group in opt.param_groups) == len(list(model.parameters()))


def test_lars_trust_ratio_uses_the_norm_of_the_update_with_weight_decay():
    w = torch.nn.Parameter(torch.full((4, 4), 2.0))
    w.grad = torch.full((4, 4), 1.0)
    LARS([{"params": [w]}], lr=1.0, momentum=0.0, weight_decay=0.5, trust=0.01).step()
    # u = g + λw = 2 per entry, ‖u‖ = 8 = ‖w‖: ratio 0.01·‖w‖/‖u‖ = 0.01, step 0.01 · 2 (with ‖g‖: twice that)
    torch.testing.assert_close(w.detach(), torch.full((4, 4), 2.0 - 0.02))


def test_train_subset_is_a_seeded_random_subset(tmp_path):
    from selfsup_lab.data import load_dataset

    full = load_dataset("synthetic:n=64,classes=4,size=16", "train").images
    subset = lambda seed: _trainer(tmp_path, train_subset=32, seed=seed).train_set.images  # noqa: E731
    assert len(subset(0)) == 32 and torch.equal(subset(0), subset(0))
    assert not torch.equal(subset(0), full[:32]) and not torch.equal(subset(0), subset(1))


def test_a_train_subset_larger_than_the_data_trains_on_all_of_it_and_says_so(tmp_path):
    from selfsup_lab.data import load_dataset

    full = load_dataset("synthetic:n=64,classes=4,size=16", "train").images
    with pytest.warns(UserWarning, match=f"train_subset 1000 is more than the {len(full)} training images"):
        trainer = _trainer(tmp_path, train_subset=1000)
    assert torch.equal(trainer.train_set.images, full)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asking for exactly all of them is no mistake
        assert torch.equal(_trainer(tmp_path, train_subset=len(full)).train_set.images, full)


CLUSTER_RUN = dict(dataset="synthetic:n=96,classes=4,size=16", batch_size=32, backbone="convnet", device="cpu",
                   progress=False, figures=False, proj_hidden=32, epochs=2)


def test_occupancy_windows_close_after_every_n_steps(tmp_path):
    run = selfsup_lab.train("naive", out=str(tmp_path), occupancy_every=2,
                            **{**CLUSTER_RUN, "dataset": "synthetic:n=128,classes=4,size=16"})
    windows = run.trainer.occupancy_log["steps"]
    assert run.trainer.steps_per_epoch == 4
    assert [(w["epoch"], w["step"]) for w in windows] == [(0, 2), (0, 4), (1, 6), (1, 8)]
    assert len({sum(w["counts"]) for w in windows}) == 1  # every window holds two steps' images


def test_per_batch_occupancy_does_not_depend_on_the_window(tmp_path):
    """The per-batch statistics come from each step's own counts, not from the running window's."""
    every_step = selfsup_lab.train("excb", out=str(tmp_path / "a"), occupancy_every=1, pred_hidden=32, **CLUSTER_RUN)
    windowed = selfsup_lab.train("excb", out=str(tmp_path / "b"), occupancy_every=3, pred_hidden=32, **CLUSTER_RUN)
    for a, b in zip(every_step.history, windowed.history):
        assert a["loss"] == b["loss"]  # the window changes nothing in training
        for key in ("batch_entropy_ratio", "batch_max_share"):
            assert b["occupancy"][key] == pytest.approx(a["occupancy"][key], abs=1e-12), key


def test_evaluation_clusters_with_the_runs_own_seed(tmp_path, monkeypatch):
    # metrics.json's k-means ACC/NMI/ARI must be reproducible from the run alone: seeded by its config, not by a
    # constant or the global random state
    from selfsup_lab import api, metrics

    seeds = []
    kmeans_scores = metrics.kmeans_clustering_scores
    monkeypatch.setattr(metrics, "kmeans_clustering_scores",
                        lambda *args, seed, **kwargs: seeds.append(seed) or kmeans_scores(*args, seed=seed, **kwargs))
    trainer = _trainer(tmp_path, seed=3)
    first, second = api.evaluate(trainer, linear=False), api.evaluate(trainer, linear=False)
    assert seeds == [3, 3] and first["clustering_from"].startswith("spherical k-means")
    assert {k: first[k] for k in ("acc", "nmi", "ari")} == {k: second[k] for k in ("acc", "nmi", "ari")}


# --- interrupted, concurrent and resumed runs (an audit, 2026-11-25) -------------------------------------------

class CheckLockHeld(Callback):
    def on_epoch_end(self, trainer, record):
        self.lock = (trainer.out / ".lock").read_text()


def test_a_second_run_into_a_folder_being_written_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    out = tmp_path / "r"
    watcher = CheckLockHeld()
    selfsup_lab.train("simclr", epochs=1, out=str(out), callbacks=[watcher], **QUICK)
    assert watcher.lock.partition("\n")[0] == f"{os.getpid()}@{socket.gethostname()}"  # held while training ...
    assert not (out / ".lock").exists()  # ... and released at the end
    (out / ".lock").write_text(f"{os.getpid()}@{socket.gethostname()}")  # a live process writes the run
    before = (out / "config.json").read_text()
    for resume in (False, True):
        with pytest.raises(UserError, match=rf"another run \(process {os.getpid()}@.*\) is writing to .*r; wait "
                                            r"for it to finish or choose another --out \(if no run is writing there, "
                                            r"delete .*\.lock\)"):
            selfsup_lab.train("simclr", epochs=2, out=str(out), resume=resume, seed=1, **QUICK)
    assert (out / "config.json").read_text() == before  # nothing of the other run was written
    (out / ".lock").write_text("7@another-machine")  # a run on another machine sharing the folder: alive for all we know
    with pytest.raises(UserError, match="another run"):
        selfsup_lab.train("simclr", epochs=2, out=str(out), resume=True, **QUICK)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / ".lock").write_text(f"{dead.stdout.strip()}@{socket.gethostname()}")  # its process is gone (kill -9)
    (out / "checkpoint.pt.tmp").write_bytes(b"half a checkpoint")  # what kill -9 mid-write leaves
    run = selfsup_lab.train("simclr", epochs=2, out=str(out), resume=True, **QUICK)
    assert run.status == "finished" and not (out / ".lock").exists() and not (out / "checkpoint.pt.tmp").exists()


class RecordMatmulPrecision(Callback):
    def on_train_start(self, trainer):
        self.dtypes, step = [], trainer.method.training_step

        def recording(views, indices):
            self.dtypes.append((torch.ones(2, 2) @ torch.ones(2, 2)).dtype)  # what autocast makes of a float32 matmul
            return step(views, indices)

        trainer.method.training_step = recording


@pytest.mark.parametrize("amp, dtype", [(None, torch.float32), (True, torch.bfloat16)])
def test_bf16_autocast_on_a_cpu_only_when_asked(tmp_path, amp, dtype):
    recorder = RecordMatmulPrecision()
    run = selfsup_lab.train("simclr", epochs=1, out=str(tmp_path / "r"), amp=amp, callbacks=[recorder], **QUICK)
    assert recorder.dtypes and set(recorder.dtypes) == {dtype}
    assert json.loads((run.out / "config.json").read_text())["resolved"]["amp_bf16"] == (amp is True)


@pytest.mark.parametrize("method, options", [("simclr", {"one_pass": True}), ("excb", {"num_small_views": 2})])
def test_a_compiled_backbone_under_bf16_trains_resumes_and_reopens(tmp_path, monkeypatch, method, options):
    """--compile on a GPU: the backbone compiled, run under bf16 autocast in channels_last. Stood in for on the CPU
    by CPU bf16 autocast and the aot_eager backend (AOTAutograd's traced graphs, without code generation)."""
    compiled = []
    plain_compile = torch.nn.Module.compile

    def compile_traced(module, mode=None):
        compiled.append(mode)
        return plain_compile(module, backend="aot_eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_traced)
    torch._dynamo.reset()
    out = tmp_path / method
    settings = {**QUICK, "amp": True, "channels_last": True, "knn_k": 10, "eval_every": 1, **options}
    selfsup_lab.train(method, epochs=1, compile=True, out=str(out), **settings)
    run = selfsup_lab.train(resume=True, out=str(out), epochs=2, compile=True)  # (without a GPU not taken over)
    assert compiled == ["default", "default"] and run.status == "finished"
    assert all(math.isfinite(record["loss"]) for record in run.history) and len(run.history) == 2
    reopened = selfsup_lab.load_run(out)  # compiling leaves the checkpoint's keys as they are
    assert set(reopened.method.state_dict()) == set(run.method.state_dict())


def test_features_are_copies_that_the_next_chunk_cannot_overwrite(tmp_path):
    # A CUDA graph (--compile reduce-overhead) writes every call's output into the same memory: simulated here by
    # an fn that hands out one buffer and overwrites it on each call, float32 so that no dtype cast copies it.
    import contextlib

    trainer = selfsup_lab.api.untrained_run("synthetic:n=64,classes=2,size=16", linear=False, device="cpu",
                                         batch_size=32).trainer
    buffer = torch.empty(0)

    def graph_replay(x):
        nonlocal buffer
        buffer = buffer if len(buffer) == len(x) else torch.empty(len(x), 3)
        return buffer.copy_(x.mean(dim=(2, 3)))

    images = trainer.test_set.images[:40]
    features = trainer.features(images, fn=graph_replay, batch_size=10, autocast=contextlib.nullcontext)
    expected = torch.cat([trainer.prepare(chunk).mean(dim=(2, 3)) for chunk in images.split(10)])
    torch.testing.assert_close(features, expected)  # not the last chunk's values four times


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times are read from Linux's /proc")
def test_a_lock_whose_pid_now_belongs_to_another_process_is_taken_over(tmp_path):
    # kill -9, then the pid is reused: in a restarted container the new command often gets the killed run's pid.
    import os
    import socket

    from selfsup_lab.train import _process_start

    out = tmp_path / "r"
    watcher = CheckLockHeld()
    selfsup_lab.train("simclr", epochs=1, out=str(out), callbacks=[watcher], **QUICK)
    me = f"{os.getpid()}@{socket.gethostname()}"
    assert watcher.lock == f"{me}\nstarted {_process_start(os.getpid())}"
    (out / ".lock").write_text(watcher.lock)  # this very process, still writing the run: refused
    with pytest.raises(UserError, match=rf"another run \(process {me}\) is writing to"):
        selfsup_lab.train(resume=True, out=str(out), epochs=2)
    (out / ".lock").write_text(f"{me}\nstarted 1")  # the same pid, but a process that started long before this one
    run = selfsup_lab.train(resume=True, out=str(out), epochs=2)
    assert run.status == "finished" and not (out / ".lock").exists()


def test_a_killed_runs_temporary_file_is_not_called_another_files_and_is_replaced(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "checkpoint.pt.tmp").write_bytes(b"half a checkpoint")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not a run's")
        selfsup_lab.train("simclr", epochs=1, out=str(out), **QUICK)
    assert not (out / "checkpoint.pt.tmp").exists()


def test_an_interrupted_extension_leaves_no_metrics_of_an_earlier_epoch(tmp_path):
    out = tmp_path / "r"
    selfsup_lab.train("simclr", epochs=1, out=str(out), **QUICK)
    assert json.loads((out / "metrics.json").read_text())["epochs_trained"] == 1
    with pytest.raises(KeyboardInterrupt):
        selfsup_lab.train(resume=True, out=str(out), epochs=4, callbacks=[InterruptAt(epoch=2, step=1)])
    assert torch.load(out / CHECKPOINT, weights_only=False)["epoch"] == 2
    assert not (out / "metrics.json").exists()  # epoch 1's scores would sit beside epoch 2's checkpoint
    assert selfsup_lab.load_run(out).metrics == {}
    (out / "metrics.json").write_text(json.dumps({"knn_top1": 0.5, "epochs_trained": 1}))  # as older versions left it
    reopened = selfsup_lab.load_run(out)
    assert reopened.metrics == {} and "knn_top1" not in repr(reopened)


def test_evaluating_a_run_rewrites_a_history_one_epoch_short(tmp_path):
    """Ctrl-C right after a checkpoint is written, before history.jsonl is: `eval` brings the two together."""
    out = tmp_path / "r"
    selfsup_lab.train("simclr", epochs=2, out=str(out), **QUICK)
    full = (out / "history.jsonl").read_text()
    (out / "history.jsonl").write_text(full.splitlines(keepends=True)[0])
    selfsup_lab.load_run(out).evaluate()
    assert (out / "history.jsonl").read_text() == full


def test_resuming_a_finished_run_with_training_settings_is_refused(tmp_path):
    out = tmp_path / "r"
    selfsup_lab.train("simclr", epochs=1, out=str(out), **QUICK)
    config = (out / "config.json").read_text()
    with pytest.raises(UserError, match=r"has already trained all its 1 epochs, so --lr and --eval-every would change "
                                        r"nothing .*leave them out to re-evaluate it, or pass a larger --epochs"):
        selfsup_lab.train(resume=True, out=str(out), lr=0.5, eval_every=1)
    assert (out / "config.json").read_text() == config  # still the settings the run trained with
    run = selfsup_lab.train(resume=True, out=str(out), knn_k=5)  # an evaluation setting: re-evaluates
    assert run.status == "finished" and json.loads((out / "config.json").read_text())["knn_k"] == 5


def test_resuming_with_another_method_names_the_method_not_an_option_it_lacks(tmp_path):
    out = tmp_path / "r"
    selfsup_lab.train("simclr", epochs=1, out=str(out), temperature=0.5, **QUICK)
    with pytest.raises(UserError, match="method is 'byol' here and 'simclr' in the run"):
        selfsup_lab.train("byol", resume=True, out=str(out), epochs=2)


def test_none_where_a_setting_has_no_default_and_evaluate_of_a_run(tmp_path):
    for name in ("seed", "batch_size", "knn_k", "weight_decay"):
        with pytest.raises(UserError, match=f"--{name.replace('_', '-')} must be a (whole )?number, got None"):
            selfsup_lab.train("simclr", epochs=1, out=str(tmp_path / name), **{**QUICK, name: None})
    run = selfsup_lab.train("simclr", epochs=1, out=str(tmp_path / "r"), **QUICK)
    assert selfsup_lab.evaluate(run)["knn_top1"] == run.metrics["knn_top1"]  # a Run, as train and load_run give
    with pytest.raises(UserError, match=r"evaluate takes a run \(from selfsup_lab.train or selfsup_lab.load_run\), "
                                        r"got 'runs/r'; for a run directory, selfsup_lab.load_run\(path\).evaluate\(\)"):
        selfsup_lab.evaluate("runs/r")


def test_a_full_disk_reported_by_torch_save_is_called_a_full_disk(tmp_path, monkeypatch):
    import shutil
    import sys

    train_module = sys.modules["selfsup_lab.train"]  # (selfsup_lab.train is the function)

    def full_disk_save(obj, f, *args, **kwargs):
        open(f, "wb").write(b"part of it")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5122624 vs 5122512")

    monkeypatch.setattr(train_module.torch, "save", full_disk_save)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(train_module.shutil, "disk_usage", lambda path: usage._replace(free=4096))
    with pytest.raises(UserError, match=r"cannot write .*checkpoint.pt \(the disk is full\); free some disk space"):
        train_module.atomic_torch_save({}, tmp_path / "checkpoint.pt")
    monkeypatch.setattr(train_module.shutil, "disk_usage", lambda path: usage._replace(free=10 << 30))
    with pytest.raises(UserError, match=r"\(\[enforce fail .*\); .* cannot hold the run's files"):  # not the disk
        train_module.atomic_torch_save({}, tmp_path / "checkpoint.pt")
    assert list(tmp_path.iterdir()) == []
