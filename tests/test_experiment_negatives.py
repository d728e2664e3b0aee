"""compare-negatives in a tiny setting: every method trains, the table and the figures are written."""
import json

import pytest

from selfsup_lab.cli import main
from selfsup_lab.errors import UserError
from selfsup_lab.experiments import parse_method
from selfsup_lab.experiments.negatives import compare_negatives

TINY = dict(dataset="synthetic:n=48,classes=3,size=16", epochs=1, device="cpu", backbone="convnet",
            linear=False, alignment_images=32)
SMALL_HEADS = {"simclr": {"proj_hidden": 32}, "gsimclr": {"proj_hidden": 32, "ae_epochs": 1, "ae_width": 4},
               "byol": {"proj_hidden": 32, "pred_hidden": 32}, "triplet": {"proj_hidden": 32, "pred_hidden": 32}}


def test_compare_negatives_writes_table_and_figures(tmp_path):
    result = compare_negatives(batch_sizes=(16,), out=tmp_path, method_options=SMALL_HEADS, **TINY)
    assert [r["method"] for r in result["rows"]] == ["simclr", "byol", "triplet", "gsimclr"]
    saved = json.loads((tmp_path / "results.json").read_text())
    for row in saved["rows"]:
        for key in ("knn_top1", "homogeneity", "completeness", "fragmentation", "mixing", "same_class_neg_rate",
                    "alignment", "uniformity"):
            assert isinstance(row[key], float), key
    assert next(r for r in saved["rows"] if r["method"] == "gsimclr")["sampler"] == "GuidedBatches"
    assert "| triplet | 16 |" in (tmp_path / "results.md").read_text()
    untrained = saved["untrained"]  # the reference: the untrained backbone, measured like the runs
    assert untrained["steps"] == 0 and untrained["same_class_neg_rate"] is None
    assert isinstance(untrained["knn_top1"], float) and isinstance(untrained["homogeneity"], float)
    assert "| untrained network | – |" in (tmp_path / "results.md").read_text()
    for name in ("homogeneity_completeness", "fragmentation_mixing", "alignment_uniformity", "metrics_vs_batch",
                 "rank_window", "cosine_distributions_b16", "same_class_negatives_b16"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 1000, name
    assert (tmp_path / "runs" / "triplet-b16-s0" / "metrics.json").exists()


def test_cli_with_method_specs(tmp_path, capsys):
    args = ["compare-negatives", "--methods", "triplet:deputy=median,proj_hidden=32,pred_hidden=32",
            "--dataset", "synthetic:n=32,classes=2,size=16", "--batch-sizes", "16", "--epochs", "1",
            "--device", "cpu", "--out", str(tmp_path)]
    assert main(args) == 0
    assert "triplet:deputy=median" in capsys.readouterr().out
    row = json.loads((tmp_path / "results.json").read_text())["rows"][0]
    assert row["deputy_window"] == [8, 8]  # median of 15 negatives
    # --reuse takes the finished run instead of training it again: same numbers, same checkpoint file
    checkpoint = tmp_path / "runs" / "triplet_deputy=median_proj_hidden=32_pred_hidden=32-b16-s0" / "checkpoint.pt"
    stamp = checkpoint.stat().st_mtime_ns
    assert main(args + ["--reuse"]) == 0
    again = json.loads((tmp_path / "results.json").read_text())["rows"][0]
    assert checkpoint.stat().st_mtime_ns == stamp
    assert again["knn_top1"] == row["knn_top1"] and again["seconds"] == row["seconds"]


def test_method_spec_parsing():
    assert parse_method("triplet:deputy=rank-rule, r_hi=12") == ("triplet", {"deputy": "rank-rule", "r_hi": "12"})
    assert parse_method("byol") == ("byol", {})
    with pytest.raises(UserError, match="not key=value"):
        parse_method("triplet:median")
    with pytest.raises(UserError, match="gives 'temperature' twice"):  # the label would name one, the run use the other
        parse_method("swav:temperature=0.5,temperature=0.2")


def test_two_specs_of_the_same_run_are_refused_before_training():
    from selfsup_lab.experiments import parse_methods

    with pytest.raises(UserError, match="'simclr' and 'simclr:temperature=0.2' are the same run .*defaults included"):
        parse_methods(["simclr", "simclr:temperature=0.2"])  # 0.2 is SimCLR's default temperature
    assert [label for label, _, _ in parse_methods(["simclr", "simclr:temperature=0.5"])] == [
        "simclr", "simclr:temperature=0.5"]


def test_steps_budget_equalises_optimiser_steps_across_batch_sizes(tmp_path):
    options = {k: v for k, v in TINY.items() if k != "epochs"}
    # 48 synthetic images: B = 8 → 6 steps per epoch, B = 16 → 3 steps per epoch
    result = compare_negatives(methods=("simclr",), batch_sizes=(8, 16), steps=6, out=tmp_path,
                               method_options=SMALL_HEADS, **options)
    assert [(r["batch_size"], r["epochs"], r["steps"]) for r in result["rows"]] == [(8, 1, 6), (16, 2, 6)]
    with pytest.raises(UserError, match="either epochs or steps"):
        compare_negatives(methods=("simclr",), steps=6, out=tmp_path, **TINY)


@pytest.mark.parametrize("repeated, message", [({"batch_sizes": (16, 16)}, "--batch-sizes lists 16 twice"),
                                               ({"seeds": (0, 2, 0)}, "--seeds lists 0 twice")])
def test_a_repeated_batch_size_or_seed_is_refused_before_training(tmp_path, repeated, message):
    with pytest.raises(UserError, match=f"{message}; give each value once"):
        compare_negatives(out=tmp_path / "out", **{**TINY, "batch_sizes": (16,), **repeated})
    assert not (tmp_path / "out").exists()


def test_measure_leaves_the_same_class_rate_empty_when_no_epoch_could_measure_it(tmp_path):
    """Mostly unlabelled data (STL-10 with a small subset) can give epochs without the rate: no KeyError."""
    import selfsup_lab
    from selfsup_lab.experiments import negatives

    run = selfsup_lab.train("simclr", "synthetic:n=64,classes=4,size=16", epochs=1, batch_size=32, device="cpu",
                            backbone="convnet", proj_hidden=32, out=str(tmp_path), progress=False, figures=False)
    for record in run.history:
        del record["same_class_neg_rate"]
    row, _ = negatives.measure(run, alignment_images=16)
    assert row["same_class_neg_rate"] is None and 0.0 <= row["knn_top1"] <= 1.0


def test_a_diverging_method_stops_the_comparison_in_one_sentence_keeping_finished_runs(tmp_path):
    with pytest.raises(UserError, match=r"simclr:temperature=1e-30 at B = 16, seed 0 diverged \(the simclr loss became "
                                        r".*re-run with --reuse to keep the others"):
        compare_negatives(methods=("byol", "simclr:temperature=1e-30"), batch_sizes=(16,), out=tmp_path,
                          method_options=SMALL_HEADS, **TINY)
    assert (tmp_path / "runs" / "byol-b16-s0" / "metrics.json").exists()  # finished before: kept for --reuse


def test_measure_scores_the_test_split_and_averages_the_rate_over_epochs(tmp_path):
    import selfsup_lab
    from selfsup_lab.experiments import negatives

    run = selfsup_lab.train("simclr", "synthetic:n=64,classes=4,size=16", epochs=2, batch_size=32, device="cpu",
                            backbone="convnet", proj_hidden=32, out=str(tmp_path), progress=False, figures=False)
    for record, rate in zip(run.history, (0.1, 0.3)):
        record["same_class_neg_rate"] = rate
    row, arrays = negatives.measure(run, alignment_images=16)
    assert row["same_class_neg_rate"] == pytest.approx(0.2)  # the mean over the training epochs, not the last
    tested = len(run.embed("test")[1])  # 16 test images against 64 training images
    assert arrays["cosines"]["intra"].size + arrays["cosines"]["inter"].size == tested * (tested - 1) // 2
    assert row["alignment"] > 0  # two different augmented views of each image, not one view twice


def test_several_seeds_give_one_row_per_method_and_batch_size_with_mean_and_std(tmp_path):
    result = compare_negatives(methods=("simclr",), batch_sizes=(16,), seeds=(0, 1), out=tmp_path,
                               method_options=SMALL_HEADS, **TINY)
    assert [(r["method"], r["seed"]) for r in result["runs"]] == [("simclr", 0), ("simclr", 1)]
    (row,) = result["rows"]
    knn = [r["knn_top1"] for r in result["runs"]]
    assert row["seeds"] == [0, 1] and row["knn_top1"] == pytest.approx(sum(knn) / 2)
    homogeneity = [r["homogeneity"] for r in result["runs"]]
    assert homogeneity[0] != homogeneity[1] and row["homogeneity_std"] == pytest.approx(
        abs(homogeneity[0] - homogeneity[1]) / 2 ** 0.5)  # the sample standard deviation
    assert (tmp_path / "runs" / "simclr-b16-s1" / "metrics.json").exists()


def test_rows_come_batch_size_by_batch_size_and_every_table_line_has_one_cell_per_column(tmp_path):
    from selfsup_lab.experiments.negatives import markdown_table

    result = compare_negatives(methods=("simclr", "byol"), batch_sizes=(8, 16), out=tmp_path,
                               method_options=SMALL_HEADS, **{**TINY, "dataset": "synthetic:n=32,classes=2,size=16"})
    assert [(r["method"], r["batch_size"]) for r in result["rows"]] == [
        ("simclr", 8), ("byol", 8), ("simclr", 16), ("byol", 16)]  # as in README's table: grouped by B
    lines = markdown_table(result["rows"] + [result["untrained"]]).split("\n")
    assert len({line.count("|") for line in lines}) == 1  # the separator line included
