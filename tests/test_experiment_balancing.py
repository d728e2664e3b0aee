"""compare-balancing at toy scale: every run, the table's columns, the figures, and the command line."""
import json

import pytest

from selfsup_lab.errors import UserError
from selfsup_lab.experiments import parse_method
from selfsup_lab.experiments.balancing import compare_balancing, markdown_table

TINY = dict(dataset="synthetic:n=96,classes=3,size=16", epochs=1, backbone="convnet", device="cpu",
            progress=False, shared_options={"proj_hidden": 32, "proj_dim": 16})


def test_two_methods_two_batch_sizes_write_table_json_and_figures(tmp_path, monkeypatch):
    from selfsup_lab.experiments import balancing

    drawn, original = {}, balancing.comparison_figure
    monkeypatch.setattr(balancing, "comparison_figure",
                        lambda *args, **kwargs: drawn.update(kwargs) or original(*args, **kwargs))
    result = compare_balancing(methods=("coke:num_clusters=3", "deepcluster"), batch_sizes=(16, 32),
                               out=tmp_path, **TINY)
    assert not result["failed"], result["failed"]
    assert [(r["method"], r["batch_size"]) for r in result["rows"]] == [
        ("coke:num_clusters=3", 16), ("deepcluster", 16), ("coke:num_clusters=3", 32), ("deepcluster", 32)]
    for name in ("results.md", "results.json", "figures/comparison.png", "figures/batch_size_sweep.png"):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "results.json").read_text())
    for row in saved["rows"]:
        for key in ("k", "entropy_ratio", "effective_clusters", "max_share", "empty", "knn_top1", "nmi", "acc",
                    "ari", "clustering_from", "minutes", "k_info", "entropy_ratio_without_rule",
                    "empty_without_rule"):
            assert row[key] is not None, key
        assert 0.0 <= row["entropy_ratio"] <= 1.0 and row["k"] >= 2
    assert saved["rows"][0]["k"] == 3  # the spec's option reached CoKe only
    assert len(saved["occupancy_per_epoch"]["coke_num_clusters=3-b16"]) == 1  # one count vector per epoch
    header = (tmp_path / "results.md").read_text().split("\n")
    table_head = next(line for line in header if line.startswith("| method"))
    for column in ("H/log K", "H/log K per batch", "eff. clusters", "largest share", "empty", "H/log K without rule", "kNN top-1", "NMI", "ACC", "ARI", "minutes",
                   "clustering from"):
        assert column in table_head
    assert (tmp_path / "coke_num_clusters=3-b16" / "metrics.json").exists()  # a spec's folder: its label
    # the figure's dotted lines: one batch's entropy per epoch, from each run's history
    history = [json.loads(line) for line in (tmp_path / "deepcluster-b32" / "history.jsonl").read_text().splitlines()]
    assert drawn["per_batch"][("deepcluster", 32)] == [r["occupancy"]["batch_entropy_ratio"] for r in history]
    # the reference row: the untrained backbone, evaluated the same way, last in the table
    untrained = saved["untrained"]
    assert untrained["method"] == "untrained network" and untrained["steps"] == 0
    assert 0.0 <= untrained["knn_top1"] <= 1.0 and untrained["clustering_from"].startswith("spherical k-means")
    last_row = [line for line in header if line.startswith("|")][-1]
    assert last_row.startswith("| untrained network | – |")


def test_bad_arguments_fail_before_training(tmp_path):
    with pytest.raises(UserError, match="unknown method"):
        compare_balancing(methods=("kmeans-magic",), out=tmp_path, **TINY)
    with pytest.raises(UserError, match="unknown training option"):
        compare_balancing(methods=("coke",), out=tmp_path, warmup=3, **TINY)
    assert parse_method("coke:dual_lr=1,ratio=0.5") == ("coke", {"dual_lr": "1", "ratio": "0.5"})


def test_failed_run_is_reported_in_the_table():
    table = markdown_table([{"method": "naive", "batch_size": 32, "error": "RuntimeError: boom"}])
    assert "failed: RuntimeError: boom" in table


