"""The command line: listings work, mistakes give one sentence and a non-zero exit code, no traceback."""
import json
import re
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest

from selfsup_lab import api, cli, distributed
from selfsup_lab.cli import main
from selfsup_lab.errors import DataUnavailableError, TrainingDiverged


def run_cli(*args, cwd=None):
    """The command in a subprocess; `cwd` keeps default run directories (runs/...) out of the repository."""
    return subprocess.run([sys.executable, "-m", "selfsup_lab.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def test_python_dash_m_selfsup_lab_is_the_command(tmp_path):
    # How a source tree that is not pip-installed runs the lab (PYTHONPATH=. python -m selfsup_lab ...).
    done = subprocess.run([sys.executable, "-m", "selfsup_lab", "train", "--method", "nope"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error: unknown method 'nope'")


def test_methods_and_datasets_list(capsys):
    assert main(["methods", "-v"]) == 0
    out = capsys.readouterr().out
    assert "simclr" in out and "--set temperature=" in out
    assert main(["datasets"]) == 0
    assert "digits" in capsys.readouterr().out


def test_augmentation_choices_offered_are_the_augmenters_that_exist(capsys):
    from selfsup_lab.augment import AUGMENTERS
    from selfsup_lab.experiments import AUGMENTATIONS

    assert set(AUGMENTATIONS) == set(AUGMENTERS)  # the list --help shows without importing torch
    for command in ("train", "compare-balancing", "compare-negatives"):
        with pytest.raises(SystemExit):
            main([command, "--augmentation", "kornia"])
        assert re.search(r"choose from '?device'?, '?torchvision'?", capsys.readouterr().err)  # quotes: Python 3.11


@pytest.mark.parametrize("args, message", [
    (["train", "--method", "nope"], "unknown method 'nope'"),
    (["train", "--dataset", "nope"], "nope"),
    (["train", "--dataset", "imagefolder:/no/such/dir"], "does not exist"),
    (["train", "--set", "temperature"], "--set expects key=value"),
    (["train", "--set", "temperature=0.5", "--set", "temperature=0.7"],
     "--set gives 'temperature' twice (0.5 and 0.7); give it once"),
    (["train", "--device", "mps"], "--device mps is not supported; use auto, cpu or cuda"),
    (["train", "--knn-k", "0"], "--knn-k must be 1 or more, got 0"),
    (["eval", "/no/such/run"], "does not exist"),
    (["train", "--lr", "-1"], "--lr must be above 0, got -1.0"),
    (["train", "--weight-decay", "-1"], "--weight-decay must be 0 or more, got -1.0"),
    (["train", "--epochs", "3", "--warmup-epochs", "5"], "--warmup-epochs (5) must not exceed the epochs (3)"),
    (["train", "--method", "coke", "--set", "ratio=1.5"], "option 'ratio' of coke must be in (0, 1], got 1.5"),
    (["train", "--compile", "fastest"], "unknown compile mode 'fastest'; choose one of: default, reduce-overhead"),
    (["train", "--device", "cpu", "--compile", "reduce-overhead"], "replays CUDA graphs and needs a GPU"),
    (["train", "--epochs", "1", "--out", "/dev/null/run"], "cannot create the output directory /dev/null/run"),
    # a directory that exists but takes no files (as a read-only course folder would for a student)
    (["train", "--epochs", "1", "--out", "/proc/self"], "cannot write /proc/self/config.json"),
    (["compare-balancing", "--out", "/dev/null/cmp"], "cannot create the output directory /dev/null/cmp"),
    (["compare-negatives", "--out", "/dev/null/cmp"], "cannot create the output directory /dev/null/cmp"),
])
def test_bad_input_is_one_sentence(args, message, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_train_then_eval_round_trip(tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--dataset", "synthetic:n=64,classes=2,size=16", "--epochs", "1", "--batch-size", "32",
                     "--device", "cpu", "--out", str(out), "--no-figures", "--no-progress", "--set", "proj_hidden=32",
                     "--weight-decay", "1e-6", "--crop-scale", "0.3", "1", "--warmup-epochs", "0")
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["weight_decay"] == 1e-6 and saved["crop_scale"] == [0.3, 1.0] and saved["warmup_epochs"] == 0
    first = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text("{not json")  # eval recomputes it, so an unreadable one is no obstacle
    result = run_cli("eval", str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    again = json.loads((out / "metrics.json").read_text())
    assert again["knn_top1"] == pytest.approx(first["knn_top1"])
    (out / "checkpoint.pt").write_bytes(b"\x00garbage")
    result = run_cli("eval", str(out))
    assert result.returncode == 2 and "unreadable" in result.stderr and "Traceback" not in result.stderr


def test_ctrl_c_says_whether_a_checkpoint_was_kept_and_where(tmp_path, monkeypatch, capsys):
    from selfsup_lab import api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "train", interrupted)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out)]) == 130
    assert "interrupted before the first epoch ended; no checkpoint was written" in capsys.readouterr().err
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"")
    assert main(["train", "--out", str(out), "--overwrite"]) == 130
    assert capsys.readouterr().err.strip().endswith(f"continue with: selfsup-lab train --resume --out {out}")
    # interrupting an extension: the checkpoint still holds the old --epochs, so the command must repeat it
    assert main(["train", "--out", str(out), "--resume", "--epochs", "6"]) == 130
    assert capsys.readouterr().err.strip().endswith(f"continue with: selfsup-lab train --resume --out {out} --epochs 6")
    assert main(["train", "--out", str(out), "--resume", "--lr", "0.01"]) == 130
    assert capsys.readouterr().err.strip().endswith(f"continue with: selfsup-lab train --resume --out {out} --lr 0.01")
    assert main(["train", "--out", str(out), "--resume", "--overwrite"]) == 2
    assert "--resume continues the run in --out and --overwrite starts it over" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="Windows ends a process on SIGTERM without running a handler")
