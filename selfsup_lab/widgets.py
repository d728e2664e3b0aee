"""Notebook widgets: watch training live, compare runs, play with the balancing rules, explore embeddings.

    from selfsup_lab.widgets import LiveDashboard, OccupancyBoard, ClusterSizePlayground, explore_embedding

    run = selfsup_lab.train("excb", "digits", callbacks=[LiveDashboard()], progress=False)
    ClusterSizePlayground()                       # sliders → toy stream → four balancing rules
    explore_embedding(run, color_by="cluster")    # UMAP of the backbone features

* `LiveDashboard` — a trainer `Callback` that draws loss, sorted cluster occupancy, occupancy entropy, kNN
  and throughput into ONE picture that is redrawn in place (at most once per `refresh_seconds`), with a
  Stop button that calls `trainer.request_stop()`. Outside Jupyter it is the plain tqdm progress bar.
* `OccupancyBoard` — several runs report into one board (one bar chart per run, one shared entropy plot);
  `dashboard_side_by_side(methods, dataset)` trains them one after another into it.
* `simulate` + `ClusterSizePlayground` — the balancing rules of `balancing.py` on a toy stream of points,
  a pure function (unit-testable, usable for static plots) and the sliders around it; a rule of your own,
  `rule(scores, state, params) -> targets`, runs beside the lab's.
* `EmbeddingExplorer` / `explore_embedding` — a 2-D map (UMAP by default) coloured by class or by cluster.

ipywidgets and IPython are imported inside the functions that need them, so `import selfsup_lab` (and this
module) works without them. Figures are `matplotlib.figure.Figure` objects rendered to PNG bytes for an
`ipywidgets.Image`: never pyplot figures, so the notebook's inline backend never prints extra copies.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import html
import io
import math
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import balancing, data, viz
from .metrics import occupancy_stats
from .train import Callback, ProgressBar

__all__ = [
    "in_notebook", "LiveDashboard", "OccupancyBoard", "dashboard_side_by_side",
    "RULES", "PlaygroundParams", "simulate", "simulate_all", "rule_name", "playground_figure", "ClusterSizePlayground",
    "EmbeddingExplorer", "explore_embedding", "project_2d",
]


# --- shared helpers -------------------------------------------------------------------------------------

def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, VS Code, nbclient), False in a terminal or in pytest."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _resolve_mode(mode: str) -> str:
    if mode not in ("auto", "widget", "text"):
        raise ValueError(f"mode must be 'auto', 'widget' or 'text', got {mode!r}")
    if mode == "auto":
        return "widget" if in_notebook() else "text"
    return mode


def _figure(width: float, height: float):
    """A figure that pyplot does not know about: the inline backend never shows it by itself (a widget can
    redraw it a hundred times without flooding the notebook), and `display(fig)` or a cell's last line
    still shows it, through `_repr_png_`."""
    from matplotlib.figure import Figure

    class NotebookFigure(Figure):
        def _repr_png_(self):
            return _png(self, 100)

    return NotebookFigure(figsize=(width, height))


def _png(fig, dpi: int) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _display(widget) -> None:
    from IPython.display import display

    display(widget)


def _message(ax, text: str) -> None:
    """An empty panel that says what would be there."""
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, color="0.35", wrap=True, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _sorted_share_bars(ax, counts, title: str, color: str = "tab:blue", ymax: float | None = None) -> None:
    """Cluster sizes as shares, largest first, with the uniform level 1/K dashed."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    share = (counts / counts.sum().clamp_min(1)).sort(descending=True).values
    K = share.numel()
    ax.bar(range(K), share.tolist(), width=1.0, color=color)
    ax.axhline(1.0 / K, color="k", ls="--", lw=0.8)
    ax.set_xlim(-0.5, K - 0.5)
    if ymax is not None:
        ax.set_ylim(0, ymax)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("cluster, sorted by size", fontsize=8)
    ax.tick_params(labelsize=7)


_CLICK_SUBSHELL: dict = {}


def _handle_clicks_while_busy(widget) -> bool:
    """Let the frontend's clicks on `widget` reach Python while the cell that trains is still running.

    A Jupyter kernel normally handles widget messages only between cells, so a Stop button pressed during
    `train(...)` would be seen after training ends. ipykernel ≥ 7 can route one comm's messages to a
    *subshell* (a second thread with its own event loop); we create one helper subshell per kernel and
    send this widget's messages there. The click handler then runs on that thread and only sets a flag that
    the training loop reads. Best effort: on older kernels this returns False and the click is handled when
    the cell finishes (the Kernel ▸ Interrupt menu still stops training; the last checkpoint is kept).
    """
    try:
        import concurrent.futures

        from ipykernel.kernelbase import Kernel

        if not Kernel.initialized():
            return False
        kernel = Kernel.instance()
        thread = getattr(kernel, "shell_channel_thread", None)
        comm = getattr(widget, "comm", None)
        if thread is None or comm is None or not hasattr(comm, "_reply_subshell_for"):
            return False
        if _CLICK_SUBSHELL.get("kernel") is not kernel:
            manager = thread.manager
            created: concurrent.futures.Future = concurrent.futures.Future()

            def create():  # must run on the shell-channel thread
                try:
                    created.set_result(manager._create_subshell())
                except BaseException as err:  # noqa: BLE001 - reported through the future
                    created.set_exception(err)

            thread.io_loop.add_callback(create)
            _CLICK_SUBSHELL.update(kernel=kernel, subshell=created.result(timeout=5))
        subshell = _CLICK_SUBSHELL["subshell"]
        comm._reply_subshell_for = lambda data, default: subshell
        return True
    except Exception:  # noqa: BLE001 - a nicety, never a reason to fail training
        return False


# --- the live training dashboard ------------------------------------------------------------------------

def _kept_checkpoint(trainer) -> str:
    """What a stopped run leaves behind, and how to continue it."""
    if not trainer.epoch:
        return "no epoch was completed, so there is no checkpoint: run the cell again to start over"
    return f"the checkpoint of epoch {trainer.epoch} is kept in {trainer.out}; train(..., resume=True) continues"