def test_command_line_is_wired():
    from selfsup_lab.cli import build_parser

    args = build_parser().parse_args(["compare-balancing", "--batch-sizes", "32", "128", "--quick",
                                      "--methods", "coke", "swav"])
    assert args.batch_sizes == [32, 128] and args.quick and args.methods == ["coke", "swav"]
    assert args.func.__module__ == "selfsup_lab.experiments.balancing"
    from selfsup_lab.experiments import training_options

    args = build_parser().parse_args(["compare-negatives", "--augmentation", "torchvision", "--crop-scale", "0.3", "1"])
    assert training_options(args) == {"augmentation": "torchvision", "crop_scale": [0.3, 1.0]}


def test_steps_budget_gives_every_batch_size_the_same_number_of_steps(tmp_path):
    from selfsup_lab.experiments import epochs_for_steps

    # 96 synthetic images: B = 16 → 6 steps per epoch, B = 32 → 3 steps per epoch
    assert epochs_for_steps(12, (16, 32), TINY["dataset"], {}) == {16: 2, 32: 4}
    assert epochs_for_steps(12, (16, 32), TINY["dataset"], {"train_subset": 48}) == {16: 4, 32: 12}
    options = {k: v for k, v in TINY.items() if k != "epochs"}
    result = compare_balancing(methods=("naive",), batch_sizes=(16, 32), steps=6, out=tmp_path, **options)
    assert [(r["batch_size"], r["epochs"], r["steps"]) for r in result["rows"]] == [(16, 1, 6), (32, 2, 6)]
    assert "steps" in (tmp_path / "results.md").read_text().split("\n")[4]  # the table's header row
    with pytest.raises(UserError, match="either epochs or steps"):
        compare_balancing(methods=("naive",), steps=6, out=tmp_path, **TINY)
    with pytest.raises(UserError, match="larger than the 96-image training set"):
        epochs_for_steps(6, (128,), TINY["dataset"], {})


def test_a_steps_budget_that_whole_epochs_cannot_meet_says_what_each_run_gets():
    from selfsup_lab.experiments import epoch_budget

    # 96 images: B = 16 → 6 steps per epoch, B = 32 → 3; 4 steps round to 1 epoch (6 steps) and 1 epoch (3 steps)
    epochs, label = epoch_budget(None, 4, (16, 32), TINY["dataset"], {}, default_epochs=5)
    assert epochs == {16: 1, 32: 1}
    assert label == "about 4 steps per run (whole epochs: 6 at B = 16, 3 at B = 32)"
    assert epoch_budget(None, 6, (16, 32), TINY["dataset"], {}, default_epochs=5)[1] == "6 steps per run"


def test_several_seeds_give_one_row_per_method_with_mean_and_std(tmp_path):
    result = compare_balancing(methods=("naive",), batch_sizes=(16,), seeds=(0, 1), out=tmp_path, **TINY)
    assert [(r["method"], r["seed"]) for r in result["runs"]] == [("naive", 0), ("naive", 1)]
    (row,) = result["rows"]
    knn = [r["knn_top1"] for r in result["runs"]]
    assert row["seeds"] == [0, 1] and row["knn_top1"] == pytest.approx(sum(knn) / 2)
    assert knn[0] != knn[1]  # two seeds, two different runs
    # a value that differs between seeds carries its spread (sample std), and the table shows it
    assert row["knn_top1_std"] == pytest.approx(abs(knn[0] - knn[1]) / 2 ** 0.5)
    assert f"{row['knn_top1']:.3f} ± {row['knn_top1_std']:.3f}" in (tmp_path / "results.md").read_text()
    assert row["k"] == result["runs"][0]["k"] and "k_std" not in row  # the same in both seeds: kept as is
    assert (tmp_path / "naive-b16-s0" / "metrics.json").exists() and (tmp_path / "naive-b16-s1").is_dir()
    assert result["untrained"]["seeds"] == [0, 1]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["seeds"] == [0, 1] and set(saved["occupancy_per_epoch"]) == {"naive-b16-s0", "naive-b16-s1"}


