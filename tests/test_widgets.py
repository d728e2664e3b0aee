"""Widgets: the playground's simulation, the playground's sliders, the live dashboard (both branches),
the occupancy board and the embedding explorer. No Jupyter kernel is needed: widgets are built and their
callbacks driven from Python, which is what a slider move or a button click does in the browser."""
import subprocess
import sys
import types

import pytest
import torch

import selfsup_lab
from selfsup_lab import widgets
from selfsup_lab.train import CHECKPOINT, Callback, ProgressBar
from selfsup_lab.widgets import (RULES, ClusterSizePlayground, EmbeddingExplorer, LiveDashboard, OccupancyBoard,
                                 PlaygroundParams, simulate, simulate_all)

TINY = dict(dataset="synthetic:n=64,classes=4,size=16", batch_size=16, backbone="convnet", device="cpu",
            progress=False, figures=False, proj_hidden=32, proj_dim=16)


@pytest.fixture(autouse=True)
def no_display(monkeypatch):
    """Widgets are displayed with IPython's display(); outside a kernel that would only print a repr."""
    monkeypatch.setattr(widgets, "_display", lambda widget: None)


# --- the simulation ------------------------------------------------------------------------------------

def test_naive_collapses_on_an_imbalanced_stream_and_the_balancing_rules_do_not():
    histories = simulate_all(PlaygroundParams(steps=150, imbalance=20.0))
    final = {rule: float(h["entropy"][-30:].mean()) for rule, h in histories.items()}
    assert final["naive"] < 0.2, final  # (nearly) everything in one cluster
    for rule in ("sinkhorn", "coke", "excb"):
        assert final[rule] > 0.7, final
        # balanced inside each batch too, not only over the window (see the next test)
        assert float(histories[rule]["batch_entropy"][-30:].mean()) > 0.7, rule
    assert float(histories["naive"]["max_share"][-1]) > 0.8
    assert float(histories["sinkhorn"]["max_share"][-1]) < 0.2


def test_per_batch_occupancy_shows_a_collapse_that_rotates_between_clusters():
    """ExCB with a memory of two batches over-corrects: each batch goes (nearly) all into one cluster, a different
    one every step. Summed over ten batches that looks fairly balanced; batch by batch it is a collapse."""
    h = simulate("excb", PlaygroundParams(steps=150, excb_momentum=0.5))
    assert float(h["entropy"][-30:].mean()) > 0.6  # the window's view
    assert float(h["batch_entropy"][-30:].mean()) < 0.2 and float(h["batch_max_share"][-30:].mean()) > 0.8
    # the per-batch series are each step's own statistics averaged over the same window
    from selfsup_lab.metrics import occupancy_stats

    own = torch.tensor([occupancy_stats(row)["max_share"] for row in h["counts"][-10:]])
    assert torch.isclose(h["batch_max_share"][-1], own.mean().float(), atol=1e-6)


def test_simulation_is_deterministic_and_counts_add_up():
    params = PlaygroundParams(num_clusters=7, batch_size=24, steps=30, window=5)
    a, b = simulate("excb", params), simulate("excb", params)
    assert torch.equal(a["counts"], b["counts"]) and torch.equal(a["entropy"], b["entropy"])
    assert a["counts"].shape == (30, 7) and a["sizes"].shape == (30, 7)
    assert (a["counts"].sum(1) == 2 * 24).all()  # both views of every image are assigned
    assert a["window_counts"][2].sum() == 3 * 48 and (a["window_counts"][4:].sum(1) == 5 * 48).all()
    assert torch.isclose(a["sizes"][-1].sum(), torch.tensor(1.0), atol=1e-4)
    assert simulate("coke", params)["duals"].min() >= 0
    assert a["params"]["num_clusters"] == 7 and simulate("naive", params, steps=3)["counts"].shape[0] == 3


def test_class_imbalance_and_bad_rules():
    shares = widgets.class_shares(PlaygroundParams(imbalance=20.0, num_blobs=5))
    assert torch.isclose(shares.sum(), torch.tensor(1.0)) and torch.isclose(shares[0] / shares[-1], torch.tensor(20.0))
    assert torch.allclose(widgets.class_shares(PlaygroundParams(imbalance=1.0)), torch.full((5,), 0.2))
    with pytest.raises(ValueError, match="unknown rule"):
        simulate("kmeans")


