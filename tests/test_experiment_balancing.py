"""compare-balancing at toy scale: every run, the table's columns, the figures, and the command line."""
import json
import warnings

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
    with pytest.warns(UserWarning, match=r"--steps 4 cannot be matched at B = 16: runs train whole epochs, so they "
                                         r"get 6 steps at B = 16, 3 steps at B = 32"):  # 50 % off; 3 is 25 % off
        epochs, label = epoch_budget(None, 4, (16, 32), TINY["dataset"], {}, default_epochs=5)
    assert epochs == {16: 1, 32: 1}
    assert label == "about 4 steps per run (whole epochs: 6 at B = 16, 3 at B = 32)"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # met exactly: nothing to warn about
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


def test_a_measurement_the_seeds_agree_on_still_reads_as_a_mean_over_seeds():
    from selfsup_lab.experiments import aggregate_seeds, table_cell

    rows = [{"method": "coke", "k": 10, "epochs": 5, "knn_top1": 0.75, "empty": 0, "seed": s} for s in (0, 1)]
    row = aggregate_seeds(rows)
    assert table_cell(row, "knn_top1", ".3f") == "0.750 ± 0.000" and table_cell(row, "empty", "d") == "0 ± 0.0"
    assert table_cell(row, "k", "d") == "10" and table_cell(row, "epochs", "d") == "5"  # settings: no ±
    assert table_cell(aggregate_seeds(rows[:1]), "knn_top1", ".3f") == "0.750"  # one seed: a single run's value


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


def test_every_table_value_sits_under_its_own_header():
    # guards against two columns' headers swapped, or the "clustering from" note inverted
    row = {"method": "coke", "batch_size": 32, "k": 10, "epochs": 2, "steps": 8, "entropy_ratio": 0.91,
           "batch_entropy_ratio": 0.42, "effective_clusters": 8.7, "max_share": 0.15, "empty": 1,
           "entropy_ratio_without_rule": 0.55, "empty_without_rule": 4, "knn_top1": 0.81, "nmi": 0.62, "acc": 0.7,
           "ari": 0.53, "minutes": 0.25, "clustering_from": "the method's own K = C head"}
    kmeans = {**row, "method": "swav", "clustering_from": "spherical k-means (K = C) on backbone features"}
    failed = {"method": "naive", "batch_size": 32, "error": "RuntimeError: boom"}
    lines = markdown_table([row, kmeans, failed]).split("\n")
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    assert all(len(line) == len(cells[0]) for line in cells)  # the separator and a failed run's line included
    assert dict(zip(cells[0], cells[2])) == {
        "method": "coke", "B": "32", "K": "10", "epochs": "2", "steps": "8", "H/log K": "0.910",
        "H/log K per batch": "0.420", "eff. clusters": "8.7", "largest share": "0.150", "empty": "1",
        "H/log K without rule": "0.550", "empty without rule": "4", "kNN top-1": "0.810", "NMI": "0.620",
        "ACC": "0.700", "ARI": "0.530", "minutes": "0.25", "clustering from": "own K = C head"}
    assert dict(zip(cells[0], cells[3]))["clustering from"] == "k-means K = C"


def test_a_tiny_negative_score_reads_zero_not_minus_zero():
    from selfsup_lab.experiments import table_cell

    assert table_cell({"ari": -0.0002}, "ari", ".3f") == "0.000"  # ARI of a chance clustering can dip below 0
    assert table_cell({"ari": -0.02}, "ari", ".3f") == "-0.020"  # a real negative stays one


def test_reuse_counts_a_run_as_finished_only_if_trained_with_the_same_settings(tmp_path):
    """A run in OUT is kept by --reuse only if it was trained as this comparison would train it (where it ran and
    how it is evaluated may differ); another seed or dataset in the same folder must be trained again."""
    import dataclasses

    from selfsup_lab.api import make_config
    from selfsup_lab.experiments import finished_run

    def config(dataset=TINY["dataset"], **changes):
        return make_config("naive", dataset, **{"epochs": 1, "batch_size": 16, "out": str(tmp_path), **changes})

    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(config()), default=str))
    assert not finished_run(config())  # no metrics.json: interrupted, not finished
    (tmp_path / "metrics.json").write_text("{}")
    assert finished_run(config())
    for elsewhere_or_evaluated in ({"device": "cpu"}, {"data_dir": str(tmp_path)}, {"knn_k": 5},
                                   {"knn_temperature": 0.2}, {"eval_every": 1}):
        assert finished_run(config(**elsewhere_or_evaluated)), elsewhere_or_evaluated
    for trained_otherwise in ({"seed": 1}, {"dataset": "synthetic:n=96,classes=4,size=16"}, {"lr": 0.5},
                              {"batch_size": 32}, {"train_subset": 48}, {"hard_targets": True}):
        assert not finished_run(config(**trained_otherwise)), trained_otherwise


