"""Figures: what their colours and axes mean must not depend on the data drawn."""
from __future__ import annotations

import numpy as np
import pytest

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