def test_every_rule_counts_both_views_and_per_batch_statistics_average_over_the_steps_seen_so_far():
    from selfsup_lab.metrics import occupancy_stats

    params = PlaygroundParams(num_clusters=6, batch_size=16, steps=8, window=5)
    for rule in RULES:
        h = simulate(rule, params)
        assert (h["counts"].sum(1) == 2 * 16).all(), rule  # CoKe's one label per image counts for both views too
        own = torch.tensor([occupancy_stats(row)["max_share"] for row in h["counts"]])
        # the first steps average over the steps there are, not over a full window
        expected = torch.stack([own[max(0, t - 4):t + 1].mean() for t in range(8)]).float()
        assert torch.allclose(h["batch_max_share"], expected, atol=1e-6), rule


def test_the_stream_is_drawn_with_the_class_shares_like_the_prototypes_it_starts_from():
    """No noise and one blob 200× the other: the prototypes (K = 2 points of the stream, init="data") are the big
    blob's centre, and (nearly) every point of the first batch lies on them."""
    first_batch = []

    def watch(scores, state, params):
        if not state:
            first_batch.append(scores)
            state["seen"] = True
        return torch.softmax(scores / params.teacher_temperature, dim=1)

    simulate(watch, PlaygroundParams(num_blobs=2, imbalance=200.0, num_clusters=2, spread=0.0, view_noise=0.0, steps=1))
    on_a_prototype = (first_batch[0].max(dim=1).values > 0.999).float().mean()
    assert on_a_prototype > 0.9


def test_coke_centres_restart_their_running_mean_every_coke_epoch():
    params = PlaygroundParams(steps=40, coke_epoch=20)
    restarted, never = simulate("coke", params), simulate("coke", params, coke_epoch=1000)
    assert torch.equal(restarted["counts"][:21], never["counts"][:21])  # the same until the restart at step 20
    assert not torch.equal(restarted["counts"], never["counts"])


# --- rules of your own ---------------------------------------------------------------------------------------

def test_a_rule_of_your_own_that_is_naive_reproduces_naive_exactly():
    def my_naive(scores, state, params):
        return torch.softmax(scores / params.teacher_temperature, dim=1)

    params = PlaygroundParams(steps=40)
    own, builtin = simulate(my_naive, params), simulate("naive", params)
    assert own["rule"] == "my_naive"
    assert torch.equal(own["counts"], builtin["counts"]) and torch.equal(own["loss"], builtin["loss"])


def test_the_built_in_sinkhorn_rule_uses_the_playgrounds_epsilon():
    from selfsup_lab import balancing

    def my_sinkhorn(scores, state, params):
        return balancing.sinkhorn(scores, epsilon=params.sinkhorn_epsilon)

    params = PlaygroundParams(steps=30, sinkhorn_epsilon=0.3)  # the "Sinkhorn ε" slider
    assert torch.equal(simulate(my_sinkhorn, params)["counts"], simulate("sinkhorn", params)["counts"])


def test_a_rule_of_your_own_keeps_its_state_and_can_balance():
    """DINO-style centering: subtract a running mean of the scores before the softmax. With a short memory it
    keeps the toy's clusters in use where naive (the same softmax without the centre) collapses."""
    calls = []

    def centering(scores, state, params, momentum=0.5):
        calls.append(len(state))
        center = state.get("center", torch.zeros(scores.shape[1]))
        state["center"] = momentum * center + (1 - momentum) * scores.mean(dim=0)
        return torch.softmax((scores - center) / params.teacher_temperature, dim=1)

    histories = simulate_all(PlaygroundParams(steps=150), rules=["naive", centering])
    assert len(calls) == 2 * 150 and calls[0] == 0 and set(calls[1:]) == {1}  # one dict, kept across steps
    assert float(histories["centering"]["entropy"][-30:].mean()) > 0.7
    assert float(histories["naive"]["entropy"][-30:].mean()) < 0.2


