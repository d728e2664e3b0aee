"""Figures: what their colours and axes mean must not depend on the data drawn."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.backend_bases import MouseEvent
from matplotlib.colors import to_rgb

from selfsup_lab import viz


def heatmap_image(count_rows):
    fig = viz.occupancy_heatmap(count_rows)  # viz draws with the Agg backend outside notebooks
    image = fig.axes[0].images[0]
    viz._plt().close(fig)
    return image


def test_occupancy_heatmap_has_one_colour_scale_for_every_run():
    collapsed = heatmap_image([[1000] + [0] * 19] * 2)  # K = 20: the one full cluster is 20× uniform
    balanced = heatmap_image([[250, 250, 250, 250], [260, 250, 250, 240]])
    skewed = heatmap_image([[700, 200, 100, 0]])
    scales = {(im.norm.vmin, im.norm.vmax) for im in (collapsed, balanced, skewed)}
    assert len(scales) == 1, f"each figure chose its own colour scale: {scales}"
    assert balanced.norm(1.0) == pytest.approx(0.5)  # uniform occupancy sits mid-scale
    # Empty clusters get a colour (the darkest), not a masked hole, and the collapsed cluster the brightest.
    values = np.ma.getdata(collapsed.get_array())
    assert not np.ma.getmaskarray(collapsed.get_array()).any()
    assert collapsed.norm(values[1:, :]).max() == pytest.approx(0.0)
    assert collapsed.norm(values[0, :]).min() == pytest.approx(1.0)
    # Rows are clusters sorted by size in every column: largest share on top.
    skewed_values = np.ma.getdata(skewed.get_array())[:, 0]
    assert list(skewed_values) == sorted(skewed_values, reverse=True)


def test_run_figures_of_a_clustering_method_include_the_entropy_with_the_rule_off(tmp_path, monkeypatch):
    import selfsup_lab

    drawn = {}
    original = viz.entropy_curve

    def spy(count_rows, *args, **kwargs):
        drawn["series"], drawn["batch_entropy"] = count_rows, kwargs.get("batch_entropy")
        return original(count_rows, *args, **kwargs)

    monkeypatch.setattr(viz, "entropy_curve", spy)
    run = selfsup_lab.train("swav", "synthetic:n=64,classes=4,size=16", epochs=2, batch_size=32, backbone="convnet",
                            device="cpu", progress=False, out=str(tmp_path), proj_hidden=32, proj_dim=16)
    for name in ("occupancy_bars.png", "occupancy_heatmap.png", "occupancy_entropy.png"):
        assert (tmp_path / "figures" / name).exists(), name
    assert set(drawn["series"]) == {"training assignments", "balancing rule off"}
    assert drawn["series"]["balancing rule off"] == run.trainer.occupancy_log["epochs_without_rule"]
    assert len(drawn["series"]["training assignments"]) == 2  # one count vector per epoch
    # and, dotted, one batch's mean entropy per epoch from the history
    assert drawn["batch_entropy"] == [r["occupancy"]["batch_entropy_ratio"] for r in run.history]


def test_per_batch_entropy_of_several_series_is_dotted_in_each_series_colour():
    balanced, collapsed = [[25, 25, 25, 25]] * 3, [[97, 1, 1, 1]] * 3
    fig = viz.entropy_curve({"excb": balanced, "naive": collapsed},
                            batch_entropy={"excb": [0.2, 0.4, 0.6], "naive": None, "not drawn": [0.5, 0.5, 0.5]})
    solid = {line.get_label(): line for line in fig.axes[0].lines if line.get_linestyle() == "-"}
    dotted = [line for line in fig.axes[0].lines if line.get_linestyle() == ":" and len(line.get_xdata())]
    assert len(dotted) == 1, "one dotted line: the series that has per-batch values (and only a drawn series)"
    assert dotted[0].get_color() == solid["excb"].get_color()
    assert list(dotted[0].get_ydata()) == [0.2, 0.4, 0.6]
    assert list(solid["naive"].get_ydata()) == pytest.approx([viz_entropy([97, 1, 1, 1])] * 3)
    assert "dotted: one batch alone" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    viz._plt().close(fig)


def test_same_class_negatives_figure_draws_the_rank_rule_only_when_asked():
    counts = {"random": np.array([0, 1, 1, 2, 3])}
    with_rule = viz.same_class_negatives_figure(counts, 32, 10)
    without = viz.same_class_negatives_figure(counts, 32, 10, epsilon=None)
    labels = [[t.get_text() for t in fig.axes[0].get_legend().get_texts()] for fig in (with_rule, without)]
    assert any(label.startswith("rank rule r_lo") for label in labels[0])
    assert not any(label.startswith("rank rule") for label in labels[1]) and "random batches" in labels[1]
    for fig in (with_rule, without):
        viz._plt().close(fig)


def viz_entropy(counts):
    p = np.asarray(counts, dtype=float) / sum(counts)
    return float(-(p * np.log(p)).sum() / np.log(len(counts)))


def test_a_full_disk_while_drawing_keeps_the_run_and_leaves_no_empty_image(tmp_path, monkeypatch):
    import errno

    import matplotlib.figure

    import selfsup_lab

    def disk_full(self, fname, *args, **kwargs):
        with open(fname, "wb") as f:  # a part of the file is written, then the disk is full
            f.write(b"\x89PNG")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", disk_full)
    with pytest.warns(UserWarning, match=r"the figures were not drawn: cannot write .*training_curves.png \(No space "
                                         r"left on device\).*metrics.json are saved"):
        run = selfsup_lab.train("simclr", "synthetic:n=64,classes=4,size=16", epochs=1, batch_size=32,
                                backbone="convnet", device="cpu", progress=False, out=str(tmp_path), proj_hidden=32)
    assert run.status == "finished" and (tmp_path / "metrics.json").exists()
    assert list((tmp_path / "figures").iterdir()) == []  # neither an empty PNG nor a temporary file


def test_the_command_line_shows_the_labs_warnings_in_one_line():
    import warnings
    from pathlib import Path

    from selfsup_lab import cli

    ours = cli._one_line_warning("the figures were not drawn", UserWarning, str(Path(cli.__file__)), 1)
    assert ours == "warning: the figures were not drawn\n"
    theirs = cli._one_line_warning("deprecated", FutureWarning, "/somewhere/torch/nn.py", 7)
    assert theirs.startswith("/somewhere/torch/nn.py:7: FutureWarning: deprecated")  # Python's own format
    assert cli.main(["datasets"]) == 0
    assert warnings.formatwarning is cli._python_formatwarning  # put back when the command returns


# --- what each figure draws -------------------------------------------------------------------------------

def close(*figs):
    for fig in figs:
        viz._plt().close(fig)


def value_at(fig, image, x, y):
    """The image's value drawn at data coordinates (x, y): where a reader of the figure would look."""
    px, py = image.axes.transData.transform((x, y))
    return image.get_cursor_data(MouseEvent("motion_notify_event", fig.canvas, px, py))