class LiveDashboard(Callback):
    """Watch a run while it trains: one picture redrawn in place, plus a Stop button.

        run = selfsup_lab.train("excb", "digits", callbacks=[LiveDashboard()], progress=False)

    Panels: loss per step (and its running mean) · the latest window's cluster sizes sorted largest first
    (clustering methods; SimCLR-like methods show how often the positive ranks first) · the normalised
    occupancy entropy H/log K over training (1 = balanced, 0 = collapsed), and per epoch the same head's
    entropy with the balancing rule switched off (dashed) and the mean entropy of a single batch (dotted: below
    the solid line when batches sit in few clusters that take turns) · kNN top-1 whenever the trainer evaluates
    (`eval_every=N`). The header line has epoch, step, loss, throughput and time left.

    Redraws are throttled: at most once per `refresh_seconds` (and every `refresh_steps` steps if given),
    never more than ~20% of the time, always at an epoch end and at the end — so plotting does not slow
    training down.
    The Stop button calls `trainer.request_stop()`: training stops after the current step, the checkpoint
    of the last completed epoch is kept, and `train(..., resume=True)` continues from it.

    mode: "auto" (a widget inside a Jupyter kernel, the tqdm bar elsewhere), "widget" or "text".
    Whatever the mode, the data it collects are attributes: `steps`, `losses`, `step_logs`, `records`,
    `occupancy` [(step, counts)], `entropy` [(step, H/log K)], `entropy_without_rule` [(step, H/log K) per epoch],
    `batch_entropy` [(step, mean H/log K of one batch) per epoch], `knn` [(epoch, top-1)], `views_per_s`.
    """

    def __init__(self, refresh_seconds: float = 1.0, refresh_steps: int | None = None, mode: str = "auto",
                 figsize: tuple[float, float] = (10.0, 5.4), dpi: int = 72):
        self.refresh_seconds = refresh_seconds
        self.refresh_steps = refresh_steps
        _resolve_mode(mode)  # a wrong mode is named now, not once the data are loaded and training starts
        self.requested_mode = mode
        self.figsize = figsize
        self.dpi = dpi
        self.trainer = None
        self.mode: str | None = None
        self.widget = None
        self.stop_button = None
        self._reset()

    def _reset(self) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.step_logs: dict[str, list[float]] = {}
        self.records: list[dict] = []
        self.occupancy: list[tuple[int, list[int]]] = []
        self.entropy: list[tuple[int, float]] = []
        self.entropy_without_rule: list[tuple[int, float]] = []
        self.batch_entropy: list[tuple[int, float]] = []
        self.knn: list[tuple[int, float]] = []
        self.views_per_s: float | None = None
        self.redraws = 0
        self.render_seconds = 0.0
        self.stop_clicked = False
        self._occupancy_seen = 0
        self._fallback: ProgressBar | None = None
        self._last_draw = -math.inf
        self._last_header = -math.inf
        self._last_draw_step = 0
        self._start_time = time.perf_counter()
        self._start_step = 0

    # -- callback hooks --------------------------------------------------------------------------------
    def on_train_start(self, trainer) -> None:
        self._reset()
        self.trainer = trainer
        self._start_step = trainer.global_step
        self.mode = _resolve_mode(self.requested_mode)
        if self.mode == "text":
            # The plain progress bar, unless the trainer already runs one (progress=True).
            if not any(isinstance(cb, ProgressBar) for cb in trainer.callbacks):
                self._fallback = ProgressBar()
                self._fallback.on_train_start(trainer)
            return
        self._build_widget()
        self._collect_occupancy(trainer)
        self.refresh()
        _display(self.widget)

    def on_step_end(self, trainer, logs: dict) -> None:
        self.steps.append(trainer.global_step)
        self.losses.append(float(logs["loss"]))
        for key, value in logs.items():
            if key not in ("loss", "views_per_s"):
                self.step_logs.setdefault(key, []).append(float(value))
        self.views_per_s = logs.get("views_per_s", self.views_per_s)
        self._collect_occupancy(trainer)
        if self._fallback is not None:
            self._fallback.on_step_end(trainer, logs)
        if self.mode != "widget":
            return
        now = time.perf_counter()
        # Never spend more than ~1/5 of the time drawing, however slow the machine is.
        due = now - self._last_draw >= max(self.refresh_seconds, 4 * self.render_seconds)
        if self.refresh_steps:
            due = due or trainer.global_step - self._last_draw_step >= self.refresh_steps
        if due:
            self.refresh()
        elif now - self._last_header >= 0.25:
            self._update_header()

    def on_epoch_end(self, trainer, record: dict) -> None:
        self.records.append(dict(record))
        if record.get("knn_top1") is not None:
            self.knn.append((int(record["epoch"]), float(record["knn_top1"])))
        if record.get("occupancy_without_rule"):
            self.entropy_without_rule.append((trainer.global_step, record["occupancy_without_rule"]["entropy_ratio"]))
        if record.get("occupancy", {}).get("batch_entropy_ratio") is not None:
            self.batch_entropy.append((trainer.global_step, record["occupancy"]["batch_entropy_ratio"]))
        self._collect_occupancy(trainer)
        if self.mode == "widget":
            self.refresh()

    def close(self) -> None:
        if self._fallback is not None:  # the trainer closes the callbacks it was given, not the bar made here
            self._fallback.close()

    def on_train_end(self, trainer) -> None:
        self.close()
        status = getattr(trainer, "status", "")
        if self.mode == "text" and status.startswith("stopped"):  # the widget's header says it there
            print(f"{status}: {_kept_checkpoint(trainer)}", file=sys.stderr)
        if self.mode == "widget":
            self.stop_button.disabled = True
            self.stop_button.description = "finished" if trainer.status == "finished" else "stopped"
            self.refresh()

    # -- data --------------------------------------------------------------------------------------------
    def _collect_occupancy(self, trainer) -> None:
        """Pick up the occupancy windows the trainer logged since we last looked."""
        windows = getattr(trainer, "occupancy_log", {}).get("steps", [])
        for entry in windows[self._occupancy_seen:]:
            counts = list(entry["counts"])
            self.occupancy.append((int(entry["step"]), counts))
            self.entropy.append((int(entry["step"]), occupancy_stats(counts)["entropy_ratio"]))
        self._occupancy_seen = len(windows)

    # -- the widget ------------------------------------------------------------------------------------
    def _build_widget(self) -> None:
        import ipywidgets as W

        self.header = W.HTML()
        self.stop_button = W.Button(description="■ Stop", button_style="danger",
                                    tooltip="stop after this step; the last completed epoch's checkpoint is kept",
                                    layout=W.Layout(width="110px"))
        self.stop_button.on_click(self._on_stop_clicked)
        _handle_clicks_while_busy(self.stop_button)
        self.image = W.Image(format="png")
        self.widget = W.VBox([W.HBox([self.stop_button, self.header]), self.image])
        self.widget.add_class("selfsup-live-dashboard")

    def _on_stop_clicked(self, _button=None) -> None:
        self.stop_clicked = True
        if self.trainer is not None:
            self.trainer.request_stop()
        if self.stop_button is not None:
            self.stop_button.description = "stopping…"
            self.stop_button.disabled = True

    def stop(self) -> None:
        """The same as pressing the Stop button."""
        self._on_stop_clicked()

    def header_text(self) -> str:
        t = self.trainer
        if t is None:
            return "waiting for training to start"
        done = t.global_step - self._start_step
        elapsed = time.perf_counter() - self._start_time
        status = getattr(t, "status", "")
        stopped = status.startswith("stopped")
        epoch = f"{t.epoch} of {t.epochs} epochs done" if stopped else f"epoch {min(t.epoch + 1, t.epochs)}/{t.epochs}"
        parts = [f"<b>{t.config.method}</b> on {data.display_name(t.config.dataset)}", epoch,
                 f"step {t.global_step}/{t.total_steps}"]
        if self.losses:
            parts.append(f"loss {self.losses[-1]:.3f}")
        if self.views_per_s:
            parts.append(f"{self.views_per_s:,.0f} views/s")
        if done > 0:
            left = elapsed / done * max(t.total_steps - t.global_step, 0)
            parts.append(f"{elapsed:.0f} s elapsed" + ("" if stopped or status == "finished" else f", ~{left:.0f} s left"))
        if status.startswith("stopped"):
            parts.append(f"<b>{status}</b>: {_kept_checkpoint(t)}")
        elif status == "finished":
            parts.append("<b>finished</b>")
        elif self.stop_clicked:
            parts.append("<b>stopping after this step…</b>")
        return " · ".join(parts)

    def _update_header(self) -> None:
        self._last_header = time.perf_counter()
        if self.widget is not None:
            self.header.value = self.header_text()

    def refresh(self) -> None:
        """Redraw the picture and the header now."""
        if self.widget is None:
            return
        start = time.perf_counter()
        self.image.value = _png(self.figure(), self.dpi)
        self.redraws += 1
        self._last_draw = time.perf_counter()
        self.render_seconds = self._last_draw - start
        self._last_draw_step = self.trainer.global_step if self.trainer is not None else 0
        self._update_header()

    def figure(self):
        """The dashboard picture as a matplotlib Figure (also usable without widgets)."""
        fig = _figure(*self.figsize)
        (ax_loss, ax_bars), (ax_entropy, ax_knn) = fig.subplots(2, 2)

        if self.losses:
            window = max(1, len(self.losses) // 25)
            ax_loss.plot(self.steps, self.losses, lw=0.6, color="tab:blue", alpha=0.45 if window > 1 else 1.0,
                         label="step")
            if window > 1:
                smooth = torch.tensor(self.losses).unfold(0, window, 1).mean(1).tolist()
                ax_loss.plot(self.steps[window - 1:], smooth, color="tab:blue", label=f"mean of {window}")
                ax_loss.legend(fontsize=7, frameon=False)
            ax_loss.set_xlabel("step", fontsize=8)
            ax_loss.tick_params(labelsize=7)
            ax_loss.grid(alpha=0.3)
        else:
            _message(ax_loss, "the loss appears after the first step")
        ax_loss.set_title("loss", fontsize=9)

        if self.occupancy:
            step, counts = self.occupancy[-1]
            stats = occupancy_stats(counts)
            _sorted_share_bars(ax_bars, counts, f"cluster sizes, window ending at step {step} "
                               f"(K={len(counts)}, {stats['empty']} empty)")
            ax_bars.set_ylabel("share", fontsize=8)
        elif "pos_top1" in self.step_logs:
            ax_bars.plot(self.steps[-len(self.step_logs["pos_top1"]):], self.step_logs["pos_top1"], lw=0.8,
                         color="tab:green")
            ax_bars.set_ylim(0, 1)
            ax_bars.set_title("positive ranked first among 2B−1 candidates", fontsize=9)
            ax_bars.set_xlabel("step", fontsize=8)
            ax_bars.tick_params(labelsize=7)
            ax_bars.grid(alpha=0.3)
        else:
            _message(ax_bars, "cluster sizes appear here for clustering methods\n(after the first occupancy window)")

        if self.entropy:
            xs, ys = zip(*self.entropy)
            ax_entropy.plot(xs, ys, color="tab:purple", marker="o" if len(xs) < 30 else None, ms=3,
                            label="training assignments")
            if self.batch_entropy:
                xs, ys = zip(*self.batch_entropy)
                ax_entropy.plot(xs, ys, color="tab:purple", ls=":", marker="+", ms=5, lw=1,
                                label="one batch alone (mean per epoch)")
            if self.entropy_without_rule:
                xs, ys = zip(*self.entropy_without_rule)
                ax_entropy.plot(xs, ys, color="tab:purple", ls="--", marker="x", ms=4, lw=1,
                                label="same steps, balancing rule off (per epoch)")
            if self.batch_entropy or self.entropy_without_rule:
                ax_entropy.legend(fontsize=7, frameon=False, loc="lower left")
            ax_entropy.set_ylim(-0.02, 1.02)
            ax_entropy.set_xlabel("step", fontsize=8)
            ax_entropy.tick_params(labelsize=7)
            ax_entropy.grid(alpha=0.3)
        else:
            _message(ax_entropy, "occupancy entropy H/log K (clustering methods)")
        ax_entropy.set_title("occupancy entropy H/log K (1 = balanced, 0 = collapsed)", fontsize=9)

        if self.knn:
            epochs, accuracy = zip(*self.knn)
            ax_knn.plot(epochs, accuracy, marker="o", ms=3, color="tab:orange")
            ax_knn.set_ylim(0, 1)
            ax_knn.set_xlabel("epoch", fontsize=8)
            ax_knn.tick_params(labelsize=7)
            ax_knn.grid(alpha=0.3)
        else:
            _message(ax_knn, "kNN accuracy is measured at the end;\npass eval_every=N to watch it during training")
        ax_knn.set_title("kNN top-1 (test split)", fontsize=9)
        fig.subplots_adjust(left=0.07, right=0.98, top=0.94, bottom=0.09, hspace=0.45, wspace=0.2)
        return fig

    def _repr_mimebundle_(self, **kwargs):
        if self.widget is None:
            return {"text/plain": "LiveDashboard (shown when training starts)"}
        return self.widget._repr_mimebundle_(**kwargs)


# --- several runs side by side --------------------------------------------------------------------------

def _series_from_trainer(series: dict, trainer) -> dict:
    """Fill one run's series of an `OccupancyBoard` from its trainer's occupancy log and its epochs so far."""
    windows = trainer.occupancy_log.get("steps", [])
    series["steps"] = [int(e["step"]) for e in windows]
    series["counts"] = [list(e["counts"]) for e in windows]
    series["total_steps"] = trainer.total_steps
    series["batch_entropy"] = [((i + 1) * trainer.steps_per_epoch, r["occupancy"]["batch_entropy_ratio"])
                               for i, r in enumerate(trainer.history)
                               if r.get("occupancy", {}).get("batch_entropy_ratio") is not None]
    return series


class _BoardReporter(Callback):
    """The callback a run uses to report into an `OccupancyBoard` under one name."""

    def __init__(self, board: "OccupancyBoard", name: str):
        self.board, self.name, self._seen = board, name, 0

    def on_train_start(self, trainer):
        # The trainer's own log is the run's whole story: a resumed run brings its earlier windows with it, and
        # a run trained again under the same name replaces the old one rather than being appended to it.
        series = _series_from_trainer(self.board._series(self.name), trainer)
        series["status"] = "training"
        self._seen = len(series["steps"])
        self.board._maybe_refresh(force=True)

    def on_step_end(self, trainer, logs):
        if self._pull(trainer):
            self.board._maybe_refresh()

    def on_epoch_end(self, trainer, record):
        self._pull(trainer)
        batch_entropy = record.get("occupancy", {}).get("batch_entropy_ratio")
        if batch_entropy is not None:
            self.board._series(self.name)["batch_entropy"].append((trainer.global_step, batch_entropy))
        self.board._maybe_refresh(force=True)

    def on_train_end(self, trainer):
        self.board._series(self.name)["status"] = trainer.status
        self.board._maybe_refresh(force=True)

    def _pull(self, trainer) -> bool:
        windows = trainer.occupancy_log.get("steps", [])
        new = windows[self._seen:]
        series = self.board._series(self.name)
        series["total_steps"] = trainer.total_steps
        for entry in new:
            series["steps"].append(int(entry["step"]))
            series["counts"].append(list(entry["counts"]))
        self._seen = len(windows)
        return bool(new)


class OccupancyBoard:
    """Cluster occupancy of several runs in one picture: sorted sizes per run + entropy of all runs.

        board = OccupancyBoard()
        board.show()
        for m in ("naive", "swav", "excb"):
            selfsup_lab.train(m, "digits", callbacks=[board.callback(m)], progress=False)

    or `dashboard_side_by_side(["naive", "swav", "excb"], "digits", epochs=5)`. Finished runs can be added
    with `board.add_run(name, run)`. The picture is redrawn in place, at most once per `refresh_seconds`.
    """

    def __init__(self, names: list[str] | None = None, refresh_seconds: float = 1.0, mode: str = "auto",
                 dpi: int = 72):
        self.refresh_seconds, self.dpi = refresh_seconds, dpi
        self.mode = _resolve_mode(mode)
        self.series: dict[str, dict] = {}
        for name in names or []:
            self._series(name)
        self.widget = None
        self.redraws = 0
        self._last_draw = -math.inf
        if self.mode == "widget":
            import ipywidgets as W

            self.image = W.Image(format="png")
            self.widget = W.VBox([self.image])
            self.widget.add_class("selfsup-occupancy-board")

    def _series(self, name: str) -> dict:
        return self.series.setdefault(name, {"steps": [], "counts": [], "status": "waiting", "total_steps": None,
                                             "batch_entropy": []})  # [(step, one batch's mean H/log K) per epoch]

    def callback(self, name: str) -> Callback:
        """A trainer callback that reports this run's occupancy into the board under `name`."""
        self._series(name)
        return _BoardReporter(self, name)

    def add_run(self, name: str, run) -> None:
        """Add a finished (or loaded) run from its occupancy log."""
        _series_from_trainer(self._series(name), run.trainer)["status"] = run.status
        self._maybe_refresh(force=True)

    def show(self) -> "OccupancyBoard":
        if self.widget is not None:
            self.refresh()
            _display(self.widget)
        return self

    def _maybe_refresh(self, force: bool = False) -> None:
        if self.widget is not None and (force or time.perf_counter() - self._last_draw >= self.refresh_seconds):
            self.refresh()

    def refresh(self) -> None:
        if self.widget is None:
            return
        self.image.value = _png(self.figure(), self.dpi)
        self.redraws += 1
        self._last_draw = time.perf_counter()

    def figure(self):
        names = list(self.series) or ["(no runs yet)"]
        n = len(names)
        fig = _figure(max(6.0, 2.6 * n), 5.0)
        grid = fig.add_gridspec(2, n)
        colors = [f"C{i}" for i in range(10)]
        ax_entropy = fig.add_subplot(grid[1, :])
        for i, name in enumerate(names):
            ax = fig.add_subplot(grid[0, i])
            series = self.series.get(name)
            if not series or not series["counts"]:
                status = series["status"] if series else ""
                _message(ax, "no clusters to show" if status.startswith(("finished", "stopped")) else status or "")
                ax.set_title(name, fontsize=9)
                continue
            stats = occupancy_stats(series["counts"][-1])
            _sorted_share_bars(ax, series["counts"][-1], f"{name}: H/log K = {max(0.0, stats['entropy_ratio']):.2f}",
                               color=colors[i % 10])
            if i == 0:
                ax.set_ylabel("share of the window", fontsize=8)
            total = series["total_steps"] or max(series["steps"])
            xs = [s / total for s in series["steps"]]
            ys = [occupancy_stats(c)["entropy_ratio"] for c in series["counts"]]
            ax_entropy.plot(xs, ys, color=colors[i % 10], label=f"{name} ({series['status']})")
            if series["batch_entropy"]:  # dotted: one batch alone, per epoch
                steps, values = zip(*series["batch_entropy"])
                ax_entropy.plot([s / total for s in steps], values, color=colors[i % 10], ls=":", marker="+", lw=1)
        ax_entropy.set_xlim(0, 1)
        ax_entropy.set_ylim(-0.02, 1.02)
        ax_entropy.set_xlabel("fraction of training", fontsize=8)
        ax_entropy.set_ylabel("H / log K", fontsize=8)
        ax_entropy.set_title("occupancy entropy H/log K (dotted: one batch alone, mean per epoch)", fontsize=9)
        ax_entropy.grid(alpha=0.3)
        if ax_entropy.lines:
            ax_entropy.legend(fontsize=7, frameon=False, loc="lower left")
        fig.subplots_adjust(left=0.08, right=0.98, top=0.92, bottom=0.1, hspace=0.5, wspace=0.3)
        return fig

    def _repr_mimebundle_(self, **kwargs):
        if self.widget is None:
            return {"text/plain": f"OccupancyBoard({', '.join(self.series)})"}
        self.refresh()
        return self.widget._repr_mimebundle_(**kwargs)


def dashboard_side_by_side(methods: list[str], dataset: str = "digits", board: OccupancyBoard | None = None,
                           **options) -> dict:
    """Train `methods` one after another on `dataset`, all reporting live into one `OccupancyBoard`.

    `methods` are names or Method subclasses of your own (shown by their class name). Returns {name: Run}.
    Options go to every `selfsup_lab.train` call; with `out=DIR` each run writes into DIR/<name>. On a CPU the
    runs take turns; the board keeps the finished ones on screen.
    """
    from .api import train
    from .methods import method_path, short_name

    labels = [short_name(method_path(method)) for method in methods]
    if len(set(labels)) < len(labels):
        raise ValueError(f"each method once, please: {', '.join(labels)}")
    names = dict(zip(labels, methods))
    board = board or OccupancyBoard(names=labels)
    board.show()
    out = options.pop("out", None)
    options.setdefault("progress", board.widget is None)
    runs = {}
    for name, method in names.items():
        run_out = f"{out}/{name}" if out else None
        runs[name] = train(method, dataset, callbacks=[board.callback(name)],
                           **({"out": run_out} if run_out else {}), **options)
    return runs


# --- the cluster-size playground ------------------------------------------------------------------------

RULES = ("naive", "sinkhorn", "coke", "excb")
RULE_TITLES = {"naive": "naive (no balancing)", "sinkhorn": "Sinkhorn (SwAV)",
               "coke": "CoKe (minimum size)", "excb": "ExCB (size estimate)"}
RULE_COLORS = {"naive": "tab:red", "sinkhorn": "tab:blue", "coke": "tab:green", "excb": "tab:purple"}
OWN_RULE_COLORS = ("tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")  # rules of your own


@dataclass(frozen=True)
class PlaygroundParams:
    """Everything `simulate` depends on. The defaults are chosen so that the four rules differ clearly."""

    num_clusters: int = 20  # K prototypes / centres
    batch_size: int = 64  # B points per step
    steps: int = 300
    imbalance: float = 20.0  # size of the largest blob / size of the smallest (1 = balanced)
    num_blobs: int = 5  # classes in the toy data
    dim: int = 16  # the sphere lives in R^dim
    spread: float = 0.35  # noise around each blob centre, before projecting onto the sphere
    view_noise: float = 0.1  # the two "augmented views" are two noisy copies of a point
    student_temperature: float = 0.1  # τ_s of the prediction softmax
    teacher_temperature: float = 0.05  # τ_t of naive's and ExCB's targets
    sinkhorn_epsilon: float = 0.05  # ε of SwAV's Sinkhorn-Knopp
    excb_momentum: float = 0.9  # m_s of ExCB's size estimate (toy runs are short: 0.9, not 0.999)
    coke_step: float = 5.0  # η of CoKe's dual ascent (2 lets the duals swing here: notebook 03, experiment B)
    coke_ratio: float = 0.5  # CoKe's minimum cluster size = ratio/K of the batch
    coke_epoch: int = 20  # steps per "epoch" for CoKe's running-mean centres
    encoder_lr: float = 0.2  # how fast the shared feature offset (the collapse direction) learns
    prototype_lr: float = 0.05  # how fast the prototypes learn (not CoKe: its centres are running means)
    window: int = 10  # occupancy is counted over the last `window` steps
    init: str = "data"  # prototypes start at K points of the stream ("data") or at random directions ("random")
    seed: int = 0

    def __post_init__(self):
        for name in ("num_clusters", "batch_size", "steps", "num_blobs", "dim", "coke_epoch", "window", "seed"):
            value = getattr(self, name)  # 1e3 or 20.0 from a calculation: the whole number it is
            if isinstance(value, float) and value.is_integer():
                object.__setattr__(self, name, int(value))
            elif not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be a whole number, got {value!r}; PlaygroundParams() lists every "
                                 f"default")
        checks = [
            (self.num_clusters >= 2, "num_clusters (K) must be at least 2"),
            (self.batch_size >= 2, "batch_size must be at least 2"),
            (self.steps >= 1, "steps must be at least 1"),
            (self.imbalance >= 1, "imbalance is the largest blob's size over the smallest's, so at least 1"),
            (self.num_blobs >= 1, "num_blobs must be at least 1"),
            (self.dim >= 2, "dim must be at least 2"),
            (min(self.student_temperature, self.teacher_temperature, self.sinkhorn_epsilon) > 0,
             "the temperatures and the Sinkhorn ε must be above 0"),
            (0 <= self.excb_momentum <= 1, "excb_momentum must be in [0, 1]"),
            (0 <= self.coke_ratio <= 1, "coke_ratio must be in [0, 1] (the minimum size is ratio/K of a batch)"),
            (min(self.coke_step, self.encoder_lr, self.prototype_lr, self.spread, self.view_noise) >= 0,
             "coke_step, encoder_lr, prototype_lr, spread and view_noise must be 0 or more"),
            (self.coke_epoch >= 1 and self.window >= 1, "coke_epoch and window must be at least 1"),
            (self.init in ("data", "random"), f"init must be 'data' or 'random', got {self.init!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}; PlaygroundParams() lists every default")


@contextlib.contextmanager
def _one_thread():
    """Tiny tensors run fastest on one thread (and do not fight other work for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def class_shares(params: PlaygroundParams) -> torch.Tensor:
    """Blob c gets a share ∝ imbalance^(−c/(C−1)): 1 = balanced, 20 = the largest is 20× the smallest."""
    C = params.num_blobs
    shares = float(params.imbalance) ** (-torch.arange(C, dtype=torch.float64) / max(C - 1, 1))
    return (shares / shares.sum()).float()


def rule_name(rule) -> str:
    """A rule's name: one of RULES as given, a function of your own by its __name__."""
    if isinstance(rule, str):
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}, or pass a function "
                             f"rule(scores, state, params) -> targets of your own")
        return rule
    if not callable(rule):
        raise ValueError(f"a rule is one of {', '.join(RULES)} or a function rule(scores, state, params) -> targets; "
                         f"got {rule!r}")
    function = rule.func if isinstance(rule, functools.partial) else rule  # partial(centering, momentum=0.5)
    return getattr(function, "__name__", None) or type(rule).__name__