def test_rules_of_your_own_are_named_and_checked():
    import functools

    def uniform(scores, state, params):
        return torch.full_like(scores, 1.0 / scores.shape[1])

    histories = simulate_all(PlaygroundParams(steps=5), rules={"flat": uniform, "one-hot": functools.partial(
        lambda scores, state, params: torch.nn.functional.one_hot(scores.argmax(1), scores.shape[1]).float())})
    assert list(histories) == ["flat", "one-hot"] and histories["flat"]["rule"] == "flat"
    with pytest.raises(ValueError, match="your rule is named 'excb' like the lab's own"):
        simulate_all(PlaygroundParams(steps=5), rules={"excb": uniform})
    assert widgets.rule_name(functools.partial(uniform)) == "uniform"
    with pytest.raises(ValueError, match="two rules are named 'uniform'"):
        simulate_all(PlaygroundParams(steps=5), rules=[uniform, uniform])
    with pytest.raises(ValueError, match="rule mean-score returned shape"):
        simulate_all(PlaygroundParams(steps=2), rules={"mean-score": functools.partial(lambda s, state, p: s.mean(1))})
    with pytest.raises(ValueError, match=r"returned shape \(64,\) for scores of shape \(64, 20\)"):
        simulate(lambda scores, state, params: scores.mean(1), PlaygroundParams(steps=2))
    with pytest.raises(ValueError, match="not probability distributions"):
        simulate(lambda scores, state, params: scores, PlaygroundParams(steps=2))  # cosines, not a softmax
    with pytest.raises(ValueError, match="rule is one of"):
        simulate(3)

    def edits_its_input(scores, state, params):
        scores.zero_()  # the other view's scores must not change
        return torch.full_like(scores, 1.0 / scores.shape[1])

    assert torch.equal(simulate(edits_its_input, PlaygroundParams(steps=5))["counts"],
                       simulate(uniform, PlaygroundParams(steps=5))["counts"])


@pytest.mark.parametrize("bad, words", [(dict(batch_size=1), "batch_size must be at least 2"),
                                        (dict(teacher_temperature=0.0), "temperatures"),
                                        (dict(imbalance=0.0), "imbalance"), (dict(num_blobs=0), "num_blobs"),
                                        (dict(init="kmeans"), "init must be"), (dict(excb_momentum=1.5), "excb_momentum")])
def test_playground_params_refuse_values_that_would_give_nan_or_a_torch_error(bad, words):
    with pytest.raises(ValueError, match=words):
        PlaygroundParams(**bad)
    with pytest.raises(ValueError, match=words):
        simulate("excb", PlaygroundParams(steps=5), **bad)


def test_coke_without_dual_steps_is_plain_online_kmeans_and_collapses():
    """η = 0: the duals never move, nothing props small clusters up, and the drift wins."""
    plain = simulate("coke", PlaygroundParams(steps=150, coke_step=0.0))
    constrained = simulate("coke", PlaygroundParams(steps=150))
    assert float(plain["duals"].abs().max()) == 0.0
    assert float(constrained["entropy"][-30:].mean()) > float(plain["entropy"][-30:].mean()) + 0.3


# --- the playground widget -------------------------------------------------------------------------------

def test_playground_slider_change_recomputes_and_redraws():
    pg = ClusterSizePlayground(PlaygroundParams(steps=40))
    assert set(pg.histories) == set(RULES) and pg.recomputes == 1
    assert {s.description for s in pg.sliders.values()} >= {"K clusters", "batch size B", "imbalance", "CoKe η",
                                                             "ExCB momentum", "CoKe min ratio", "steps"}
    before_image, before = pg.image.value, pg.histories

    pg.sliders["num_clusters"].value = 12  # what dragging the slider does
    assert pg.params.num_clusters == 12 and pg.recomputes == 2
    for rule in RULES:
        assert pg.histories[rule]["counts"].shape == (40, 12)
        assert torch.equal(pg.histories[rule]["counts"], simulate(rule, pg.params)["counts"])
    assert not torch.equal(before["excb"]["entropy"], pg.histories["excb"]["entropy"])
    assert pg.image.value != before_image

    old_excb = pg.histories["excb"]["counts"]
    pg.sliders["excb_momentum"].value = 0.5
    assert pg.params.excb_momentum == 0.5
    assert torch.equal(pg.histories["excb"]["counts"], simulate("excb", PlaygroundParams(steps=40, num_clusters=12,
                                                                                         excb_momentum=0.5))["counts"])
    assert not torch.equal(old_excb, pg.histories["excb"]["counts"])

    pg.sliders["steps"].value = 30
    assert pg.step_slider.max == 30 and pg.histories["naive"]["counts"].shape[0] == 30

    image, recomputes = pg.image.value, pg.recomputes
    pg.step_slider.value = 5  # scrubbing through time only redraws
    assert pg.recomputes == recomputes and pg.shown_step == 5 and pg.image.value != image


def _same_history(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
                                        for k in a)