def binomial_tail_start(n, p, epsilon):
    """By definition: the first r ≥ 1 with P(X ≥ r) ≤ ε for X ~ Binomial(n, p) (n when there is none)."""
    pmf = [math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)]
    return next((r for r in range(1, n + 1) if sum(pmf[r:]) <= epsilon), n)


def test_training_curves_plot_each_logged_value_against_its_own_epochs():
    history = [{"epoch": 1, "loss": 3.0, "lr": 0.1, "occupancy": {"entropy_ratio": 0.5}},
               {"epoch": 2, "loss": 2.0, "lr": 0.05, "knn_top1": 40.0, "occupancy": {"entropy_ratio": 0.7}},
               {"epoch": 3, "loss": 1.5, "lr": 0.01, "occupancy": {"entropy_ratio": 0.9}},
               {"epoch": 4, "loss": 1.0, "lr": 0.0, "knn_top1": 60.0, "occupancy": {"entropy_ratio": 0.95}}]
    fig = viz.training_curves(history, title="swav on digits")
    panels = {ax.get_title(): ax.lines[0] for ax in fig.axes}
    # kNN is logged only every other epoch and the entropy inside "occupancy"; nothing logs pos_top1
    assert list(panels) == ["loss", "learning rate", "kNN top-1", "occupancy entropy H/log K"]
    assert list(panels["loss"].get_ydata()) == [3.0, 2.0, 1.5, 1.0]
    assert list(panels["learning rate"].get_ydata()) == [0.1, 0.05, 0.01, 0.0]
    assert list(panels["kNN top-1"].get_xdata()) == [2, 4] and list(panels["kNN top-1"].get_ydata()) == [40.0, 60.0]
    assert list(panels["occupancy entropy H/log K"].get_ydata()) == [0.5, 0.7, 0.9, 0.95]
    # (the suptitle is one of the figure's own texts; Figure.get_suptitle needs matplotlib 3.8)
    assert [t.get_text() for t in fig.texts] == ["swav on digits"]
    untitled = viz.training_curves(history[:1])
    assert not any(t.get_text() for t in untitled.texts) and len(untitled.axes) == 3  # one epoch: no kNN panel
    close(fig, untitled)


