"""The command line: listings work, mistakes give one sentence and a non-zero exit code, no traceback."""
import json
import re
import subprocess
import sys

import pytest

from selfsup_lab.cli import main


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
