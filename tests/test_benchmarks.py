"""The benchmark scripts' logic runs on a CPU (their timings only mean something on the device they measure)."""
from __future__ import annotations

import contextlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (the folder is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_appends_a_table_with_every_cpu_pipeline(tmp_path):
    throughput = load_benchmark("throughput")
    results = tmp_path / "RESULTS.md"
    results.write_text("# earlier results\n")
    throughput.main(["--dataset", "synthetic", "--device", "cpu", "--backbone", "convnet", "--batch-size", "16",
                     "--steps", "2", "--warmup", "1", "--workers", "0", "--results", str(results)])
    text = results.read_text()
    assert text.startswith("# earlier results\n"), "the benchmark must append, not overwrite"
    rows = [line for line in text.splitlines() if line.startswith("| (")]
    assert [r.split("|")[1].strip()[:3] for r in rows] == ["(a)", "(b)", "(e)", "(f)", "(h)", "(i)"]
    for row in rows:
        views_per_s, ratio, memory = (cell.strip() for cell in row.split("|")[2:5])
        assert float(views_per_s.replace(",", "")) > 0
        assert float(memory) > 0  # resident memory is sampled on a CPU
    assert rows[0].split("|")[3].strip() == "1.00"  # (a) is the baseline of the × column


def test_throughput_profile_writes_one_table_per_pipeline(tmp_path):
    throughput = load_benchmark("throughput")
    throughput.main(["--dataset", "synthetic", "--device", "cpu", "--backbone", "convnet", "--batch-size", "16",
                     "--steps", "1", "--warmup", "1", "--workers", "0", "--results", str(tmp_path / "RESULTS.md"),
                     "--profile", "1", "--profile-dir", str(tmp_path / "out")])
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["profile-a.txt", "profile-b.txt", "profile-e.txt", "profile-f.txt", "profile-h.txt",
                       "profile-i.txt"]
    augmentation = (tmp_path / "out" / "profile-e.txt").read_text()
    model = (tmp_path / "out" / "profile-f.txt").read_text()
    assert "grid_sampler" in augmentation and "convolution" not in augmentation  # the crop, and no model
    assert "convolution" in model


def test_only_runs_the_chosen_pipelines_and_always_the_baseline(tmp_path, capsys):
    throughput = load_benchmark("throughput")
    results = tmp_path / "RESULTS.md"
    throughput.main(["--dataset", "synthetic", "--device", "cpu", "--backbone", "convnet", "--batch-size", "16",
                     "--steps", "1", "--warmup", "1", "--workers", "0", "--results", str(results), "--only", "f,i,c"])
    rows = [line for line in results.read_text().splitlines() if line.startswith("| (")]
    assert [r.split("|")[1].strip()[:3] for r in rows] == ["(a)", "(f)", "(i)"]
    assert "not run on cpu: (c)" in capsys.readouterr().err  # (c) needs CUDA: said, not silently left out
    with pytest.raises(SystemExit, match=r"--only 'f, z' names no row \(z\); the rows are \(a\) to \(n\)"):
        throughput.main(["--dataset", "synthetic", "--device", "cpu", "--only", "f, z", "--results", str(results)])


def test_rows_replayed_as_cuda_graphs_are_marked_and_explained(tmp_path, monkeypatch):
    """Their peak memory is measured over warm-up too (the graphs take it while recorded): the table says so.
    On a CPU no row uses graphs, so the check pretends they do."""
    throughput = load_benchmark("throughput")
    monkeypatch.setattr(throughput, "uses_cuda_graphs", lambda mode, device: True)
    results = tmp_path / "RESULTS.md"
    throughput.main(["--dataset", "synthetic", "--device", "cpu", "--backbone", "convnet", "--batch-size", "16",
                     "--steps", "1", "--warmup", "1", "--workers", "0", "--results", str(results), "--only", "f"])
    text = results.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| (")]
    assert rows[0].split("|")[4].strip().replace(".", "").isdigit()  # (a) is not replayed: no mark
    assert rows[1].split("|")[4].strip().endswith(" ¹")
    assert "¹ peak over warm-up and timed steps" in text


def test_one_pass_step_computes_the_same_loss_as_two_passes():
    """SimCLR's one_pass ((h)-(k)) changes only how the views go through the backbone: with batch norm frozen
    the loss is the same; with batch statistics over 2B images instead of B it is not."""
    import torch

    throughput = load_benchmark("throughput")
    cpu = torch.device("cpu")
    two = throughput.build_model("convnet", cpu, False, None, 8, 32, one_pass=False)[0]
    one = throughput.build_model("convnet", cpu, False, None, 8, 32, one_pass=True)[0]
    views = [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    for model in (two, one):
        model.eval()  # running statistics: both ways of batching then compute identical features
    torch.testing.assert_close(one.training_step(views, None).loss, two.training_step(views, None).loss)
    for model in (two, one):
        model.train()  # with batch statistics the two differ: the point of measuring (h) at all
    assert not torch.allclose(one.training_step(views, None).loss, two.training_step(views, None).loss)


def test_whole_step_scopes_trace_without_graph_breaks_and_take_the_eager_step():
    """(l)-(n) compile SimCLR's forward and loss as one graph (fullgraph: a break would split the CUDA graphs)
    and, for "step", the SGD step with a tensor learning rate. Traced here with the eager backend (the same
    graphs, no code generation): one step must change the parameters exactly as the uncompiled step does."""
    import torch

    throughput = load_benchmark("throughput")
    cpu = torch.device("cpu")
    views = [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    reference, optimizer, loss_fn, optimizer_step = throughput.build_model("convnet", cpu, False, None, 8, 32,
                                                                         one_pass=True)
    reference_losses = [throughput.train_step(loss_fn, optimizer, optimizer_step, views, amp=False) for _ in range(2)]
    for scope in ("forward", "step"):
        model, optimizer, loss_fn, optimizer_step = throughput.build_model(
            "convnet", cpu, False, "reduce-overhead", 8, 32, one_pass=True, scope=scope, backend="eager")
        assert isinstance(optimizer.param_groups[0]["lr"], torch.Tensor) == (scope == "step")
        # a compiled step finds its momentum buffers made (zeros) rather than making them inside a CUDA graph
        assert all(not optimizer.state[p]["momentum_buffer"].any() if scope == "step" else not optimizer.state[p]
                   for p in model.parameters())
        losses = [throughput.train_step(loss_fn, optimizer, optimizer_step, views, amp=False) for _ in range(2)]
        torch.testing.assert_close(losses, reference_losses)  # the second step uses the momentum buffers
        for p, q in zip(model.parameters(), reference.parameters()):
            torch.testing.assert_close(p, q)
        assert not torch.equal(next(model.parameters()), next(throughput.build_model(
            "convnet", cpu, False, None, 8, 32)[0].parameters())), "the step must have moved the weights"


def _rows(results):
    return [line for line in results.read_text().splitlines() if line.startswith("| (")]


def test_a_failing_pipeline_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    throughput = load_benchmark("throughput")

    def broken(*args, **kwargs):
        raise RuntimeError("compilation failed\nlong traceback text")

    monkeypatch.setattr(throughput, "run_augment_only", broken)  # (e)
    results = tmp_path / "RESULTS.md"
    throughput.main(["--dataset", "synthetic", "--device", "cpu", "--backbone", "convnet", "--batch-size", "16",
                     "--steps", "1", "--warmup", "1", "--workers", "0", "--results", str(results), "--only", "ef"])
    rows = _rows(results)
    assert [r.split("|")[1].strip()[:3] for r in rows] == ["(a)", "(e)", "(f)"]
    assert "failed: RuntimeError: compilation failed |" in rows[1]
    assert float(rows[2].split("|")[2].replace(",", "")) > 0


def test_an_interrupted_run_still_writes_the_rows_it_finished(tmp_path, monkeypatch):
    throughput = load_benchmark("throughput")

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C raises, and SIGTERM (`timeout`) while the benchmark runs

    monkeypatch.setattr(throughput, "run_augment_only", stopped)
    results = tmp_path / "RESULTS.md"
    with pytest.raises(SystemExit) as stop:  # a non-zero exit: the rows are kept, the run is not complete
        throughput.main(["--dataset", "synthetic", "--device", "cpu", "--backbone", "convnet", "--batch-size", "16",
                         "--steps", "1", "--warmup", "1", "--workers", "0", "--results", str(results), "--only", "ef"])
    assert stop.value.code == 130
    assert [r.split("|")[1].strip()[:3] for r in _rows(results)] == ["(a)"]
    assert "Interrupted after 1 of 3 pipelines" in results.read_text()


def test_kmeans_benchmark_times_both_variants_and_appends(tmp_path):
    bench = load_benchmark("kmeans")
    from selfsup_lab import kmeans

    twins_before = kmeans._twins
    results = tmp_path / "RESULTS_kmeans.md"
    rows = bench.main(["--num", "300", "--dim", "8", "--k", "12", "--iters", "2", "--repeats", "1", "--device", "cpu",
                       "--results", str(results)])
    assert kmeans._twins is twins_before  # the timing wrapper is removed again
    assert [r["twin_check"] for r in rows] == [True, False] and all(r["median_s"] > 0 for r in rows)
    assert rows[0]["calls"] >= 3  # one per assignment: the initial one and one per iteration (+ re-seed rounds)
    text = results.read_text()
    assert text.startswith("# Spherical k-means timings") and "| on |" in text and "| off |" in text


def test_lightly_crosscheck_agrees_and_catches_a_broken_loss(tmp_path, monkeypatch):
    """Only where lightly is installed (it is not a dependency): the lab's losses and kNN agree with lightly's,
    and a loss that forgets to mask each anchor's own similarity is caught."""
    pytest.importorskip("lightly")
    pytest.importorskip("pytorch_lightning")
    crosscheck = load_benchmark("crosscheck_lightly")
    results = tmp_path / "RESULTS_crosscheck.md"
    rows = crosscheck.main(["--small", "--results", str(results)])
    assert len(rows) == 8 and all(crosscheck.passed(row) for row in rows)
    assert "| NT-Xent, τ = 0.2 |" in results.read_text()

    def unmasked_nt_xent(z1, z2, temperature):  # j = i left among the candidates: a classic slip
        z = F.normalize(torch.cat([z1, z2]), dim=1)
        logits = z @ z.T / temperature
        partner = torch.cat([torch.arange(len(z1)) + len(z1), torch.arange(len(z1))])
        return F.cross_entropy(logits, partner), None

    monkeypatch.setattr(crosscheck, "nt_xent_loss", unmasked_nt_xent)
    with pytest.raises(SystemExit, match="disagree with lightly"):
        crosscheck.main(["--small", "--results", str(results)])
    monkeypatch.undo()

    # A slip that leaves the loss value alone and changes only the gradients (no gradient into view 2).
    real_nt_xent = crosscheck.nt_xent_loss
    monkeypatch.setattr(crosscheck, "nt_xent_loss", lambda z1, z2, t: real_nt_xent(z1, z2.detach(), t))
    with pytest.raises(SystemExit, match="disagree with lightly"):
        crosscheck.main(["--small", "--results", str(results)])
    monkeypatch.undo()

    # The ImageNet stem's max-pool has no parameters, so only the features can tell it from the CIFAR stem.
    real_backbone = crosscheck.build_backbone

    def imagenet_pooled_backbone(name):
        backbone = real_backbone(name)
        backbone.maxpool = torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        return backbone

    monkeypatch.setattr(crosscheck, "build_backbone", imagenet_pooled_backbone)
    rows = {row["check"]: row for row in crosscheck.run_checks(small=True)[1]}
    assert [check for check, row in rows.items() if not crosscheck.passed(row)] == [
        "ResNet-18 CIFAR stem: features with the same weights"]


def test_eval_precision_compares_float32_and_bf16_features_of_one_model():
    bench = load_benchmark("eval_precision")
    result = bench.main(["--dataset", "synthetic:n=400,classes=3,size=16", "--device", "cpu"])
    assert result["bank"] == 400 and result["queries"] > 0  # the training images are the bank
    assert 0.99 < result["cosine_min"] <= result["cosine_mean"] <= 1.0 + 1e-6  # bf16 rounds, it does not rewrite
    assert result["cosine_min"] < 1.0  # ...but it does round: the two passes really differ in precision
    assert 0 <= result["differing"] <= result["queries"]


def test_eval_precision_float32_pass_switches_off_a_trainers_own_bf16():
    """On a GPU the trainer's own autocast is bf16: the float32 pass must not inherit it (else both passes
    would be bf16 and agree exactly). Simulated on the CPU with a trainer whose autocast is CPU bf16."""
    import selfsup_lab

    bench = load_benchmark("eval_precision")
    run = selfsup_lab.api.untrained_run("synthetic:n=200,classes=2,size=16", linear=False, device="cpu",
                                        batch_size=64)
    trainer = run.trainer
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    trainer.autocast = bf16
    full, reduced = bench.features_both_ways(trainer, trainer.test_set.images)
    assert trainer.autocast is bf16  # left as it was
    assert full.dtype == reduced.dtype == torch.float32
    assert not torch.equal(full, reduced)
    assert torch.equal(full, trainer.features(trainer.test_set.images, autocast=contextlib.nullcontext))
    assert torch.equal(reduced, trainer.features(trainer.test_set.images))  # the trainer's own: bf16 here

    tf32_seen, features = [], trainer.features  # on a GPU, cuDNN's TF32 would make the float32 pass a third format

    def recording(*args, **kwargs):
        tf32_seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return features(*args, **kwargs)

    trainer.features, before = recording, (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    bench.features_both_ways(trainer, trainer.test_set.images)
    assert tf32_seen == [(False, False), before]  # float32 pass, then bf16 with the settings as they were
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_knn_protocols_reports_ours_and_the_references_on_one_run(tmp_path):
    import selfsup_lab

    out = tmp_path / "run"
    selfsup_lab.train("simclr", "synthetic:n=256,classes=4,size=16", epochs=1, batch_size=64, device="cpu",
                      out=str(out), figures=False, progress=False, method_options={"proj_hidden": 32})
    bench = load_benchmark("knn_protocols")
    rows = bench.main([str(out), "--device", "cpu"])
    assert [label for label, _ in rows] == [label for label, _, _ in bench.protocols()]
    assert all(0.0 <= accuracy <= 1.0 for _, accuracy in rows)
    saved = json.loads((out / "metrics.json").read_text())["knn_top1"]
    assert rows[0][1] == pytest.approx(saved)  # the first row is the number metrics.json holds
    # the plain-vote rows are scikit-learn's classifier on the same features
    from sklearn.neighbors import KNeighborsClassifier

    import selfsup_lab.api

    run = selfsup_lab.api.load_run(out, device="cpu")
    (train_x, train_y), (test_x, test_y) = run.embed("train"), run.embed("test")
    reference = KNeighborsClassifier(n_neighbors=10, metric="cosine").fit(train_x.numpy(), train_y.numpy())
    assert rows[1][1] == pytest.approx(reference.score(test_x.numpy(), test_y.numpy()))


def test_reference_recipe_trains_evaluates_and_writes_its_results(tmp_path):
    bench = load_benchmark("reference_recipe")
    out = tmp_path / "results" / "reference.json"
    result = bench.main(["--dataset", "synthetic:n=256,classes=4,size=16", "--epochs", "2", "--batch-size", "64",
                         "--device", "cpu", "--backbone", "convnet", "--proj-hidden", "32", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["lr"] == pytest.approx(0.06 * 64 / 256)
    assert len(result["epoch_losses"]) == 2 and all(torch.isfinite(torch.tensor(result["epoch_losses"])))
    assert list(result["knn_top1"]) == [label for label, _, _ in bench.PROTOCOLS]
    assert all(0.0 <= accuracy <= 1.0 for accuracy in result["knn_top1"].values())
    assert result["settings"]["temperature"] == 0.5 and result["settings"]["decay_all"] is True
    assert result["settings"]["precision"] == "bf16" and result["trained_in"] == "fp32"  # bf16 is for a GPU only


def test_reference_recipe_flags_reach_the_model_optimiser_schedule_and_views():
    from selfsup_lab import data
    from selfsup_lab.train import learning_rate

    bench = load_benchmark("reference_recipe")
    reference = bench.parse_args([])
    lab = bench.parse_args(["--proj-bn", "--no-decay-all", "--normalize", "--gray-p", "0.2", "--crop-low", "0.08",
                            "--schedule", "step", "--warmup-epochs", "10", "--drop-last"])
    # projector: Linear-ReLU-Linear, or the lab's with batch norm on the hidden layer
    plain, with_bn = (bench.projector(512, 1024, 128, a.proj_bn) for a in (reference, lab))
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in with_bn)
    # weight decay: every parameter, or none on batch-norm weights and biases
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    everything = bench.optimizer_for(model, 0.1, 5e-4, reference.decay_all)
    assert [g["weight_decay"] for g in everything.param_groups] == [5e-4]
    split = bench.optimizer_for(model, 0.1, 5e-4, lab.decay_all)
    assert [(g["weight_decay"], len(g["params"])) for g in split.param_groups] == [(5e-4, 1), (0.0, 3)]
    # views: pixels in [0, 1] or normalised; the crop and grayscale settings
    train_set = data.load_dataset("synthetic:n=64,classes=4,size=16")
    raw, normalised = (bench.augment_config(a, train_set) for a in (reference, lab))
    assert (raw.mean, raw.std, raw.scale, raw.gray_p) == ((0.0,) * 3, (1.0,) * 3, (0.2, 1.0), 0.1)
    assert (normalised.mean, normalised.std) == train_set.channel_stats() and normalised.gray_p == 0.2
    # schedule: cosine stepped per epoch without warm-up; the lab's per-step warm-up + cosine
    assert [bench.lr_at(reference, e, s, 10, 1.0) for e, s in ((0, 0), (0, 9), (50, 3))] == [1.0, 1.0, pytest.approx(0.5)]
    assert bench.lr_at(lab, 12, 3, 10, 1.0) == learning_rate(123, 1000, 100, 1.0)
    assert bench.lr_at(lab, 0, 3, 10, 1.0) == learning_rate(3, 1000, 100, 1.0) == 0.04  # warming up: 4 of 100 steps


def test_reference_recipe_flags_reach_the_training_it_runs(monkeypatch):
    """The same flags through main(): what the loop builds and how many steps it takes per epoch."""
    bench = load_benchmark("reference_recipe")
    seen = {"heads": [], "optimisers": [], "augment": [], "steps": 0}
    projector, optimizer_for, augmenter = bench.projector, bench.optimizer_for, bench.augment.Augmenter
    loss = bench.nt_xent_loss

    def count_step(*args):
        seen["steps"] += 1
        return loss(*args)

    monkeypatch.setattr(bench, "projector", lambda *a: seen["heads"].append(a[-1]) or projector(*a))
    monkeypatch.setattr(bench, "optimizer_for", lambda *a: seen["optimisers"].append(a[-1]) or optimizer_for(*a))
    monkeypatch.setattr(bench.augment, "Augmenter", lambda config: seen["augment"].append(config) or augmenter(config))
    monkeypatch.setattr(bench, "nt_xent_loss", count_step)
    tiny = ["--dataset", "synthetic:n=128,classes=4,size=16", "--train-subset", "100", "--epochs", "1",
            "--batch-size", "32", "--device", "cpu", "--backbone", "convnet", "--proj-hidden", "32"]
    bench.main(tiny)  # the reference's: 100 images in batches of 32, 32, 32 and 4
    bench.main([*tiny, "--proj-bn", "--no-decay-all", "--normalize", "--gray-p", "0.2", "--drop-last"])  # 3 batches
    assert seen["heads"] == [False, True] and seen["optimisers"] == [True, False]
    assert [(c.gray_p, c.std == (1.0, 1.0, 1.0)) for c in seen["augment"]] == [(0.1, True), (0.2, False)]
    assert seen["steps"] == 4 + 3


def test_reference_recipe_with_the_labs_settings_trains_the_trainers_model(tmp_path, monkeypatch):
    """With every lab setting put back, the script's loop takes the trainer's steps exactly: same initial weights,
    batches, views, learning rates and updates, so the same backbone and the same kNN. (A flag's effect is then
    measured on the trainer's own random draws, not on another sample.)"""
    from selfsup_lab.train import TrainConfig, Trainer

    bench = load_benchmark("reference_recipe")
    dataset, seed = "synthetic:n=200,classes=4,size=16", 3
    trainer = Trainer(TrainConfig(method="simclr", dataset=dataset, epochs=2, batch_size=48, backbone="convnet",
                                  device="cpu", seed=seed, out=str(tmp_path / "run"), figures=False, progress=False,
                                  method_options={"proj_hidden": 32})).fit()
    trained = []
    embed = bench.embed
    monkeypatch.setattr(bench, "embed", lambda backbone, *a, **k: trained.append(backbone) or embed(backbone, *a, **k))
    result = bench.main(["--dataset", dataset, "--epochs", "2", "--batch-size", "48", "--device", "cpu",
                         "--backbone", "convnet", "--seed", str(seed), "--proj-hidden", "32", "--base-lr", "0.12",
                         "--temperature", "0.2", "--proj-bn", "--crop-low", "0.08", "--gray-p", "0.2",
                         "--no-decay-all", "--normalize", "--schedule", "step", "--drop-last"])
    ours = trainer.method.backbone.state_dict()
    theirs = trained[0].state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(theirs[name], ours[name], rtol=1e-5, atol=1e-6, msg=name)
    assert result["epoch_losses"] == pytest.approx([row["loss"] for row in trainer.history], rel=1e-5)
    # and not by accident: another seed trains other weights
    other = bench.main(["--dataset", dataset, "--epochs", "2", "--batch-size", "48", "--device", "cpu",
                        "--backbone", "convnet", "--seed", str(seed + 1), "--proj-hidden", "32", "--base-lr", "0.12",
                        "--temperature", "0.2", "--proj-bn", "--crop-low", "0.08", "--gray-p", "0.2",
                        "--no-decay-all", "--normalize", "--schedule", "step", "--drop-last"])
    assert other["epoch_losses"] != pytest.approx(result["epoch_losses"], rel=1e-5)


@pytest.mark.parametrize("flags", [["--temperature", "0"], ["--crop-low", "1.5"], ["--gray-p", "2"],
                                   ["--warmup-epochs", "5", "--epochs", "3"], ["--batch-size", "1"],
                                   ["--warmup-epochs", "2"]])
def test_reference_recipe_refuses_bad_settings_in_one_line(flags, capsys):
    bench = load_benchmark("reference_recipe")
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(flags)
    assert exit_info.value.code == 2
    assert f"error: {flags[0]} " in capsys.readouterr().err.strip().splitlines()[-1]  # names the flag


def test_reference_recipe_interrupted_and_continued_equals_one_run(tmp_path, monkeypatch, capsys):
    bench = load_benchmark("reference_recipe")
    tiny = ["--dataset", "synthetic:n=128,classes=4,size=16", "--epochs", "2", "--batch-size", "32", "--device", "cpu",
            "--backbone", "convnet", "--proj-hidden", "32"]
    whole = bench.main(tiny)
    checkpoint = tmp_path / "ckpt.pt"
    save = bench.save_checkpoint

    def save_then_stop(path, state):  # Ctrl-C right after the first epoch is saved
        save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        bench.main([*tiny, "--checkpoint", str(checkpoint)])
    monkeypatch.setattr(bench, "save_checkpoint", save)
    capsys.readouterr()
    steps, loss = [], bench.nt_xent_loss
    monkeypatch.setattr(bench, "nt_xent_loss", lambda *args: steps.append(1) or loss(*args))
    continued = bench.main([*tiny, "--checkpoint", str(checkpoint)])
    assert f"continuing {checkpoint} after epoch 1" in capsys.readouterr().out
    assert len(steps) == 128 // 32  # only the second epoch was trained again
    assert continued["epoch_losses"] == whole["epoch_losses"]
    assert continued["knn_top1"] == whole["knn_top1"]

    with pytest.raises(SystemExit, match="written by a run with other settings \\(temperature\\)"):
        bench.main([*tiny, "--checkpoint", str(checkpoint), "--temperature", "0.2"])
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="cannot be read as a checkpoint"):
        bench.main([*tiny, "--checkpoint", str(checkpoint)])