def named_rules(rules) -> dict:
    """{name: rule} from one rule, a list of rules (built-in names or functions), or a dict {name: rule}. A rule
    of your own may not take a built-in rule's name: its pictures would carry that rule's title and colour."""
    if isinstance(rules, str) or callable(rules):
        rules = [rules]
    if isinstance(rules, dict):
        for rule in rules.values():
            rule_name(rule)  # checks it
        named = dict(rules)
    else:
        named = {}
        for rule in rules:
            name = rule_name(rule)
            if name in named:
                raise ValueError(f"two rules are named {name!r}; pass a dict {{name: rule}} to tell them apart")
            named[name] = rule
    if not named:
        raise ValueError(f"give at least one rule: one or more of {', '.join(RULES)} or functions of your own")
    for name, rule in named.items():
        if callable(rule) and name in RULES:
            raise ValueError(f"your rule is named {name!r} like the lab's own; rename the function or give it "
                             f"another name in a dict, e.g. {{'my {name}': {rule_name(rule)}}}")
    return named


@torch.no_grad()
def _own_targets(rule, name: str, scores: torch.Tensor, p: PlaygroundParams, state: dict) -> torch.Tensor:
    """q = rule(scores, state, params) for a rule of your own, checked: same shape as the scores, rows that are
    probability distributions (the swapped-prediction loss is a cross-entropy against them)."""
    q = rule(scores.clone(), state, p)  # a copy: a rule that edits its input cannot change the other view's
    if not isinstance(q, torch.Tensor) or q.shape != scores.shape:
        got = f"shape {tuple(q.shape)}" if isinstance(q, torch.Tensor) else type(q).__name__
        raise ValueError(f"rule {name} returned {got} for scores of shape {tuple(scores.shape)}; a rule returns "
                         f"targets q of the scores' shape (B, K), one probability distribution per row")
    q = q.float()
    if not torch.isfinite(q).all() or (q < -1e-6).any() or not torch.allclose(q.sum(1), torch.ones(len(q)),
                                                                                 atol=1e-3):
        raise ValueError(f"rule {name} returned targets whose rows are not probability distributions (each row "
                         f"must be ≥ 0 and sum to 1, e.g. a softmax over the K clusters); rows sum to "
                         f"{q.sum(1).min():.3g}–{q.sum(1).max():.3g}")
    return q