def test_sigterm_stops_a_run_like_ctrl_c_keeping_the_checkpoint_and_removing_the_lock(tmp_path):
    """What a job scheduler does at a time limit (Slurm, `docker stop`): SIGTERM, then kill -9 some seconds later."""
    import signal
    import time

    import torch

    out = tmp_path / "run"
    tiny = ["--dataset", "synthetic:n=64,classes=2,size=16", "--batch-size", "32", "--device", "cpu", "--out", str(out),
            "--no-figures", "--no-progress", "--set", "proj_hidden=32"]
    command = subprocess.Popen([sys.executable, "-m", "selfsup_lab.cli", "train", "--epochs", "10000", *tiny],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists():  # at least one epoch done
            assert command.poll() is None and time.monotonic() < deadline, command.communicate()
            time.sleep(0.02)
        command.send_signal(signal.SIGTERM)
        _, stderr = command.communicate(timeout=60)
    finally:
        command.kill()
    assert command.returncode == 143, stderr
    assert "interrupted; the checkpoint of the last completed epoch is kept — continue with: selfsup-lab train " \
           f"--resume --out {out}" in stderr and "Traceback" not in stderr
    assert not (out / ".lock").exists()  # left behind, it would refuse a resume on another machine
    epoch = torch.load(out / "checkpoint.pt", weights_only=False)["epoch"]
    assert 1 <= epoch < 10000
    resumed = run_cli("train", "--resume", "--out", str(out), "--epochs", str(epoch + 1), "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == epoch + 1


def test_sigterm_handler_is_the_callers_again_after_main(monkeypatch, capsys):
    import signal

    from selfsup_lab.errors import Terminated

    before = signal.getsignal(signal.SIGTERM)

    def stopped(*args, **kwargs):
        assert signal.getsignal(signal.SIGTERM) is not before  # the command's own while it runs
        raise Terminated

    monkeypatch.setattr(api, "train", stopped)
    assert main(["train", "--out", "never-written"]) == 143
    assert "interrupted before the first epoch ended" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_fresh_start_never_replaces_a_run_unless_asked(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "figures").mkdir(parents=True)
    (out / "checkpoint.pt").write_bytes(b"an earlier run")
    (out / "figures" / "occupancy_bars.png").write_bytes(b"an earlier run's picture")
    tiny = ["train", "--dataset", "synthetic:n=64,classes=2,size=16", "--epochs", "1", "--batch-size", "32",
            "--device", "cpu", "--out", str(out), "--no-figures", "--no-progress", "--set", "proj_hidden=32"]
    assert main(tiny) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and f"--resume --out {out}" in err and "--overwrite" in err
    assert (out / "checkpoint.pt").read_bytes() == b"an earlier run"  # nothing lost
    assert main(tiny + ["--lr", "-1"]) == 2  # a wrong setting is named first: it is what to fix first
    assert "--lr must be above 0" in capsys.readouterr().err
    assert main(tiny + ["--overwrite"]) == 0
    assert (out / "checkpoint.pt").read_bytes() != b"an earlier run"
    assert not (out / "figures" / "occupancy_bars.png").exists()  # not presented as this run's figure


def test_only_the_figures_drawn_now_are_listed(tmp_path, capsys):
    out = tmp_path / "run"
    tiny = ["train", "--dataset", "synthetic:n=64,classes=2,size=16", "--batch-size", "32", "--device", "cpu",
            "--out", str(out), "--no-progress", "--set", "proj_hidden=32"]
    assert main([*tiny, "--epochs", "1"]) == 0
    listed = capsys.readouterr().out.split("figures: ")[1].strip().split(", ")
    assert sorted(listed) == sorted(str(p) for p in (out / "figures").glob("*.png"))
    assert main([*tiny, "--epochs", "2", "--resume", "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert "done:" in printed and "figures:" not in printed  # the epoch-1 pictures are not this run's


def test_repeated_set_flags_add_up_and_each_is_checked(tmp_path, capsys):
    tiny = ["--dataset", "synthetic:n=64,classes=2,size=16", "--epochs", "1", "--batch-size", "32", "--device", "cpu",
            "--no-figures", "--no-progress", "--out", str(tmp_path / "r")]
    assert main(["train", "--set", "temperature=0", "--set", "proj_dim=64", *tiny]) == 2
    assert "option 'temperature' of simclr must be above 0" in capsys.readouterr().err


@pytest.mark.parametrize("command, module, function", [
    ("train", "selfsup_lab.api", "train"),
    ("compare-balancing", "selfsup_lab.experiments.balancing", "compare_balancing"),
    ("compare-negatives", "selfsup_lab.experiments.negatives", "compare_negatives"),
])
def test_every_subcommand_takes_progress_and_no_progress(command, module, function, monkeypatch):
    """The same two spellings on every command (a bar unless switched off), and they reach the training."""
    import importlib

    received = []

    def record(*args, **kwargs):
        received.append(kwargs["progress"])
        raise KeyboardInterrupt  # stop before anything is trained or printed

    monkeypatch.setattr(importlib.import_module(module), function, record)
    for flags, shown in (([], True), (["--progress"], True), (["--no-progress"], False)):
        assert main([command, "--out", "unused", *flags]) == 130
        assert received.pop() is shown


@pytest.mark.parametrize("command, module, function", [
    ("compare-balancing", "selfsup_lab.experiments.balancing", "compare_balancing"),
    ("compare-negatives", "selfsup_lab.experiments.negatives", "compare_negatives"),
])
def test_ctrl_c_in_a_comparison_says_how_to_continue(command, module, function, monkeypatch, capsys):
    import importlib

    received = {}

    def interrupted(*args, **kwargs):
        received.update(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(module), function, interrupted)
    assert main([command, "--quick"]) == 130
    assert capsys.readouterr().err.strip().endswith("re-run the same command with --reuse to continue")
    assert main([command, "--quick", "--overwrite", "--batch-sizes", "16"]) == 130  # --reuse with it would be refused
    assert "re-run the same command with --reuse instead of --overwrite" in capsys.readouterr().err
    assert tuple(received["batch_sizes"]) == (16,)  # --quick keeps batch sizes given on the command line

    from selfsup_lab.errors import Terminated

    def terminated(*args, **kwargs):  # SIGTERM from a job scheduler: the same stop, the shell's code for it
        raise Terminated

    monkeypatch.setattr(importlib.import_module(module), function, terminated)
    assert main([command, "--quick"]) == 143
    assert capsys.readouterr().err.strip().endswith("re-run the same command with --reuse to continue")


def test_the_summary_line_gives_the_occupancy_per_epoch_per_batch_and_without_the_rule():
    import types

    from selfsup_lab import cli

    occupancy = {"entropy_ratio": 0.47, "effective_clusters": 5.3, "num_clusters": 35, "max_share": 0.2, "empty": 27,
                 "batch_entropy_ratio": 0.016, "batch_max_share": 0.988}
    run = types.SimpleNamespace(metrics={"knn_top1": 0.603, "occupancy": occupancy, "occupancy_without_rule":
                                         {"entropy_ratio": 0.82, "max_share": 0.204, "empty": 1}})
    line = cli._summary(run)
    assert "knn_top1=0.603" in line and "occupancy entropy=0.47 effective=5.3/35 largest=20.0%" in line
    assert "per batch: entropy=0.02 largest=98.8%" in line and "without the balancing rule: entropy=0.82" in line
    del occupancy["batch_entropy_ratio"]  # a run directory written before the per-batch numbers existed
    assert "per batch" not in cli._summary(run)


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", ""], "--dataset is empty; give it a value or leave it out (an unset shell variable?)"),
    (["train", "--method", ""], "--method is empty"),
    (["train", "--out", " "], "--out is empty"),
    (["compare-negatives", "--dataset", ""], "--dataset is empty"),
    (["eval", ""], "the run directory given is an empty string"),
    (["train", "--set", "temperature=0.5,proj_dim=64"], "--set takes its key=value pairs separated by spaces, not "
                                                        "commas: --set temperature=0.5 proj_dim=64"),
])
def test_an_empty_or_comma_joined_value_is_refused_not_taken_for_the_default(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1  # one sentence, one line


def test_compare_negatives_quick_is_ci_scale(monkeypatch):
    from selfsup_lab.experiments import negatives

    received = {}

    def record(*args, **kwargs):
        received.update(kwargs)
        raise KeyboardInterrupt  # stop before anything is trained

    monkeypatch.setattr(negatives, "compare_negatives", record)
    assert main(["compare-negatives", "--quick"]) == 130
    assert tuple(received["batch_sizes"]) == (32, 64) and received["epochs"] == 1  # --help: 1 epoch on 128 images
    assert received["train_subset"] == 128 and received["knn_k"] == 20  # a bank of 128 images: 20 neighbours
    received.clear()
    assert main(["compare-negatives", "--quick", "--dataset", "synthetic:n=96,classes=3,size=8"]) == 130
    assert "train_subset" not in received  # 96 images: all of them, without a warning about a subset nobody typed
    assert main(["compare-negatives", "--quick", "--batch-sizes", "64", "256"]) == 130
    assert tuple(received["batch_sizes"]) == (64, 256)  # given, though they are the defaults: not replaced by QUICK's
    received.clear()
    assert main(["compare-negatives"]) == 130
    assert "batch_sizes" not in received  # not given: compare_negatives' own default


def test_a_training_flag_set_to_zero_reaches_the_comparison():
    from selfsup_lab.cli import build_parser
    from selfsup_lab.experiments import training_options

    args = build_parser().parse_args(["compare-negatives", "--weight-decay", "0"])
    assert training_options(args) == {"weight_decay": 0.0}  # 0 is a setting (no decay), not "not given"


def finished_run(out, metrics=None, status="finished"):
    """What `api.train` returns, as far as the command reads it."""
    return types.SimpleNamespace(status=status, out=Path(out), metrics=metrics or {}, figure_files=[])


def test_every_train_flag_reaches_the_training_under_its_own_name(tmp_path, monkeypatch, capsys):
    received = []

    def record(method, dataset, **kwargs):
        received.append((method, dataset, kwargs))
        return finished_run(kwargs.get("out", "runs/simclr-digits"), {"knn_top1": 0.0, "linear_top1": 0.25})

    monkeypatch.setattr(api, "train", record)
    monkeypatch.chdir(tmp_path)
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert main(["train", "--method", "swav", "--dataset", "synthetic:n=64", "--epochs", "3", "--batch-size", "16",
                 "--backbone", "convnet", "--device", "cpu", "--out", str(out), "--seed", "0", "--optimizer", "lars",
                 "--lr", "0.5", "--weight-decay", "0", "--warmup-epochs", "0", "--crop-scale", "0.3", "1",
                 "--augmentation", "torchvision", "--eval-every", "2", "--knn-k", "5", "--data-dir", str(cache),
                 "--train-subset", "40", "--no-figures", "--no-progress", "--compile",
                 "--set", "proj_dim =16", "note=a=b"]) == 0
    # zeros are settings, not "not given"; a key is trimmed, a value is split at its first '=' only
    assert received.pop() == ("swav", "synthetic:n=64", dict(
        resume=False, overwrite=False, method_options={"proj_dim": "16", "note": "a=b"}, epochs=3, batch_size=16,
        backbone="convnet", device="cpu", out=str(out), seed=0, optimizer="lars", lr=0.5, weight_decay=0.0,
        warmup_epochs=0, crop_scale=[0.3, 1.0], augmentation="torchvision", compile=True, eval_every=2, knn_k=5,
        data_dir=str(cache), train_subset=40, figures=False, progress=False))
    # a score of 0 is a score; no figures drawn, no figures line
    assert capsys.readouterr().out == f"done: {out}\n  knn_top1=0.000  linear_top1=0.250\n"
    assert main(["train"]) == 0  # flags not given are left out: the library's defaults decide
    assert received.pop() == (None, None, dict(resume=False, overwrite=False, method_options={}, progress=True))
    # a resume keeps the run's own choice of figures unless told (a --no-figures run stays without them)
    assert main(["train", "--resume", "--out", str(out)]) == 0 and "figures" not in received.pop()[2]
    assert main(["train", "--resume", "--out", str(out), "--figures"]) == 0 and received.pop()[2]["figures"] is True


def test_set_keys_are_trimmed_so_a_stray_space_still_counts_as_the_same_option(monkeypatch, capsys):
    monkeypatch.setattr(api, "train", lambda *args, **kwargs: pytest.fail("trained with an ambiguous --set"))
    assert main(["train", "--set", "temperature=0.5", "temperature =0.7"]) == 2
    assert "--set gives 'temperature' twice (0.5 and 0.7)" in capsys.readouterr().err
    assert cli._parse_set(["temperature = 0.5", " one_pass= true "]) == {"temperature": "0.5", "one_pass": "true"}


def test_a_stopped_run_says_where_its_checkpoint_is_and_how_to_continue(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(api, "train", lambda *args, **kwargs: finished_run("runs/simclr-digits",
                                                                           status="stopped after epoch 2"))
    monkeypatch.chdir(tmp_path)
    assert main(["train"]) == 0  # no --out: the command names the directory the run went to
    assert capsys.readouterr().out == ("stopped after epoch 2; the last checkpoint is in runs/simclr-digits — "
                                       "continue with: selfsup-lab train --resume --out runs/simclr-digits\n")


def test_only_rank_0_prints_the_result(tmp_path, monkeypatch, capsys):
    # under torchrun every rank runs the command; one "done:" line, not one per GPU
    monkeypatch.setattr(api, "train", lambda *args, **kwargs: finished_run(tmp_path, {"knn_top1": 0.5}))
    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    assert main(["train", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out == ""


def test_ctrl_c_in_a_fresh_run_directory_before_its_first_checkpoint(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "train", interrupted)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")  # written before the first epoch: a directory is no checkpoint
    assert main(["train", "--out", str(out), "--epochs", "5"]) == 130
    assert "no checkpoint was written" in capsys.readouterr().err
    (out / "checkpoint.pt").write_bytes(b"")
    assert main(["train", "--out", str(out), "--epochs", "5", "--overwrite"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("\ninterrupted")  # the newline ends a progress bar's line
    # a fresh run's checkpoint holds its own --epochs 5: nothing to repeat
    assert err.strip().endswith(f"continue with: selfsup-lab train --resume --out {out}")


def test_resume_without_out_is_refused_before_anything_is_read(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume"]) == 2
    assert capsys.readouterr().err == "error: --resume needs --out pointing at the run directory to continue\n"


def test_eval_reopens_the_run_on_the_device_asked_and_prints_its_scores(tmp_path, monkeypatch, capsys):
    opened = []

    class Reopened:
        out, metrics = tmp_path, {}

        def evaluate(self):
            self.metrics = {"knn_top1": 0.5}

    def load_run(run_dir, device="auto"):
        opened.append((run_dir, device))
        return Reopened()

    monkeypatch.setattr(api, "load_run", load_run)
    assert main(["eval", str(tmp_path), "--device", "cpu"]) == 0
    assert main(["eval", str(tmp_path)]) == 0
    assert opened == [(str(tmp_path), "cpu"), (str(tmp_path), "auto")]
    assert capsys.readouterr().out == f"metrics written to {tmp_path / 'metrics.json'}\n  knn_top1=0.500\n" * 2


def test_ctrl_c_during_eval_exits_130_in_one_line(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "load_run", interrupted)
    assert main(["eval", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "interrupted\n"


@pytest.mark.parametrize("error", [
    DataUnavailableError("CIFAR-10 could not be downloaded; check the network or use --dataset digits"),
    TrainingDiverged("the loss became NaN in epoch 2; the last checkpoint is kept — lower --lr", what="the loss"),
])
def test_data_and_divergence_errors_are_one_sentence_too(error, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(api, "train", fail)
    assert main(["train", "--out", "unused"]) == 2
    assert capsys.readouterr().err == f"error: {error}\n"


def test_a_divergence_says_what_went_wrong_without_the_advice():
    assert TrainingDiverged("loss NaN; lower --lr").what == "loss NaN; lower --lr"  # no `what`: the message
    err = TrainingDiverged("loss NaN; lower --lr", what="loss NaN")
    assert err.what == "loss NaN" and str(err) == "loss NaN; lower --lr"


@pytest.mark.parametrize("flags, message", [
    (["--lr", "inf"], "--lr must be above 0, got inf"),  # infinity passes no range
    (["--crop-scale", "0", "1"], "--crop-scale must be two fractions of the image area in (0, 1]"),  # entry by entry
    (["--set", "temperature==0.5"], "option 'temperature' expects float, got '=0.5'"),  # split at the first '='
])
def test_out_of_range_settings_are_one_sentence_before_anything_is_written(flags, message, tmp_path, monkeypatch,
                                                                          capsys):
    monkeypatch.setattr(api.Trainer, "fit", lambda self: pytest.fail("a setting out of range was trained with"))
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_methods_lists_each_description_and_the_options_of_those_named(capsys):
    from selfsup_lab.methods import METHODS
    from selfsup_lab.methods.swav import SwAV

    defaults = SwAV.Options()
    assert (defaults.temperature, defaults.queue_length) == (0.1, 0)
    assert main(["methods", "swav"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"swav         {METHODS['swav'][2]}\n")
    assert "    --set temperature=<float>  (default 0.1)\n" in out
    assert "    --set queue_length=<int>  (default 0)\n" in out  # 0 is a default, not "set at run time"
    assert "simclr" not in out and "a method of your own" not in out  # only what was asked for
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name, (_, _, description) in METHODS.items():
        assert f"{name:12s} {description}\n" in out
    assert "--set" not in out  # options only with -v or a name
    assert "a method of your own: --method package.module.ClassName" in out
    assert main(["methods", "-v"]) == 0
    assert "--set num_prototypes=<int | None>  (default None: set at run time" in capsys.readouterr().out  # excb


def test_datasets_lists_each_name_with_its_description(capsys):
    from selfsup_lab.data import DATASETS

    assert main(["datasets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(DATASETS)
    for line, (name, description) in zip(lines, DATASETS.items()):
        assert line.split()[0] == name and line.endswith(description)


def test_no_subcommand_prints_the_help(capsys):
    assert main([]) == 0
    assert "train" in capsys.readouterr().out


def test_the_labs_warnings_are_one_line_and_others_keep_pythons_format(monkeypatch):
    assert cli._one_line_warning("k is large", UserWarning, api.__file__, 43) == "warning: k is large\n"
    # a user's script (here this test file) is not the lab: Python's format, with its file and line
    assert cli._one_line_warning("theirs", UserWarning, __file__, 7).startswith(f"{__file__}:7: UserWarning: theirs")
    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    assert cli._one_line_warning("k is large", UserWarning, api.__file__, 43) == ""  # rank 0 already says it


def test_main_shows_the_labs_warnings_in_one_line_then_gives_pythons_format_back(tmp_path, monkeypatch):
    shown = []

    def warn_and_stop(*args, **kwargs):
        shown.append(warnings.formatwarning("a lab warning", UserWarning, api.__file__, 1))
        raise KeyboardInterrupt

    def pythons_format():  # the lab's own file, shown as Python shows any warning: file, line, category
        return warnings.formatwarning("m", UserWarning, api.__file__, 1).startswith(f"{api.__file__}:1: UserWarning: m")

    monkeypatch.setattr(api, "train", warn_and_stop)
    assert main(["train", "--out", str(tmp_path / "run")]) == 130
    assert shown == ["warning: a lab warning\n"] and pythons_format()
    assert main(["datasets"]) == 0 and pythons_format()  # after a plain return too


def test_main_gives_back_a_format_the_caller_had_set_and_uses_it_for_other_libraries(monkeypatch):
    def notebooks_format(message, category, filename, lineno, line=None):
        return f"[notebook] {message}\n"

    shown = []

    def warn_twice(args):
        shown.append(warnings.formatwarning("from torch", UserWarning, "/somewhere/torch/nn.py", 7))
        shown.append(warnings.formatwarning("from the lab", UserWarning, api.__file__, 1))
        return 0

    monkeypatch.setattr(warnings, "formatwarning", notebooks_format)
    monkeypatch.setattr(cli, "cmd_datasets", warn_twice)
    assert main(["datasets"]) == 0
    assert shown == ["[notebook] from torch\n", "warning: from the lab\n"]
    assert warnings.formatwarning is notebooks_format


def test_the_summary_line_shows_a_batch_entropy_of_zero_and_the_rule_free_head_s_own_numbers():
    occupancy = {"entropy_ratio": 0.9, "effective_clusters": 8.0, "num_clusters": 10, "max_share": 0.15, "empty": 0,
                 "batch_entropy_ratio": 0.0, "batch_max_share": 1.0}
    run = types.SimpleNamespace(metrics={"occupancy": occupancy, "occupancy_without_rule":
                                         {"entropy_ratio": 0.3, "max_share": 0.6, "empty": 7}})
    line = cli._summary(run)
    assert "per batch: entropy=0.00 largest=100.0%" in line  # 0, the worst case (a batch in one cluster), is shown
    assert "without the balancing rule: entropy=0.30 largest=60.0% empty=7" in line