def test_a_steps_budget_rounds_to_the_nearest_whole_epoch():
    from selfsup_lab.experiments import epoch_budget, epochs_for_steps

    # 96 images: B = 16 → 6 steps per epoch, B = 20 → 4; 11 steps = 1.8 and 2.8 epochs
    assert epochs_for_steps(11, (16, 20), TINY["dataset"], {}) == {16: 2, 20: 3}
    # one batch size meets 6 steps exactly, the other cannot (1.5 epochs → 2): the label says so
    with pytest.warns(UserWarning, match="cannot be matched at B = 20"):  # 8 steps for 6: a third more
        assert epoch_budget(None, 6, (16, 20), TINY["dataset"], {}, default_epochs=5)[1] == \
            "about 6 steps per run (whole epochs: 6 at B = 16, 8 at B = 20)"


def test_the_smallest_batch_size_allowed_is_accepted():
    from selfsup_lab.experiments import distinct

    assert distinct((2, 8), "--batch-sizes", at_least=2) == [2, 8]


def test_the_comparison_figure_shows_the_first_seed_given(tmp_path, monkeypatch):
    from selfsup_lab.experiments import balancing

    drawn, original = [], balancing.comparison_figure
    monkeypatch.setattr(balancing, "comparison_figure",
                        lambda occupancy, *args, **kwargs: drawn.append(occupancy) or original(occupancy, *args, **kwargs))
    result = compare_balancing(methods=("naive",), batch_sizes=(16,), seeds=(1, 0), out=tmp_path, **TINY)
    saved = json.loads((tmp_path / "results.json").read_text())["occupancy_per_epoch"]
    assert saved["naive-b16-s1"] != saved["naive-b16-s0"]  # two seeds, two different runs
    assert drawn[0][("naive", 16)] == saved["naive-b16-s1"]
    for run in result["runs"]:  # the minutes column: each run's own wall-clock time
        metrics = json.loads((tmp_path / f"naive-b16-s{run['seed']}" / "metrics.json").read_text())
        assert run["minutes"] == pytest.approx(metrics["wall_seconds"] / 60)


def test_a_row_without_the_rule_is_the_same_head_with_the_rule_off(tmp_path):
    import selfsup_lab
    from selfsup_lab.experiments.balancing import summarise

    run = selfsup_lab.train("swav", TINY["dataset"], epochs=1, batch_size=16, device="cpu", backbone="convnet",
                            proj_hidden=32, proj_dim=16, knn_k=20, out=str(tmp_path), progress=False, figures=False)
    row = summarise(run, minutes=0.5)
    with_rule, without_rule = run.history[-1]["occupancy"], run.metrics["occupancy_without_rule"]
    assert with_rule["entropy_ratio"] != without_rule["entropy_ratio"]  # Sinkhorn changed the assignments
    assert row["entropy_ratio"] == with_rule["entropy_ratio"] and row["max_share"] == with_rule["max_share"]
    for key in ("entropy_ratio", "max_share", "empty"):
        assert row[f"{key}_without_rule"] == without_rule[key], key


def test_quick_keeps_the_batch_sizes_it_is_given(tmp_path, monkeypatch):
    from selfsup_lab.experiments import balancing

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compare_balancing(methods=("naive",), batch_sizes=(16,), quick=True, out=tmp_path, **TINY)
    assert not [w for w in caught if "train_subset" in str(w.message)]  # 96 images: quick's 128 means all of them
    assert [r["batch_size"] for r in result["rows"]] == [16]
    assert "kNN k=20 " in (tmp_path / "results.md").read_text()  # quick's neighbours for a bank of ~100 images

    def first_run(config, reuse=False):
        trained.append(config.batch_size)
        raise KeyboardInterrupt  # no need to train it

    monkeypatch.setattr(balancing, "train_or_reuse", first_run)
    larger = {**TINY, "dataset": "synthetic:n=400,classes=3,size=16", "train_subset": 300}  # room for B = 256
    for given, expected in ((None, balancing.QUICK["batch_sizes"][0]), ((256,), 256)):  # 256: the default, typed
        trained = []
        with pytest.raises(KeyboardInterrupt):
            compare_balancing(methods=("naive",), batch_sizes=given, quick=True, out=tmp_path, overwrite=True, **larger)
        assert trained == [expected]