def test_aggregate_seeds_keeps_constants_and_skips_failed_runs():
    from selfsup_lab.experiments import aggregate_seeds

    rows = [{"method": "swav", "k": 71, "empty": 0, "knn_top1": 0.5, "seed": 0},
            {"method": "swav", "k": 71, "empty": 3, "knn_top1": 0.7, "seed": 1},
            {"method": "swav", "error": "RuntimeError: boom", "seed": 2}]
    row = aggregate_seeds(rows)
    assert row["k"] == 71 and "k_std" not in row and row["seeds"] == [0, 1] and "seed" not in row
    assert row["empty"] == 1.5 and row["empty_std"] == pytest.approx(2.1213, abs=1e-4)
    assert row["knn_top1"] == pytest.approx(0.6) and "error" not in row
    assert aggregate_seeds(rows[2:])["error"] == "RuntimeError: boom"  # every seed failed: the failure stays
    assert "1.5 ± 2.1" in markdown_table([{**row, "batch_size": 32}])  # whole-number column: one decimal


def test_one_method_against_itself_with_other_options(tmp_path):
    result = compare_balancing(methods=("naive", "naive:hard_targets=true"), batch_sizes=(16,), out=tmp_path, **TINY)
    assert [r["method"] for r in result["rows"]] == ["naive", "naive:hard_targets=true"]
    configs = [json.loads((tmp_path / folder / "config.json").read_text())
               for folder in ("naive-b16", "naive_hard_targets=true-b16")]
    assert [c["resolved"]["method_options"]["hard_targets"] for c in configs] == [False, True]
    with pytest.raises(UserError, match="listed twice"):
        compare_balancing(methods=("naive", "naive"), out=tmp_path, **TINY)


@pytest.mark.parametrize("repeated, message", [({"batch_sizes": (16, 32, 16)}, "--batch-sizes lists 16 twice"),
                                               ({"seeds": (1, 1)}, "--seeds lists 1 twice")])
def test_a_repeated_batch_size_or_seed_is_refused_before_training(tmp_path, repeated, message):
    # the same run twice into one folder, and a spread over "seeds" that is one seed
    with pytest.raises(UserError, match=f"{message}; give each value once"):
        compare_balancing(methods=("naive",), out=tmp_path / "out", **{**TINY, **repeated})
    assert not (tmp_path / "out").exists()


def test_a_batch_size_below_two_is_named_by_the_comparisons_own_flag(tmp_path):
    with pytest.raises(UserError, match="--batch-sizes must each be at least 2"):
        compare_balancing(methods=("naive",), out=tmp_path / "out", **{**TINY, "batch_sizes": (1, 32)})
    assert not (tmp_path / "out").exists()


def test_reuse_loads_finished_runs_and_continues_interrupted_ones(tmp_path, monkeypatch):
    from selfsup_lab.train import Trainer

    options = {k: v for k, v in TINY.items() if k != "epochs"}
    compare_balancing(methods=("naive",), batch_sizes=(16,), epochs=1, out=tmp_path, **options)
    # as if a 2-epoch run had stopped after epoch 1: a checkpoint, its config, no metrics
    (tmp_path / "naive-b16" / "metrics.json").unlink()
    config_path = tmp_path / "naive-b16" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "epochs": 2}))
    result = compare_balancing(methods=("naive",), batch_sizes=(16,), epochs=2, out=tmp_path, reuse=True, **options)
    metrics = json.loads((tmp_path / "naive-b16" / "metrics.json").read_text())
    assert metrics["resumed"] is True and metrics["epochs_trained"] == 2
    history = (tmp_path / "naive-b16" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == [1, 2]  # epoch 1 was not trained again
    # finished with these settings: loaded, not trained (training would fail here)
    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("a finished run was trained again"))
    again = compare_balancing(methods=("naive",), batch_sizes=(16,), epochs=2, out=tmp_path, reuse=True, **options)
    assert again["rows"][0]["knn_top1"] == result["rows"][0]["knn_top1"]
    # a run written before a setting existed (crop_scale here) used its default: still reused
    saved = json.loads(config_path.read_text())
    del saved["crop_scale"]
    config_path.write_text(json.dumps(saved))
    compare_balancing(methods=("naive",), batch_sizes=(16,), epochs=2, out=tmp_path, reuse=True, **options)
    # ...but not with a different value of it
    with pytest.raises(pytest.fail.Exception, match="trained again"):
        compare_balancing(methods=("naive",), batch_sizes=(16,), epochs=2, out=tmp_path, reuse=True,
                          crop_scale=(0.3, 1.0), **options)