def test_playground_simulates_again_only_the_rules_that_read_the_moved_slider():
    pg = ClusterSizePlayground(PlaygroundParams(steps=20))
    new_values = {"num_clusters": 9, "batch_size": 32, "imbalance": 5.0, "teacher_temperature": 0.2,
                  "student_temperature": 0.3, "sinkhorn_epsilon": 0.2, "excb_momentum": 0.5, "coke_step": 1.0,
                  "coke_ratio": 0.8, "encoder_lr": 0.05, "steps": 30}
    assert set(new_values) == set(pg.sliders)  # every slider is moved once
    for name, value in new_values.items():
        pg.sliders[name].value = value
        fresh = simulate_all(pg.params)  # what a full recomputation gives: the reused histories must equal it
        assert all(_same_history(pg.histories[rule], fresh[rule]) for rule in RULES), name
        assert set(pg.recomputed) == {r for r in RULES if name not in widgets.UNUSED_BY[r]}, name
    pg.sliders["excb_momentum"].value = 0.7
    assert pg.recomputed == ["excb"]


def test_a_rule_of_your_own_that_fails_on_a_slider_value_leaves_the_playground_as_it_was():
    def sharp_softmax(scores, state, params):  # exp(s/τ) overflows for τ = 0.01: rows of NaN
        e = torch.exp(scores / params.teacher_temperature)
        return e / e.sum(1, keepdim=True)

    pg = ClusterSizePlayground(PlaygroundParams(steps=20), rules=["naive", sharp_softmax])
    image = pg.image.value
    pg.sliders["teacher_temperature"].value = 0.01  # what dragging the slider does: no exception escapes
    assert pg.params.teacher_temperature == 0.05 and pg.sliders["teacher_temperature"].value == pytest.approx(0.05)
    assert "teacher_temperature = 0.01 could not be simulated" in pg.status.value
    assert "not probability distributions" in pg.status.value and pg.image.value == image
    with pytest.raises(ValueError, match="not probability distributions"):
        pg.set_params(teacher_temperature=0.01)  # from code: raised, nothing changed
    pg.sliders["num_clusters"].value = 10  # the next move works as usual
    assert pg.params.num_clusters == 10 and pg.histories["naive"]["params"]["teacher_temperature"] == 0.05


def test_playground_params_take_whole_numbers_written_as_floats_and_refuse_fractions():
    assert PlaygroundParams(steps=1e2, num_clusters=12.0).steps == 100
    assert isinstance(PlaygroundParams(steps=1e2).steps, int)
    with pytest.raises(ValueError, match="steps must be a whole number, got 2.5"):
        PlaygroundParams(steps=2.5)
    assert simulate("naive", steps=1e1)["counts"].shape[0] == 10


def test_playground_redraws_once_per_change_and_a_short_run_still_draws_its_curve(monkeypatch):
    pg = ClusterSizePlayground(PlaygroundParams(steps=20))
    pg.step_slider.value = 5
    calls = []
    monkeypatch.setattr(pg, "redraw", lambda step=None: calls.append(step))
    pg.sliders["num_clusters"].value = 13
    assert calls == [None]  # not a second time for the time slider's reset
    fig = widgets.playground_figure(simulate_all(PlaygroundParams(steps=1)))
    curves = [line for line in fig.axes[-1].get_lines() if len(line.get_xdata()) == 1]
    assert curves and all(line.get_marker() == "o" for line in curves)  # one point: visible as a marker


def test_playground_set_params_from_code_recomputes_once_and_the_sliders_show_the_truth():
    pg = ClusterSizePlayground(PlaygroundParams(steps=20))
    pg.set_params(num_clusters=12)
    assert pg.recomputes == 2 and pg.sliders["num_clusters"].value == 12  # once, not again for the slider's echo
    pg.set_params(num_clusters=150, teacher_temperature=0.005)  # outside the sliders' ranges: they widen
    assert pg.params.num_clusters == 150 and pg.sliders["num_clusters"].value == 150
    assert pg.sliders["teacher_temperature"].value == pytest.approx(0.005)
    assert pg.histories["excb"]["counts"].shape == (20, 150) and pg.recomputes == 3
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        pg.set_params(batch_size=1)
    assert pg.params.batch_size == PlaygroundParams().batch_size and pg.recomputes == 3  # nothing changed
    pg.set_params(coke_step=0.0)  # CoKe without duals: a log slider cannot show 0, the status line says so
    assert pg.params.coke_step == 0.0 and pg.recomputes == 4 and "not on the sliders: coke_step = 0" in pg.status.value
    assert "not on the sliders" not in ClusterSizePlayground(PlaygroundParams(steps=10)).status.value
    assert ClusterSizePlayground(PlaygroundParams(steps=10, encoder_lr=0.0)).params.encoder_lr == 0.0
    wide = ClusterSizePlayground(PlaygroundParams(steps=10, num_clusters=300, batch_size=4))
    assert (wide.sliders["num_clusters"].value, wide.sliders["batch_size"].value) == (300, 4)
    with pytest.raises(ValueError, match="give at least one rule"):
        ClusterSizePlayground(PlaygroundParams(steps=10), rules=())
    assert ClusterSizePlayground(PlaygroundParams(steps=10), rules="excb").rules == {"excb": "excb"}