def test_embedding_colours_each_normalised_feature_by_its_own_label():
    # Three classes along three axes with random lengths: after L2 normalisation each class is one point.
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(30) % 3
    features = torch.eye(3)[labels] * (0.5 + 5 * torch.rand(30, 1, generator=gen))
    fig = viz.embedding_2d(features, labels, class_names=["cat", "dog", "ship"], method="pca", max_points=12)
    ax = fig.axes[0]
    assert [c.get_label() for c in ax.collections] == ["cat", "dog", "ship"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cat", "dog", "ship"]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 12  # subsampled to max_points
    centres = []
    for c in ax.collections:
        xy = np.asarray(c.get_offsets())
        assert np.ptp(xy, axis=0).max() < 1e-4, f"{c.get_label()}: points of one direction spread apart"
        centres.append(xy[0])
    assert min(np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1:]) > 0.1
    colours = [tuple(c.get_facecolor()[0]) for c in ax.collections]
    assert len(set(colours)) == 3  # one colour per class
    assert ax.get_title() == "PCA of backbone features"  # named after the projection actually used
    close(fig)


def test_occupancy_bars_show_shares_sorted_from_largest_against_uniform():
    fig = viz.occupancy_bars([10, 50, 0, 40])
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx([0.5, 0.4, 0.1, 0.0])
    uniform = [line for line in ax.lines if line.get_label() == "uniform 1/K"]
    assert list(uniform[0].get_ydata()) == pytest.approx([0.25, 0.25])
    assert ax.get_ylabel() == "share of images" and ax.get_yscale() == "linear"
    logged = viz.occupancy_bars([10, 50, 0, 40], log=True)
    assert logged.axes[0].get_yscale() == "log"
    # shares of a subset (adding up to less than 1) are shares of that subset; no images at all draws no bars
    subset, nothing = viz.occupancy_bars([0.1, 0.2, 0.1]), viz.occupancy_bars([0, 0])
    assert [p.get_height() for p in subset.axes[0].patches] == pytest.approx([0.5, 0.25, 0.25])
    assert [p.get_height() for p in nothing.axes[0].patches] == [0.0, 0.0]
    with pytest.raises(ValueError, match="at least one cluster"):
        viz.occupancy_bars([])
    close(fig, logged, subset, nothing)