@pytest.mark.parametrize("budget", [{"epochs": 1}, {"steps": 2}])
def test_a_batch_size_larger_than_the_training_set_names_the_comparisons_flag(tmp_path, budget):
    settings = {**TINY, **budget} if "epochs" in budget else {**{k: v for k, v in TINY.items() if k != "epochs"},
                                                              **budget}
    with pytest.raises(UserError, match="batch size 128 is larger than the 96-image training set; use smaller "
                                        "--batch-sizes"):
        compare_balancing(methods=("naive",), batch_sizes=(16, 128), out=tmp_path, **settings)
    assert not list(tmp_path.iterdir())  # refused before any run trained


def test_quick_mode_subsets_only_a_training_set_larger_than_its_subset():
    from selfsup_lab.experiments import use_quick_subset

    for dataset, given, expected in (("synthetic:n=400,classes=3,size=8", None, 128),  # 400 training images
                                     ("synthetic:n=400,classes=3,size=8", 200, 200),   # the user's number stays
                                     ("synthetic:n=96,classes=3,size=8", None, None)):  # 96: all of them
        options = {} if given is None else {"train_subset": given}
        use_quick_subset(dataset, options, 128)
        assert options.get("train_subset") == expected, dataset


def test_the_command_exits_non_zero_when_a_run_failed(tmp_path, capsys):
    from selfsup_lab.cli import main

    command = ["compare-balancing", "--methods", "naive:student_temperature=1e-30", "--dataset", TINY["dataset"],
               "--epochs", "1", "--batch-sizes", "16", "--backbone", "convnet", "--device", "cpu", "--no-progress",
               "--out", str(tmp_path)]
    assert main(command) == 1
    assert "warning: naive:student_temperature=1e-30 (B = 16, seed 0) failed: diverged" in capsys.readouterr().out


def test_the_untrained_reference_has_batch_norm_statistics_of_the_training_images():
    """UNTRAINED_NOTE: the reference's batch-norm statistics come from one pass over the training images."""
    import torch

    from selfsup_lab.api import untrained_run

    run = untrained_run(TINY["dataset"], linear=False, backbone="convnet", device="cpu", batch_size=16, knn_k=20)
    first = next(m for m in run.method.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    hook = first.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    run.embed("train")  # the first batch norm's input does not depend on any batch norm's statistics
    hook.remove()
    x = torch.cat(seen).transpose(0, 1).flatten(1)  # channels × (images · positions)
    assert torch.allclose(first.running_mean, x.mean(dim=1), atol=1e-5)
    assert torch.allclose(first.running_var, x.var(dim=1), rtol=1e-4)


def test_reuse_returns_the_finished_run_and_keeps_its_training_time(tmp_path, monkeypatch):
    import dataclasses

    from selfsup_lab.api import make_config
    from selfsup_lab.experiments import train_or_reuse
    from selfsup_lab.train import Trainer

    config = make_config("naive", TINY["dataset"], epochs=1, batch_size=16, backbone="convnet", device="cpu",
                         knn_k=20, out=str(tmp_path), progress=False, figures=False, proj_hidden=32)
    trained = train_or_reuse(config, linear=False)
    seconds = trained.metrics["wall_seconds"]
    with monkeypatch.context() as patched:
        patched.setattr(Trainer, "fit", lambda self: pytest.fail("a finished run was trained again"))
        reused = train_or_reuse(config, reuse=True, linear=False)
        assert reused.status == "finished" and reused.trainer.epoch == 1
        assert reused.metrics["knn_top1"] == trained.metrics["knn_top1"]
        # another kNN k: evaluated again; the time stays that of the invocation that trained it
        again = train_or_reuse(dataclasses.replace(config, knn_k=5), reuse=True, linear=False)
        assert again.metrics.get("wall_seconds") == seconds
        assert json.loads((tmp_path / "metrics.json").read_text())["wall_seconds"] == seconds
    # without reuse the run is trained from scratch, not continued from the checkpoint it left
    fresh = train_or_reuse(config, linear=False)
    assert fresh.metrics["resumed"] is False and fresh.metrics["wall_seconds"] != seconds