def test_playground_with_a_rule_of_your_own_recomputes_it_on_a_slider_move():
    def sharpened(scores, state, params):  # naive's rule, written by a user
        return torch.softmax(scores / params.teacher_temperature, dim=1)

    pg = ClusterSizePlayground(PlaygroundParams(steps=30), rules=["excb", sharpened])
    assert list(pg.histories) == ["excb", "sharpened"]
    image = pg.image.value
    pg.sliders["teacher_temperature"].value = 0.5
    assert pg.recomputes == 2 and pg.image.value != image
    assert torch.equal(pg.histories["sharpened"]["counts"], simulate("naive", pg.params)["counts"])


def test_playground_more_steps_moves_the_step_slider_to_the_new_last_step():
    pg = ClusterSizePlayground(PlaygroundParams(steps=20))
    pg.set_params(steps=40)
    assert pg.step_slider.max == pg.step_slider.value == pg.play.value == 40 and pg.shown_step == 40


# --- the live dashboard ------------------------------------------------------------------------------------

def fake_trainer(num_clusters=4):
    trainer = types.SimpleNamespace(
        config=types.SimpleNamespace(method="excb", dataset="digits"), epoch=0, epochs=2, global_step=0,
        total_steps=10, steps_per_epoch=5, out="runs/x", status="running", callbacks=[],
        occupancy_log={"epochs": [], "steps": []}, history=[], stops=0)
    trainer.request_stop = lambda: setattr(trainer, "stops", trainer.stops + 1)
    return trainer


def test_dashboard_collects_data_redraws_in_place_and_stop_button_requests_stop():
    trainer = fake_trainer()
    dash = LiveDashboard(mode="widget", refresh_seconds=3600)  # only forced redraws in this test
    dash.on_train_start(trainer)
    assert dash.mode == "widget" and dash.redraws == 1 and bytes(dash.image.value).startswith(b"\x89PNG")
    first_image = dash.image.value

    for step in range(1, 4):
        trainer.global_step = step
        trainer.occupancy_log["steps"].append({"epoch": 0, "step": step, "counts": [10 * step, 5, 5, 0]})
        dash.on_step_end(trainer, {"loss": 2.0 / step, "lr": 0.1, "views_per_s": 500.0, "target_max": 0.5})
    assert dash.steps == [1, 2, 3] and dash.losses == [2.0, 1.0, 2.0 / 3]
    assert dash.step_logs["target_max"] == [0.5] * 3 and dash.views_per_s == 500.0
    assert [s for s, _ in dash.occupancy] == [1, 2, 3] and dash.occupancy[-1][1] == [30, 5, 5, 0]
    assert dash.entropy[0][1] > dash.entropy[-1][1]  # more and more in one cluster
    assert dash.redraws == 1  # throttled: no redraw per step
    assert "500 views/s" in dash.header_text() and "loss 0.667" in dash.header_text()

    trainer.epoch = 1
    dash.on_epoch_end(trainer, {"epoch": 1, "loss": 1.2, "knn_top1": 0.4,
                                "occupancy": {"entropy_ratio": 0.5, "batch_entropy_ratio": 0.2},
                                "occupancy_without_rule": {"entropy_ratio": 0.3}})
    assert dash.knn == [(1, 0.4)] and dash.records[-1]["loss"] == 1.2
    assert dash.entropy_without_rule == [(3, 0.3)] and dash.batch_entropy == [(3, 0.2)]  # at the epoch's last step
    assert dash.redraws == 2 and dash.image.value != first_image  # the same Image, new picture

    dash.stop_button.click()  # what pressing Stop in the browser does
    assert trainer.stops == 1 and dash.stop_clicked and dash.stop_button.disabled
    trainer.status = "stopped during epoch 2"
    dash.on_train_end(trainer)
    assert "checkpoint of epoch 1 is kept" in dash.header.value and dash.stop_button.description == "stopped"
    assert f"1 of {trainer.epochs} epochs done" in dash.header.value and "left" not in dash.header.value
    trainer.epoch = 0
    assert "no checkpoint: run the cell again to start over" in dash.header_text()