def test_occupancy_heatmap_puts_epoch_j_at_x_j_and_the_largest_share_at_rank_1():
    # three epochs with different totals; K = 4; colour = share × K clipped to [0.1, 10]
    fig = viz.occupancy_heatmap([[20, 60, 120, 0], [25, 25, 25, 25], [100, 0, 0, 0]], xlabel="window")
    image = fig.axes[0].images[0]
    expected = np.array([[2.4, 1.2, 0.4, 0.1], [1, 1, 1, 1], [4, 0.1, 0.1, 0.1]]).T  # rows = ranks
    assert np.ma.getdata(image.get_array()) == pytest.approx(expected)
    for epoch in (1, 2, 3):
        for rank in (1, 2, 3, 4):  # rank r is drawn between r − 1 and r, epoch j from x = j − ½ to j + ½
            for x in (epoch - 0.4, epoch + 0.4):
                assert value_at(fig, image, x, rank - 0.5) == pytest.approx(expected[rank - 1, epoch - 1])
    assert fig.axes[0].get_xlabel() == "window"
    halves = viz.occupancy_heatmap([[0.25, 0.25], [0.0, 0.0]])  # shares of half the images; a window with none
    assert np.ma.getdata(halves.axes[0].images[0].get_array()) == pytest.approx(np.array([[1.0, 0.1], [1.0, 0.1]]))
    close(fig, halves)


def test_entropy_curve_of_one_run_starts_at_epoch_1_with_its_batch_entropy():
    fig = viz.entropy_curve([[25, 25, 25, 25], [97, 1, 1, 1]], labels="swav", xlabel="step", batch_entropy=[0.3, 0.6])
    ax = fig.axes[0]
    run, batch = ax.lines
    assert run.get_label() == "swav"
    assert list(run.get_xdata()) == [1, 2] and list(batch.get_xdata()) == [1, 2]
    assert list(run.get_ydata()) == pytest.approx([1.0, viz_entropy([97, 1, 1, 1])])
    assert list(batch.get_ydata()) == [0.3, 0.6] and batch.get_linestyle() == ":"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["swav", "one batch alone (mean per epoch)"]
    lo, hi = ax.get_ylim()
    assert lo <= 0 and hi >= 1  # the whole [0, 1] range, whatever the data: 0.9 must not look like collapse
    assert ax.get_xlabel() == "step"
    close(fig)


def test_save_figure_writes_at_the_asked_resolution_and_closes_the_figure(tmp_path):
    from PIL import Image

    plt = viz._plt()
    fig = plt.figure(figsize=(2, 1))
    number = fig.number
    path = viz.save_figure(fig, tmp_path / "small.png", dpi=50)
    assert path == tmp_path / "small.png"
    assert Image.open(path).size == (100, 50)
    assert not plt.fignum_exists(number)  # notebooks drawing hundreds of figures must not keep them all open


def fake_run(tmp_path, occupancy_log, history):
    """Just what save_run_figures reads from a run: no training needed."""
    gen = torch.Generator().manual_seed(0)
    embedded = []

    def embed(split):
        embedded.append(split)
        return torch.rand(24, 5, generator=gen), torch.arange(24) % 2

    trainer = SimpleNamespace(config=SimpleNamespace(method="swav", dataset="imagefolder:/data/sets/pets-train"),
                              test_set=SimpleNamespace(classes=["cat", "dog"]), occupancy_log=occupancy_log)
    return SimpleNamespace(out=str(tmp_path), history=history, embed=embed, trainer=trainer), embedded