@torch.no_grad()
def _targets(rule, name: str, scores: torch.Tensor, p: PlaygroundParams,
             state: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft targets q, hard assignments) for one view's scores (B, K) under `rule` — balancing.py does the work,
    or your function, with the state dict it keeps."""
    if callable(rule):
        q = _own_targets(rule, name, scores, p, state["own"])
        return q, q.argmax(dim=1)
    if rule == "naive":
        q = balancing.naive_targets(scores, p.teacher_temperature)
        return q, q.argmax(dim=1)
    if rule == "sinkhorn":
        q = balancing.sinkhorn(scores, epsilon=p.sinkhorn_epsilon)
        return q, q.argmax(dim=1)
    if rule == "excb":
        z = balancing.excb_balance_scores(scores, balancing.excb_relative_sizes(state["sizes"]))
        return torch.softmax(z / p.teacher_temperature, dim=1), z.argmax(dim=1)
    raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")


def simulate(rule, params: PlaygroundParams | None = None, *, name: str | None = None, **overrides) -> dict:
    """Stream an imbalanced toy data set through one balancing rule and record cluster occupancy per step.

    `rule` is one of RULES or a function of your own, `rule(scores, state, params) -> q`: the scores (B, K) of
    one view's batch against the prototypes (cosines, no gradient) in, soft targets q (B, K) out, each row a
    probability distribution; `state` is a dict kept from batch to batch (empty at the first), for running
    estimates; `params` the PlaygroundParams (e.g. `params.teacher_temperature`). It is called once per view,
    twice per step; the hard assignment of an image is the argmax of its q. `name` (default: the function's)
    labels the history and the messages.

    The toy (what is real, what is simplified):
      * Data: `num_blobs` Gaussian blobs around random directions, projected onto the unit sphere in R^dim;
        blob c is drawn with probability ∝ imbalance^(−c/(C−1)). Each step draws B points and two noisy
        "views" of each. The same seeded stream is used for every rule, so the rules are compared fairly.
      * The network is replaced by the identity plus ONE learnable vector b shared by all points:
        f = normalise(view + b). That vector is exactly the direction in which a real encoder can move all
        features together — the direction of collapse — and it is trained, like the prototypes, by the
        real swapped-prediction loss  −Σ_k q_ik log softmax(f_other·c/τ_s)_k  with plain SGD.
      * Prototypes start at K points of the stream (`init="data"`, roughly what ExCB's k-means
        initialisation and CoKe's bootstrap epoch give) or at random directions (`init="random"`).
      * The teacher is the student itself (no EMA), there is no multi-crop and no queue.
      * The rules are the real ones from `balancing.py`:
          naive     q = softmax(s/τ_t)                                      (§4.1)
          sinkhorn  q = Sinkhorn-Knopp(S, ε): each cluster gets B/K per batch  (§4.2)
          coke      y = argmax(f·c + ρ), dual step on ρ, running-mean centres; the target is one-hot(y)
                    and the centres are also the prototypes that score the prediction  (§4.4)
          excb      s' = balance(s, ρ = K·r/Σr), q = softmax(s'/τ_t), r ← m·r + (1−m)·(batch shares)  (§4.5)
          yours     q = rule(s, state, params)
    Each step is a few (B × K) matrix products, so hundreds of steps take well under a second.

    Two time scales, because a rule can look balanced over many batches and still collapse inside each one
    (every batch in one cluster, a different cluster each step, as ExCB with a too short memory does):
    `entropy` / `max_share` / `empty` describe the counts summed over the last `window` steps (what the
    trainer's occupancy log records), `batch_entropy` / `batch_max_share` each step's own batch, averaged
    over the same last `window` steps.

    Returns a dict: rule, params (as a dict), counts (steps, K) hard assignments per step over both views,
    window_counts (steps, K), entropy / max_share / empty / batch_entropy / batch_max_share (steps,),
    loss (steps,), class_shares (C,), and for ExCB `sizes` (steps, K), for CoKe `duals` (steps, K).
    """
    default_name = rule_name(rule)  # checks the rule
    name = name or default_name
    p = dataclasses.replace(params or PlaygroundParams(), **overrides)  # checks the values (__post_init__)
    K, B, d = int(p.num_clusters), int(p.batch_size), int(p.dim)

    with _one_thread():
        init = torch.Generator().manual_seed(p.seed)
        blob_centres = F.normalize(torch.randn(p.num_blobs, d, generator=init), dim=1)
        shares = class_shares(p)
        if p.init == "data":  # K points of the stream (what ExCB's k-means init / CoKe's epoch 0 approximate)
            blob = torch.multinomial(shares, K, replacement=True, generator=init)
            prototypes = F.normalize(blob_centres[blob] + p.spread * torch.randn(K, d, generator=init), dim=1)
        else:
            prototypes = F.normalize(torch.randn(K, d, generator=init), dim=1)
        stream = torch.Generator().manual_seed(p.seed + 1)  # the data: identical for every rule
        offset = torch.zeros(d)  # b, the shared "encoder" parameter
        state = {"sizes": torch.full((K,), 1.0 / K), "duals": torch.zeros(K), "centre_counts": torch.zeros(K),
                 "own": {}}  # "own": the state dict a rule of your own keeps
        counts, losses, sizes_log, duals_log = [], [], [], []

        for step in range(p.steps):
            blob = torch.multinomial(shares, B, replacement=True, generator=stream)
            points = F.normalize(blob_centres[blob] + p.spread * torch.randn(B, d, generator=stream), dim=1)
            views = [points + p.view_noise * torch.randn(B, d, generator=stream) for _ in range(2)]

            b = offset.clone().requires_grad_(True)
            protos = prototypes.clone().requires_grad_(rule != "coke")
            f1, f2 = (F.normalize(v + b, dim=1) for v in views)
            s1, s2 = f1 @ protos.t(), f2 @ protos.t()

            if rule == "coke":
                with torch.no_grad():
                    # The two-view variant clusters the views' mean. The toy re-normalises it so that f·c is a
                    # cosine for every point and η means the same for all; methods/coke.py clusters the plain
                    # mean (f1 + f2) / 2 as METHODS.md §4.4 writes it. (Tried plain in this toy: notebook 03's
                    # η sweep becomes irregular, η = 1 worse than both 0.5 and 3.)
                    f = F.normalize(f1 + f2, dim=1)
                    hard = balancing.coke_assign(f, prototypes, state["duals"])
                    batch_counts = torch.bincount(hard, minlength=K)
                    state["duals"] = balancing.coke_dual_step(state["duals"], batch_counts, B, p.coke_ratio / K,
                                                              p.coke_step)
                    if step % p.coke_epoch == 0:
                        state["centre_counts"] = torch.zeros(K)  # a new "epoch": counts start again
                    sums = torch.zeros(K, d).index_add_(0, hard, f)
                    new_centres, state["centre_counts"] = balancing.coke_center_step(
                        prototypes, state["centre_counts"], sums, batch_counts)
                    q1 = q2 = F.one_hot(hard, K).float()
                    step_counts = batch_counts * 2  # one label per image, counted for both views
            else:
                q1, a1 = _targets(rule, name, s1.detach(), p, state)
                q2, a2 = _targets(rule, name, s2.detach(), p, state)
                step_counts = torch.bincount(torch.cat([a1, a2]), minlength=K)
                if rule == "excb":  # the estimate is updated with the post-balancing assignments
                    state["sizes"] = balancing.excb_update_sizes(state["sizes"], step_counts.float() / (2 * B),
                                                                 p.excb_momentum)

            # Swapped prediction: each view predicts the other view's target.
            loss = -0.5 * ((q1 * torch.log_softmax(s2 / p.student_temperature, dim=1)).sum(1).mean()
                           + (q2 * torch.log_softmax(s1 / p.student_temperature, dim=1)).sum(1).mean())
            loss.backward()
            with torch.no_grad():
                offset = offset - p.encoder_lr * b.grad
                if rule == "coke":
                    prototypes = new_centres
                else:
                    prototypes = F.normalize(prototypes - p.prototype_lr * protos.grad, dim=1)

            counts.append(step_counts)
            losses.append(float(loss.detach()))
            if rule == "excb":
                sizes_log.append(state["sizes"].clone())
            if rule == "coke":
                duals_log.append(state["duals"].clone())

    counts = torch.stack(counts)
    ends = torch.arange(1, len(counts) + 1)
    starts = (ends - p.window).clamp_min(0)

    def over_window(per_step: torch.Tensor) -> torch.Tensor:  # row t: the sum over steps (t − window, t]
        running = torch.cat([torch.zeros_like(per_step[:1]), per_step.cumsum(0)])  # running[t] = Σ_{<t}
        return running[ends] - running[starts]

    windowed = over_window(counts)
    stats = [occupancy_stats(row) for row in windowed]
    per_batch = [occupancy_stats(row) for row in counts]
    batch_entropy = over_window(torch.tensor([b["entropy_ratio"] for b in per_batch], dtype=torch.float64))
    batch_max_share = over_window(torch.tensor([b["max_share"] for b in per_batch], dtype=torch.float64))
    seen = (ends - starts).double()
    history = {
        "rule": name,
        "params": dataclasses.asdict(p),
        "counts": counts,
        "window_counts": windowed,
        "entropy": torch.tensor([s["entropy_ratio"] for s in stats]),
        "max_share": torch.tensor([s["max_share"] for s in stats]),
        "empty": torch.tensor([s["empty"] for s in stats]),
        "batch_entropy": (batch_entropy / seen).float(),
        "batch_max_share": (batch_max_share / seen).float(),
        "loss": torch.tensor(losses),
        "class_shares": shares,
    }
    if sizes_log:
        history["sizes"] = torch.stack(sizes_log)
    if duals_log:
        history["duals"] = torch.stack(duals_log)
    return history


def simulate_all(params: PlaygroundParams | None = None, rules=RULES, **overrides) -> dict:
    """{name: simulate(rule, params)} for every rule: built-in names, functions of your own, or {name: rule}."""
    return {name: simulate(rule, params, name=name, **overrides) for name, rule in named_rules(rules).items()}


def _rule_color(rules: list[str], rule: str) -> str:
    """A built-in rule's own colour; rules of your own take the next free one in order."""
    own = [r for r in rules if r not in RULE_COLORS]
    return RULE_COLORS.get(rule) or OWN_RULE_COLORS[own.index(rule) % len(OWN_RULE_COLORS)]


def playground_figure(histories: dict, step: int | None = None, fig=None):
    """Top: each rule's sorted cluster sizes over the window ending at `step` (default: the last step).
    Bottom: the occupancy entropy of every rule over the steps — over the last `window` batches together
    (solid) and of each batch on its own (dashed, averaged over the same batches)."""
    rules = list(histories)
    any_history = histories[rules[0]]
    steps = len(any_history["entropy"])
    step = steps if step is None else max(1, min(int(step), steps))
    params = any_history["params"]
    K = params["num_clusters"]
    fig = fig or _figure(2.7 * max(len(rules), 3), 5.9)
    grid = fig.add_gridspec(2, len(rules), height_ratios=[1.0, 0.9])
    for i, rule in enumerate(rules):
        h = histories[rule]
        ax = fig.add_subplot(grid[0, i])
        window = h["window_counts"][step - 1]
        top = float(window.max() / window.sum().clamp_min(1))
        # Each panel has its own y range (at least 2.5× the uniform level), so a balanced rule's bars stay
        # readable next to a collapsed one; the title gives the numbers to compare.
        _sorted_share_bars(ax, window, f"{RULE_TITLES.get(rule, rule)}\nH/log K = "
                           f"{max(0.0, float(h['entropy'][step - 1])):.2f}, largest {100 * top:.0f}%\n"
                           f"one batch: H {max(0.0, float(h['batch_entropy'][step - 1])):.2f}, "
                           f"largest {100 * float(h['batch_max_share'][step - 1]):.0f}%",
                           color=_rule_color(rules, rule), ymax=min(1.0, max(1.15 * top, 2.5 / K)))
        if rule == "coke":
            ax.axhline(params["coke_ratio"] / K, color="tab:green", ls=":", lw=1.2, label="minimum ratio/K")
            ax.legend(fontsize=7, frameon=False, loc="upper right")
        if i == 0:
            ax.set_ylabel(f"share of the last {params['window']} batches", fontsize=8)
    ax = fig.add_subplot(grid[1, :])
    marker = "o" if steps <= 20 else None  # a line of one point draws nothing without a marker
    for rule in rules:
        ax.plot(range(1, steps + 1), histories[rule]["entropy"].tolist(), color=_rule_color(rules, rule),
                label=RULE_TITLES.get(rule, rule), marker=marker, ms=3)
        ax.plot(range(1, steps + 1), histories[rule]["batch_entropy"].tolist(), color=_rule_color(rules, rule),
                ls="--", lw=0.9, alpha=0.8, marker=marker, ms=2)
    ax.axvline(step, color="0.5", lw=0.8, ls=":")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(1, max(steps, 2))
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("H / log K", fontsize=8)
    shares = ", ".join(f"{100 * float(s):.0f}%" if s >= 0.01 else f"{100 * float(s):.1f}%"
                       for s in any_history["class_shares"])
    ax.set_title(f"occupancy entropy (1 = balanced, 0 = one cluster; solid: last {params['window']} batches "
                 f"together, dashed: each batch alone) — K={K}, B={params['batch_size']}, blob sizes {shares}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="lower right", ncol=len(rules))
    ax.tick_params(labelsize=7)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.87, bottom=0.09, hspace=0.55, wspace=0.25)
    return fig


# (PlaygroundParams field, label, kind, min, max, step) — the sliders of the playground.
PLAYGROUND_SLIDERS = [
    ("num_clusters", "K clusters", "int", 2, 100, 1),
    ("batch_size", "batch size B", "int", 8, 512, 8),
    ("imbalance", "imbalance", "log", 1.0, 200.0, None),
    ("teacher_temperature", "τ teacher", "log", 0.01, 1.0, None),
    ("student_temperature", "τ student", "log", 0.02, 1.0, None),
    ("sinkhorn_epsilon", "Sinkhorn ε", "log", 0.01, 1.0, None),
    ("excb_momentum", "ExCB momentum", "float", 0.0, 0.999, 0.001),
    ("coke_step", "CoKe η", "log", 0.01, 10.0, None),
    ("coke_ratio", "CoKe min ratio", "float", 0.0, 1.0, 0.05),
    ("encoder_lr", "encoder lr", "log", 0.001, 1.0, None),
    ("steps", "steps", "int", 20, 1000, 10),
]


def _show_on_slider(slider, value) -> None:
    """Move a slider to `value`, widening its range if the value lies outside; a log slider (whose min and max
    are exponents of its base) cannot show 0 or less and rests at its minimum instead."""
    log = type(slider).__name__ == "FloatLogSlider"
    if log and value <= 0:
        slider.value = slider.base ** slider.min
        return
    low, high = (slider.base ** slider.min, slider.base ** slider.max) if log else (slider.min, slider.max)
    if value < low:
        slider.min = math.log(value, slider.base) if log else value
    if value > high:
        slider.max = math.log(value, slider.base) if log else value
    slider.value = value


# The PlaygroundParams fields each built-in rule's simulation never reads: moving one of their sliders leaves that
# rule's history as it was, so only the rules that read it are simulated again (a test checks these sets
# against a full recomputation). Rules of your own are always simulated again: they may read any field.
UNUSED_BY = {
    "naive": {"sinkhorn_epsilon", "excb_momentum", "coke_step", "coke_ratio", "coke_epoch"},
    "sinkhorn": {"teacher_temperature", "excb_momentum", "coke_step", "coke_ratio", "coke_epoch"},
    "excb": {"sinkhorn_epsilon", "coke_step", "coke_ratio", "coke_epoch"},
    "coke": {"teacher_temperature", "sinkhorn_epsilon", "excb_momentum", "prototype_lr"},
}


class ClusterSizePlayground:
    """Sliders → `simulate` for every rule → the picture of `playground_figure`, redrawn in place.

        ClusterSizePlayground()                                   # in a notebook cell
        ClusterSizePlayground(PlaygroundParams(imbalance=50))
        ClusterSizePlayground(rules=["naive", "excb", my_rule])   # a rule of your own beside the lab's (see simulate)

    Each slider is an ipywidgets slider with a description ("K clusters", "batch size B", ...) in
    `self.sliders[field]`; the picture is one `ipywidgets.Image` (`self.image`). Moving a slider (or setting
    its `.value` from code) recomputes `self.histories` with the new `self.params` and redraws; the "show
    step" slider only moves through the stored history, so it needs no recomputation. Only the rules that read
    the moved parameter are simulated again (`UNUSED_BY`); `self.recomputed` names them. A value that cannot be
    simulated (a rule of your own that fails on it, say) is reported in the status line and the slider moves
    back: the picture always shows `self.params`.
    """

    def __init__(self, params: PlaygroundParams | None = None, rules=RULES, dpi: int = 72):
        import ipywidgets as W

        self.params = params or PlaygroundParams()
        self.rules = named_rules(rules)  # {name: built-in name or function}
        self.dpi = dpi
        self.recomputes = 0
        self._syncing = False  # True while code (not the user) moves a slider: no second recomputation
        self.histories: dict = {}
        self.histories = self.compute()

        self.sliders = {}
        style = {"description_width": "110px"}
        layout = W.Layout(width="340px")
        for name, label, kind, low, high, step in PLAYGROUND_SLIDERS:
            if kind == "int":
                slider = W.IntSlider(value=low, min=low, max=high, step=step, description=label)
            elif kind == "float":
                slider = W.FloatSlider(value=low, min=low, max=high, step=step, description=label,
                                       readout_format=".3g")
            else:
                slider = W.FloatLogSlider(value=low, base=10, min=math.log10(low), max=math.log10(high),
                                          step=0.05, description=label, readout_format=".3g")
            _show_on_slider(slider, getattr(self.params, name))  # before it is observed: no recomputation
            slider.continuous_update = False
            slider.style, slider.layout = style, layout
            slider.observe(self._on_param_change, names="value")
            self.sliders[name] = slider
        self.step_slider = W.IntSlider(value=self.params.steps, min=1, max=self.params.steps, description="show step",
                                       continuous_update=True, style=style, layout=layout)
        self.step_slider.observe(self._on_step_change, names="value")
        # ~40 frames a run, 250 ms apart: a redraw takes 0.1–0.3 s, so faster frames would only queue up
        self.play = W.Play(value=self.params.steps, min=1, max=self.params.steps,
                           step=max(1, self.params.steps // 40), interval=250, description="play")
        W.jslink((self.play, "value"), (self.step_slider, "value"))
        self.image = W.Image(format="png")
        self.image.add_class("selfsup-playground-plot")
        self.status = W.HTML()
        names = list(self.sliders)
        half = (len(names) + 1) // 2
        controls = W.HBox([W.VBox([self.sliders[n] for n in names[:half]]),
                           W.VBox([self.sliders[n] for n in names[half:]] + [W.HBox([self.play, self.step_slider])])])
        self.widget = W.VBox([controls, self.status, self.image])
        self.widget.add_class("selfsup-playground")
        self.redraw()

    def compute(self, params: PlaygroundParams | None = None) -> dict:
        """The histories for `params` (default: self.params), reusing each built-in rule's current history
        when only fields it never reads have changed. Changes nothing on the playground."""
        params = params or self.params
        self.recomputes += 1
        start = time.perf_counter()
        new, histories, self.recomputed = dataclasses.asdict(params), {}, []
        for name, rule in self.rules.items():
            old = self.histories.get(name)
            unused = UNUSED_BY.get(rule) if isinstance(rule, str) else None
            if old is not None and unused is not None and all(old["params"][k] == v for k, v in new.items()
                                                               if k not in unused):
                histories[name] = {**old, "params": new}  # what simulate(rule, params) would return
            else:
                histories[name] = simulate(rule, params, name=name)
                self.recomputed.append(name)
        self.compute_seconds = time.perf_counter() - start
        return histories

    def _on_param_change(self, change) -> None:
        if self._syncing:
            return
        names = {id(s): n for n, s in self.sliders.items()}
        name = names[id(change["owner"])]
        value = change["new"]
        try:
            self.set_params(**{name: int(value) if isinstance(getattr(self.params, name), int) else float(value)})
        except Exception as error:  # e.g. a rule of your own that fails on this value: say so where it is seen
            self._show_params(self.params)
            self.redraw()
            self.status.value = (f"<small><b>{name} = {value:g} could not be simulated</b> "
                                 f"({html.escape(str(error))}); the slider is back at "
                                 f"{getattr(self.params, name):g}</small>")

    def set_params(self, **changes) -> None:
        """Change parameters (as the sliders do), recompute, redraw; the sliders follow (widened if the value
        lies outside their range). A value `PlaygroundParams` refuses, or one a rule fails on, raises and
        changes nothing (the sliders move back)."""
        params = dataclasses.replace(self.params, **changes)  # checks the values before anything changes
        self.status.value = "<small>simulating…</small>"
        try:
            histories = self.compute(params)
        except Exception:
            self._show_params(self.params)  # a slider the user moved goes back to what is simulated
            raise
        self.params, self.histories = params, histories
        self._show_params(params)
        self.redraw()

    def _show_params(self, params: PlaygroundParams) -> None:
        """The sliders (and the time slider's range) show `params`, without triggering a recomputation."""
        self._syncing = True
        try:
            for name, slider in self.sliders.items():
                _show_on_slider(slider, getattr(params, name))
            for w in (self.step_slider, self.play):
                w.max = params.steps
                w.value = params.steps
            self.play.step = max(1, params.steps // 40)
        finally:
            self._syncing = False

    def _on_step_change(self, change) -> None:
        if not self._syncing:  # the time slider reset by set_params: one redraw follows anyway
            self.redraw(step=change["new"])

    def redraw(self, step: int | None = None) -> None:
        self.shown_step = step or self.params.steps
        self.image.value = _png(playground_figure(self.histories, self.shown_step), self.dpi)
        # e.g. η = 0 from code: a log slider cannot show 0, so the status line says what is simulated
        unshown = [f"{name} = {getattr(self.params, name):g}" for name, slider in self.sliders.items()
                   if not math.isclose(slider.value, getattr(self.params, name), rel_tol=1e-6)]
        self.status.value = (f"<small>{len(self.rules)} rules × {self.params.steps} steps simulated in "
                             f"{self.compute_seconds:.2f} s · showing step {self.shown_step}"
                             + (f" · not on the sliders: {', '.join(unshown)}" if unshown else "") + "</small>")

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


# --- embeddings -------------------------------------------------------------------------------------------

# One implementation of the 2-D map, shared with the static figure (viz.embedding_2d); imported here so
# widgets.project_2d keeps working.
project_2d = viz.project_2d


def _check_color_by(color_by: str) -> None:
    if color_by not in ("class", "cluster"):
        raise ValueError(f"color_by must be 'class' or 'cluster', got {color_by!r}")


class EmbeddingExplorer:
    """A 2-D map of a run's backbone features, coloured by true class or by cluster, with a dropdown.

        explorer = EmbeddingExplorer(run, split="test", color_by="cluster")

    Clusters come from the method's own K = C head (`run.assign`) or, for methods without clusters, from
    spherical k-means with K = C on the same features (as metrics.json does). The map is computed once;
    the dropdown only recolours. `figure(color_by)` gives the same picture as a plain matplotlib Figure.
    """

    def __init__(self, run, split: str = "test", color_by: str = "class", method: str = "umap",
                 max_points: int = 2000, seed: int = 0, dpi: int = 72):
        from .metrics import clustering_scores, kmeans_clusters

        _check_color_by(color_by)
        if not (hasattr(run, "embed") and hasattr(run, "assign")):
            raise ValueError(f"EmbeddingExplorer needs a run (from selfsup_lab.train(...) or selfsup_lab.load_run(path)), "
                             f"got a {type(run).__name__}; for features of your own, project_2d(features) gives the "
                             f"2-D coordinates to plot")
        viz.check_projection(method)  # before the features are computed
        if max_points < 10:
            raise ValueError(f"max_points must be at least 10 (a 2-D map of fewer points shows nothing), got {max_points}")
        self.run, self.split, self.method, self.dpi = run, split, method, dpi
        features, labels = run.embed(split)
        clusters = run.assign(split)
        if clusters is None:
            clusters = kmeans_clusters(features, int(labels.max()) + 1, seed)  # as the evaluation clusters
            self.cluster_source = "spherical k-means (K = C) on the features"
        else:
            self.cluster_source = "the method's own K = C head"
        clusters = clusters.cpu().long()
        self.scores = clustering_scores(labels, clusters)
        keep = torch.arange(len(labels))
        if len(keep) > max_points:
            keep = torch.randperm(len(keep), generator=torch.Generator().manual_seed(seed))[:max_points]
        self.labels, self.clusters = labels[keep], clusters[keep]
        self.coords = project_2d(features[keep], method, seed)
        data = run._split(split)
        self.class_names = list(getattr(data, "classes", []))
        self.color_by = color_by
        self.widget = None
        if in_notebook():
            self._build_widget()

    def _build_widget(self) -> None:
        import ipywidgets as W

        self.dropdown = W.Dropdown(options=[("true class", "class"), ("cluster", "cluster")], value=self.color_by,
                                   description="colour by")
        self.dropdown.observe(lambda change: self.show(change["new"]), names="value")
        self.image = W.Image(format="png")
        self.widget = W.VBox([self.dropdown, self.image])
        self.show(self.color_by)

    def show(self, color_by: str) -> None:
        """Recolour (the widget's dropdown calls this)."""
        _check_color_by(color_by)
        self.color_by = color_by
        if self.widget is None:
            self._build_widget()  # draws with self.color_by
            return
        if self.dropdown.value != color_by:
            self.dropdown.value = color_by  # calls show() again through the observer
            return
        self.image.value = _png(self.figure(color_by), self.dpi)

    def figure(self, color_by: str | None = None):
        color_by = color_by or self.color_by
        values = (self.labels if color_by == "class" else self.clusters).numpy()
        fig = _figure(6.0, 5.0)
        ax = fig.add_subplot()
        import matplotlib

        groups = sorted(set(values.tolist()))
        cmap = matplotlib.colormaps["tab10" if len(groups) <= 10 else "tab20"]
        for i, g in enumerate(groups):
            mask = values == g
            name = (self.class_names[g] if color_by == "class" and g < len(self.class_names) else
                    (f"cluster {g}" if color_by == "cluster" else str(g)))
            ax.scatter(self.coords[mask, 0], self.coords[mask, 1], s=6, color=cmap(i % cmap.N), label=name)
        if len(groups) <= 20:
            ax.legend(markerscale=2.5, fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
        ax.set_xticks([])
        ax.set_yticks([])
        cfg = self.run.trainer.config
        what = "true class" if color_by == "class" else f"cluster ({self.cluster_source})"
        projection = {"umap": "UMAP", "tsne": "t-SNE", "pca": "PCA"}.get(self.method, self.method)
        ax.set_title(f"{projection} of {cfg.method}'s backbone features ({self.split} split)\n"
                     f"coloured by {what} · clusters vs classes: NMI {self.scores['nmi']:.2f}, "
                     f"ACC {self.scores['acc']:.2f}", fontsize=9)
        fig.tight_layout()
        return fig

    def _repr_mimebundle_(self, **kwargs):
        if self.widget is None:
            self._build_widget()
        return self.widget._repr_mimebundle_(**kwargs)


def explore_embedding(run, split: str = "test", color_by: str = "class", method: str = "umap",
                      **kwargs) -> EmbeddingExplorer:
    """`EmbeddingExplorer(run, ...)`: the last line of a notebook cell shows it."""
    return EmbeddingExplorer(run, split=split, color_by=color_by, method=method, **kwargs)