def test_dashboard_redraws_every_refresh_steps_steps():
    trainer = fake_trainer()
    dash = LiveDashboard(mode="widget", refresh_seconds=3600, refresh_steps=2)
    dash.on_train_start(trainer)
    for step in range(1, 5):
        trainer.global_step = step
        dash.on_step_end(trainer, {"loss": 1.0})
    assert dash.redraws == 3  # at the start, then after steps 2 and 4


def test_dashboard_header_says_stopping_until_the_trainer_stops_and_a_second_run_starts_afresh():
    dash = LiveDashboard(mode="widget", refresh_seconds=3600)
    first = fake_trainer()
    dash.on_train_start(first)
    first.global_step = 1
    first.occupancy_log["steps"].append({"epoch": 0, "step": 1, "counts": [8, 0, 0, 0]})
    dash.on_step_end(first, {"loss": 1.0, "lr": 0.1, "views_per_s": 100.0})
    assert set(dash.step_logs) == {"lr"} and dash.views_per_s == 100.0  # the throughput is not a step log
    dash.stop_button.click()
    assert "stopping after this step" in dash.header_text()  # the trainer has not stopped yet

    second = fake_trainer()  # the same dashboard in a second train(...) call: this run's data only
    dash.on_train_start(second)
    assert (dash.steps, dash.losses, dash.occupancy, dash.stop_clicked) == ([], [], [], False)
    second.global_step = 1
    second.occupancy_log["steps"].append({"epoch": 0, "step": 1, "counts": [2, 2, 2, 2]})
    dash.on_step_end(second, {"loss": 0.5})
    assert dash.occupancy == [(1, [2, 2, 2, 2])] and "stopping" not in dash.header_text()


class ClickStopAt(Callback):
    def __init__(self, dashboard, step):
        self.dashboard, self.step = dashboard, step

    def on_step_end(self, trainer, logs):
        if trainer.global_step == self.step:
            self.dashboard.stop_button.click()


def test_dashboard_stop_button_ends_real_training_cleanly_and_keeps_the_checkpoint(tmp_path):
    dash = LiveDashboard(mode="widget", refresh_seconds=3600)
    run = selfsup_lab.train("naive", epochs=5, out=str(tmp_path / "r"), callbacks=[dash, ClickStopAt(dash, 6)], **TINY)
    assert run.status == "stopped during epoch 2" and run.trainer.epoch == 1  # 4 steps per epoch
    assert torch.load(tmp_path / "r" / CHECKPOINT, weights_only=False)["epoch"] == 1
    assert len(dash.losses) == 6 and dash.occupancy and dash.redraws == 3  # start, epoch 1, end
    assert "resume=True" in dash.header.value


def test_ctrl_c_closes_the_text_mode_progress_bar(tmp_path):
    class CtrlCAtStep(Callback):
        def on_step_end(self, trainer, logs):
            if trainer.global_step == 2:
                raise KeyboardInterrupt

    dash = LiveDashboard(mode="text")
    with pytest.raises(KeyboardInterrupt):
        selfsup_lab.train("naive", epochs=1, out=str(tmp_path / "r"), callbacks=[dash, CtrlCAtStep()], **TINY)
    assert dash._fallback.bar.n == 2 and dash._fallback.bar.disable  # closed where it stopped, not left to redraw


@pytest.fixture(scope="module")
def text_mode_run(tmp_path_factory):
    """One finished tiny run, trained with a LiveDashboard in mode "auto" outside Jupyter (shared by tests)."""
    dash = LiveDashboard()
    run = selfsup_lab.train("naive", epochs=1, out=str(tmp_path_factory.mktemp("run") / "r"), callbacks=[dash], **TINY)
    return run, dash