def test_run_figures_draw_the_final_epoch_and_the_test_set_and_return_every_file(tmp_path, monkeypatch):
    calls = {}
    for name in ("training_curves", "embedding_2d", "occupancy_bars", "entropy_curve"):
        def spy(*args, _name=name, _original=getattr(viz, name), **kwargs):
            calls[_name] = (args, kwargs)
            if _name == "embedding_2d":
                kwargs["method"] = "pca"  # t-SNE would only be slower
            return _original(*args, **kwargs)
        monkeypatch.setattr(viz, name, spy)
    epochs = [[30, 10, 8, 0], [12, 12, 12, 12]]
    history = [{"epoch": 1, "loss": 2.0, "lr": 0.1, "occupancy": {"entropy_ratio": 0.6, "batch_entropy_ratio": 0.5}},
               {"epoch": 2, "loss": 1.0, "lr": 0.0, "occupancy": {"entropy_ratio": 1.0}}]  # batch entropy not logged
    run, embedded = fake_run(tmp_path, {"epochs": epochs}, history)
    written = viz.save_run_figures(run)
    names = ["training_curves.png", "embedding_tsne.png", "occupancy_bars.png", "occupancy_heatmap.png",
             "occupancy_entropy.png"]
    assert written == [tmp_path / "figures" / name for name in names] and all(p.exists() for p in written)
    assert calls["training_curves"][1]["title"] == "swav on pets-train"  # the data set's short name, not its path
    assert embedded == ["test"]
    assert calls["embedding_2d"][0][2] == ["cat", "dog"]  # legend with class names
    assert calls["occupancy_bars"][0][0] == [12, 12, 12, 12]  # the final epoch
    assert calls["entropy_curve"][0][0] == epochs and calls["entropy_curve"][1]["batch_entropy"] is None
    # a method without clusters: only the first two figures
    plain, _ = fake_run(tmp_path / "simclr", {}, history)
    assert [p.name for p in viz.save_run_figures(plain)] == names[:2]


def test_cosine_panels_show_intra_and_inter_of_each_run_and_hide_spare_axes():
    assert [viz.grid_shape(n) for n in (1, 2, 3, 4, 5, 7)] == [(1, 1), (1, 2), (2, 2), (2, 2), (2, 3), (3, 3)]
    rng = np.random.default_rng(0)
    runs = {name: {"intra": rng.uniform(0.7, 0.9, 200), "inter": rng.uniform(0.1, 0.3, 300)} for name in "abc"}
    runs["a"]["separation"] = 0.987
    fig = viz.cosine_distributions_figure(runs, bins=20)
    assert [ax.axison for ax in fig.axes] == [True, True, True, False]  # 3 runs in a 2 × 2 grid
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a, AUC 0.99", "b", "c"]
    for ax in fig.axes[:3]:
        orange = [p for p in ax.patches if p.get_height() > 0 and p.get_facecolor()[:3] == to_rgb("tab:orange")]
        gray = [p for p in ax.patches if p.get_height() > 0 and p.get_facecolor()[:3] == to_rgb("tab:gray")]
        assert orange and min(p.get_x() for p in orange) > 0.65  # intra-class: orange, high cosines
        assert gray and max(p.get_x() + p.get_width() for p in gray) < 0.35
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["inter-class", "intra-class"]
    close(fig)


def test_same_class_negatives_are_drawn_against_binomial_b_minus_1_and_r_lo():
    counts = {"random": np.array([2, 2, 2, 2, 2])}  # every anchor has 2 same-class negatives
    fig = viz.same_class_negatives_figure(counts, 32, 10, epsilon=0.05)
    ax = fig.axes[0]
    outline = ax.patches[0].get_xy()
    top = outline[np.isclose(outline[:, 1], outline[:, 1].max())]
    assert outline[:, 1].max() == pytest.approx(1.0)  # a density: one bar holding every anchor
    assert sorted(set(top[:, 0])) == [1.5, 2.5]  # centred on 2
    dots = next(line for line in ax.lines if line.get_label().startswith("Binomial"))
    assert dots.get_label() == "Binomial(31, 1/10)"
    xs = [int(x) for x in dots.get_xdata()]
    assert list(dots.get_ydata()) == pytest.approx([math.comb(31, k) * 0.1 ** k * 0.9 ** (31 - k) for k in xs])
    rule = next(line for line in ax.lines if line.get_label().startswith("rank rule"))
    r_lo = binomial_tail_start(31, 0.1, 0.05)
    assert list(rule.get_xdata()) == [r_lo, r_lo] and rule.get_label() == f"rank rule r_lo = {r_lo} (ε = 0.05)"
    close(fig)


def test_rank_window_figure_plots_r_lo_for_the_given_epsilon():
    fig = viz.rank_window_figure(batch_sizes=[16, 64, 256], class_counts=(10, 100), epsilon=0.2)
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    for c in (10, 100):
        assert list(lines[f"C = {c}"].get_xdata()) == [16, 64, 256]
        assert list(lines[f"C = {c}"].get_ydata()) == [binomial_tail_start(b - 1, 1 / c, 0.2) for b in (16, 64, 256)]
    close(fig)