def test_reuse_trains_a_run_with_other_settings_again_instead_of_continuing_it(tmp_path, capsys):
    options = {k: v for k, v in TINY.items() if k != "epochs"}
    compare_balancing(methods=("naive",), batch_sizes=(16,), epochs=1, out=tmp_path, **options)
    for changed, said in (({"epochs": 2}, "epochs 1 → 2"), ({"epochs": 1, "lr": 0.5}, "epochs 2 → 1, lr None → 0.5")):
        capsys.readouterr()
        compare_balancing(methods=("naive",), batch_sizes=(16,), out=tmp_path, reuse=True, **changed, **options)
        assert f"was trained with other settings ({said}): training it again" in capsys.readouterr().out
        metrics = json.loads((tmp_path / "naive-b16" / "metrics.json").read_text())
        assert metrics["resumed"] is False and metrics["epochs_trained"] == changed["epochs"]
        config = json.loads((tmp_path / "naive-b16" / "config.json").read_text())
        assert config["epochs"] == changed["epochs"] and config["lr"] == changed.get("lr")


def test_an_out_with_runs_is_refused_on_the_command_line_unless_reuse_or_overwrite(tmp_path, capsys):
    from selfsup_lab.cli import main

    command = ["compare-balancing", "--methods", "naive", "--dataset", TINY["dataset"], "--epochs", "1",
               "--batch-sizes", "16", "--backbone", "convnet", "--device", "cpu", "--no-progress", "--out", str(tmp_path)]
    (tmp_path / "naive-b16").mkdir(parents=True)
    (tmp_path / "naive-b16" / "checkpoint.pt").write_bytes(b"an earlier run")
    assert main(command) == 2
    assert "already holds the runs of a comparison; add --reuse" in capsys.readouterr().err
    assert (tmp_path / "naive-b16" / "checkpoint.pt").read_bytes() == b"an earlier run"  # untouched
    assert main(command + ["--reuse", "--overwrite"]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_a_diverging_method_is_reported_and_the_others_still_run(tmp_path):
    result = compare_balancing(methods=("naive:student_temperature=1e-30", "coke:num_clusters=3"), batch_sizes=(16,),
                               out=tmp_path, **TINY)
    assert [f["method"] for f in result["failed"]] == ["naive:student_temperature=1e-30"]
    assert "became" in result["failed"][0]["error"]
    assert [r["method"] for r in result["rows"] if not r.get("error")] == ["coke:num_clusters=3"]


def test_reuse_with_another_knn_k_evaluates_again_without_training(tmp_path, monkeypatch):
    from selfsup_lab.train import Trainer

    options = {k: v for k, v in TINY.items() if k != "epochs"}
    compare_balancing(methods=("naive",), batch_sizes=(16,), epochs=1, out=tmp_path, **options)
    assert "kNN k=200 τ=0.1" in (tmp_path / "results.md").read_text()
    weights = (tmp_path / "naive-b16" / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(Trainer, "fit", lambda self: pytest.fail("an evaluation setting made the run train again"))
    compare_balancing(methods=("naive",), batch_sizes=(16,), epochs=1, out=tmp_path, reuse=True, knn_k=5, **options)
    assert (tmp_path / "naive-b16" / "checkpoint.pt").read_bytes() == weights
    assert "k=5 " in json.loads((tmp_path / "naive-b16" / "metrics.json").read_text())["protocol"]
    assert json.loads((tmp_path / "naive-b16" / "config.json").read_text())["knn_k"] == 5
    assert "kNN k=5 τ=0.1" in (tmp_path / "results.md").read_text()