def test_dashboard_falls_back_to_the_progress_bar_outside_jupyter(text_mode_run, capsys):
    assert not widgets.in_notebook()
    run, dash = text_mode_run
    assert run.status == "finished" and dash.mode == "text" and dash.widget is None
    assert isinstance(dash._fallback, ProgressBar) and dash._fallback.bar.n == 4  # the tqdm bar saw every step
    assert len(dash.losses) == 4 and len(dash.records) == 1  # it still records what it saw

    trainer = fake_trainer()
    dash = LiveDashboard()
    dash.on_train_start(trainer)
    assert dash.mode == "text" and isinstance(dash._fallback, ProgressBar)
    dash.on_train_end(trainer)
    assert "excb on digits" in capsys.readouterr().err  # tqdm writes its bar to stderr

    trainer.callbacks = [ProgressBar()]
    dash = LiveDashboard()
    dash.on_train_start(trainer)  # progress=True already shows a bar: do not add a second one
    assert dash.mode == "text" and dash._fallback is None
    dash.stop()  # from code, as the button would: the text mode says what was kept
    trainer.status, trainer.epoch = "stopped during epoch 2", 1
    dash.on_train_end(trainer)
    assert trainer.stops == 1
    assert "stopped during epoch 2: the checkpoint of epoch 1 is kept in runs/x" in capsys.readouterr().err
    with pytest.raises(ValueError, match="mode must be"):
        LiveDashboard(mode="gui")  # named when the dashboard is made, not when training starts