ROWS = [  # given out of batch-size order: figures must still sort them
    {"method": "simclr", "batch_size": 256, "completeness": 0.3, "homogeneity": 0.8, "alignment": 0.6,
     "uniformity": -2.0, "fragmentation": 2.0, "mixing": 1.2, "knn_top1": 70.0, "same_class_neg_rate": 0.1},
    {"method": "simclr", "batch_size": 64, "completeness": 0.35, "homogeneity": 0.7, "alignment": 0.5,
     "uniformity": -1.5, "fragmentation": 3.0, "mixing": 1.5, "knn_top1": 60.0, "same_class_neg_rate": 0.12},
    {"method": "triplet", "batch_size": 64, "completeness": 0.6, "completeness_std": 0.05, "homogeneity": 0.5,
     "alignment": 0.2, "uniformity": -3.0, "fragmentation": 1.5, "mixing": 2.5, "knn_top1": 65.0,
     "same_class_neg_rate": 0.05},
]


def points(ax):
    """(x, y, colour, has x error bar, has y error bar) of each errorbar point, in drawing order."""
    return [(float(c.lines[0].get_xdata()[0]), float(c.lines[0].get_ydata()[0]), c.lines[0].get_color(),
             c.has_xerr, c.has_yerr) for c in ax.containers]


def test_scatter_figures_put_each_metric_on_its_named_axis_coloured_by_method():
    for figure, (xkey, ykey) in ((viz.homogeneity_completeness_figure, ("completeness", "homogeneity")),
                                 (viz.alignment_uniformity_figure, ("alignment", "uniformity"))):
        fig = figure(ROWS)
        ax = fig.axes[0]
        drawn = points(ax)
        assert [(x, y) for x, y, *_ in drawn] == [(r[xkey], r[ykey]) for r in ROWS]
        assert ax.get_xlabel().startswith(xkey) and ax.get_ylabel().startswith(ykey)
        legend = {h.get_label(): h for h in ax.get_legend().legend_handles}
        assert list(legend) == ["simclr", "triplet", "B = 64", "B = 256"]
        assert [colour for _, _, colour, *_ in drawn] == [legend[r["method"]].get_color() for r in ROWS]
        assert drawn[0][2] != drawn[2][2]
        # error bars along the axis of the metric whose spread over seeds is known (completeness_std only)
        assert [(has_x, has_y) for *_, has_x, has_y in drawn] == [(xkey + "_std" in r, ykey + "_std" in r) for r in ROWS]
        close(fig)


def test_fragmentation_and_mixing_bars_per_method_and_sorted_batch_size():
    fig = viz.fragmentation_mixing_figure(ROWS)
    for ax, key in zip(fig.axes, ("fragmentation", "mixing")):
        assert ax.get_title().startswith(key)
        assert [t.get_text() for t in ax.get_xticklabels()] == ["B = 64", "B = 256"]
        simclr, triplet = ax.containers
        assert [p.get_height() for p in simclr] == [ROWS[1][key], ROWS[0][key]]
        heights = [p.get_height() for p in triplet]
        assert heights[0] == ROWS[2][key] and np.isnan(heights[1])  # triplet never ran with B = 256
        # the methods' bars sit side by side, centred on their batch size's tick
        centres = [[p.get_x() + p.get_width() / 2 for p in bars] for bars in (simclr, triplet)]
        assert np.mean(centres, axis=0) == pytest.approx([0, 1])
    close(fig)


def test_metric_vs_batch_draws_sorted_lines_and_the_reference_rates():
    reference = {64: {"random_expected": 0.1, "floor": 0.02}, 256: {"random_expected": 0.1, "floor": 0.005}}
    fig = viz.metric_vs_batch_figure(ROWS, reference=reference)
    knn, rate = fig.axes
    assert [knn.get_title(), rate.get_title()] == ["knn_top1", "same_class_neg_rate"]
    simclr = knn.containers[0].lines[0]
    assert list(simclr.get_xdata()) == [64, 256] and list(simclr.get_ydata()) == [60.0, 70.0]
    lines = {line.get_label(): line for line in rate.lines}
    assert list(lines["random (expected)"].get_ydata()) == [0.1, 0.1]
    assert list(lines["floor (B/C per class)"].get_ydata()) == [0.02, 0.005]
    close(fig)


# --- degenerate inputs (an audit, 2026-11-24) ----------------------------------------------------------------

def test_embedding_of_collapsed_features_says_so_instead_of_crashing_tsne():
    fig = viz.embedding_2d(torch.ones(30, 4), torch.arange(30) % 3, method="tsne")  # t-SNE would segfault here
    assert "the representation has collapsed" in " ".join(t.get_text() for t in fig.axes[0].texts)
    with pytest.raises(ValueError, match="unknown projection 'tnse'"):
        viz.embedding_2d(torch.randn(30, 4), torch.arange(30) % 3, method="tnse")


def test_embedding_draws_unlabelled_points_grey_and_few_points_with_pca():
    labels = torch.arange(30) % 3
    labels[:10] = -1
    fig = viz.embedding_2d(torch.randn(30, 4, generator=torch.Generator().manual_seed(0)), labels, method="pca")
    drawn = sum(len(c.get_offsets()) for c in fig.axes[0].collections)
    assert drawn == 30 and "unlabelled" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    few = viz.embedding_2d(torch.randn(5, 4), torch.arange(5) % 2, method="tsne")  # t-SNE needs perplexity < N
    assert sum(len(c.get_offsets()) for c in few.axes[0].collections) == 5


def test_embedding_and_the_widgets_map_share_one_projection():
    from selfsup_lab import widgets

    features = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    fig = viz.embedding_2d(features, torch.zeros(40, dtype=torch.long), method="pca")
    drawn = fig.axes[0].collections[0].get_offsets()
    assert np.allclose(drawn, widgets.project_2d(features, method="pca"), atol=1e-5)
    two = viz.embedding_2d(torch.randn(2, 4), torch.arange(2), method="pca")  # PCA needs 3 points: a panel says so
    assert "2 points are too few to map" in " ".join(t.get_text() for t in two.axes[0].texts)
    with pytest.raises(ValueError, match="2 images are too few for a pca map"):
        viz.project_2d(torch.randn(2, 4), method="pca")


def test_one_epochs_counts_as_a_flat_list_are_one_epoch_not_one_per_cluster():
    from selfsup_lab.metrics import occupancy_stats

    fig = viz.entropy_curve([3, 1, 0])
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_ydata()) == pytest.approx([occupancy_stats([3, 1, 0])["entropy_ratio"]])
    assert viz.occupancy_heatmap([3, 1, 0]).axes[0].images[0].get_array().shape == (3, 1)
    with pytest.raises(ValueError, match="at least one row of cluster counts"):
        viz.occupancy_heatmap([])


def test_empty_figure_inputs_are_one_sentence_or_drawn_without_the_missing_part():
    with pytest.raises(ValueError, match="at least one run's distributions"):
        viz.cosine_distributions_figure({})
    with pytest.raises(ValueError, match="at least one row"):
        viz.homogeneity_completeness_figure([])
    with pytest.raises(ValueError, match="num_classes ≥ 1 and batch_size ≥ 2"):
        viz.same_class_negatives_figure({"r": [1]}, 8, 0)
    viz.same_class_negatives_figure({"random": [0, 1, 2], "all unlabelled": []}, 8, 2)  # the empty one is skipped
    rows = [{"method": "simclr", "batch_size": b, "same_class_neg_rate": 0.1, "knn_top1": 0.5} for b in (32, 64)]
    fig = viz.metric_vs_batch_figure(rows, reference={32: {"random_expected": 0.1, "floor": 0.05}})  # no B = 64
    assert len(fig.axes) == 2