def test_importing_the_package_does_not_import_ipywidgets():
    code = ("import sys, selfsup_lab, selfsup_lab.widgets; "
            "assert 'ipywidgets' not in sys.modules and 'IPython.display' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_click_routing_is_a_no_op_outside_a_kernel():
    import ipywidgets

    assert widgets._handle_clicks_while_busy(ipywidgets.Button()) is False


# --- several runs, and embeddings ----------------------------------------------------------------------------

def test_occupancy_board_collects_several_runs(text_mode_run):
    board = OccupancyBoard(mode="widget", refresh_seconds=3600)
    for name, counts in (("naive", [40, 0, 0, 0]), ("excb", [10, 10, 10, 10])):
        trainer = fake_trainer()
        reporter = board.callback(name)
        reporter.on_train_start(trainer)
        trainer.global_step = 1
        trainer.occupancy_log["steps"].append({"epoch": 0, "step": 1, "counts": counts})
        reporter.on_step_end(trainer, {"loss": 1.0})
        reporter.on_epoch_end(trainer, {"epoch": 1, "occupancy": {"batch_entropy_ratio": 0.25}})
        trainer.status = "finished"
        reporter.on_train_end(trainer)
    assert list(board.series) == ["naive", "excb"]
    assert board.series["excb"]["counts"] == [[10, 10, 10, 10]] and board.series["naive"]["status"] == "finished"
    assert board.series["excb"]["batch_entropy"] == [(1, 0.25)]  # one batch alone, at the epoch's last step
    assert board.redraws >= 4 and bytes(board.image.value).startswith(b"\x89PNG")
    assert len(board.figure().axes) == 3  # two bar charts and one shared entropy plot
    finished = OccupancyBoard(mode="text")
    finished.add_run("naive", text_mode_run[0])  # a finished run: its history gives the per-batch points
    assert [round(v, 6) for _, v in finished.series["naive"]["batch_entropy"]] == \
        [round(r["occupancy"]["batch_entropy_ratio"], 6) for r in text_mode_run[0].history]


def test_occupancy_board_redraws_when_a_new_window_arrives_at_most_once_per_refresh_seconds():
    board = OccupancyBoard(mode="widget", refresh_seconds=0)
    trainer, reporter = fake_trainer(), board.callback("naive")
    reporter.on_train_start(trainer)
    redraws = board.redraws
    trainer.occupancy_log["steps"].append({"epoch": 0, "step": 1, "counts": [4, 0, 0, 0]})
    reporter.on_step_end(trainer, {"loss": 1.0})
    assert board.redraws == redraws + 1
    reporter.on_step_end(trainer, {"loss": 1.0})  # no new window: nothing to redraw
    assert board.redraws == redraws + 1


def test_occupancy_board_add_run_puts_each_epochs_batch_entropy_at_the_epochs_last_step(text_mode_run):
    run = text_mode_run[0]  # one epoch
    board = OccupancyBoard(mode="text")
    board.add_run("naive", run)
    assert [step for step, _ in board.series["naive"]["batch_entropy"]] == [run.trainer.global_step]


def test_occupancy_board_follows_a_resumed_run_without_repeating_its_windows(tmp_path):
    class StopAtStep(Callback):
        def on_step_end(self, trainer, logs):
            if trainer.global_step == 6:
                trainer.request_stop()

    board = OccupancyBoard(mode="text")
    selfsup_lab.train("swav", epochs=3, out=str(tmp_path / "r"), callbacks=[board.callback("swav"), StopAtStep()],
                      **TINY)
    run = selfsup_lab.train("swav", epochs=3, out=str(tmp_path / "r"), resume=True,
                            callbacks=[board.callback("swav")], **TINY)
    series, log = board.series["swav"], run.trainer.occupancy_log["steps"]
    assert series["steps"] == [e["step"] for e in log] == sorted(set(series["steps"]))  # each window once, in order
    assert series["steps"][-1] == run.trainer.total_steps == 12 and series["status"] == "finished"
    assert [step for step, _ in series["batch_entropy"]] == [4, 8, 12]  # one point per epoch, none twice
    # Trained again from scratch under the same name, a run replaces its series rather than extending it.
    selfsup_lab.train("swav", epochs=1, out=str(tmp_path / "r"), overwrite=True, callbacks=[board.callback("swav")],
                      **TINY)
    assert series["steps"][-1] == 4 and series["steps"] == sorted(set(series["steps"]))
    assert [step for step, _ in series["batch_entropy"]] == [4]


@pytest.mark.parametrize("method, too_few", [("umap", 9), ("tsne", 5), ("pca", 2)])
def test_a_map_of_too_few_images_is_refused_in_one_sentence(method, too_few):
    features = torch.randn(too_few, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=f"{too_few} images are too few for a {method} map"):
        widgets.project_2d(features, method=method)
    if method != "umap":  # (umap-learn compiles for ~20 s on its first call: left to the explorer's own tests)
        assert widgets.project_2d(torch.randn(12, 8), method=method).shape == (12, 2)


def test_embedding_explorer_recolours_with_the_dropdown(text_mode_run):
    tiny_run = text_mode_run[0]
    explorer = EmbeddingExplorer(tiny_run, split="test", color_by="class", method="pca")
    n = len(tiny_run.trainer.test_set)
    assert explorer.coords.shape == (n, 2) and explorer.labels.shape == explorer.clusters.shape == (n,)
    own_head = tiny_run.assign("test") is not None  # only when the method's K equals the number of classes
    assert explorer.cluster_source == ("the method's own K = C head" if own_head else
                                       "spherical k-means (K = C) on the features")
    assert 0.0 <= explorer.scores["nmi"] <= 1.0
    explorer._repr_mimebundle_()  # builds the widget, as displaying it in a notebook does
    by_class = explorer.image.value
    explorer.dropdown.value = "cluster"
    assert explorer.color_by == "cluster" and explorer.image.value != by_class
    assert widgets.explore_embedding(tiny_run, method="pca", color_by="cluster").figure() is not None
    with pytest.raises(ValueError, match="color_by must be"):
        explorer.show("blob")
    assert explorer.color_by == "cluster"  # unchanged


def test_embedding_explorer_scores_the_clustering_the_evaluation_scores():
    # Without a K = C head of its own, the explorer's title must give the numbers metrics.json and notebook 08
    # give for the same features: the same k-means (k-means++, same iterations, same seed)
    from selfsup_lab.analysis import clustering_report
    from selfsup_lab.metrics import kmeans_clustering_scores

    g = torch.Generator().manual_seed(3)
    labels = torch.arange(300) % 5
    features = torch.randn(5, 8, generator=g)[labels] + 2.5 * torch.randn(300, 8, generator=g)  # slow to converge

    class Run:
        def embed(self, split):
            return features, labels

        def assign(self, split):
            return None

        def _split(self, split):
            return None

    explorer = EmbeddingExplorer(Run(), method="pca", seed=3)
    assert explorer.scores == kmeans_clustering_scores(features, labels, seed=3)
    assert explorer.clusters.tolist() == clustering_report(features, labels, seed=3)["cluster_ids"]


@pytest.mark.parametrize("args, words", [(dict(method="foo"), "unknown projection 'foo'"),
                                         (dict(max_points=2), "max_points must be at least 10")])
def test_embedding_explorer_refuses_bad_arguments_before_computing_anything(args, words):
    class NotToBeUsed:  # embed() would compute features: a bad argument must be found first
        def embed(self, split):
            raise AssertionError("features computed before the arguments were checked")

        assign = embed

    with pytest.raises(ValueError, match=words):
        EmbeddingExplorer(NotToBeUsed(), **args)
    with pytest.raises(ValueError, match="needs a run .* got a tuple"):
        widgets.explore_embedding((torch.zeros(4, 2), torch.zeros(4)))


def test_a_map_of_collapsed_features_is_refused_in_one_sentence_not_a_crash():
    with pytest.raises(ValueError, match="all the features are the same point"):
        widgets.project_2d(torch.ones(12, 8), method="tsne")  # scikit-learn's t-SNE would segfault on these
