"""The throughput benchmark's logic runs on a CPU (its numbers only mean something on the real device)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_throughput():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_appends_a_table_with_every_cpu_pipeline(tmp_path):
    throughput = load_throughput()
    results = tmp_path / "RESULTS.md"
    results.write_text("# earlier results\n")
    throughput.main(["--dataset", "synthetic", "--device", "cpu", "--backbone", "convnet", "--batch-size", "16",
                     "--steps", "2", "--warmup", "1", "--workers", "0", "--results", str(results)])
    text = results.read_text()
    assert text.startswith("# earlier results\n"), "the benchmark must append, not overwrite"
    rows = [line for line in text.splitlines() if line.startswith("| (")]
    assert [r.split("|")[1].strip()[:3] for r in rows] == ["(a)", "(b)", "(e)", "(f)", "(h)"]
    for row in rows:
        views_per_s, ratio, memory = (cell.strip() for cell in row.split("|")[2:5])
        assert float(views_per_s.replace(",", "")) > 0
        assert float(memory) > 0  # resident memory is sampled on a CPU
    assert rows[0].split("|")[3].strip() == "1.00"  # (a) is the baseline of the × column


def test_throughput_profile_writes_one_table_per_pipeline(tmp_path):
    throughput = load_throughput()
    throughput.main(["--dataset", "synthetic", "--device", "cpu", "--backbone", "convnet", "--batch-size", "16",
                     "--steps", "1", "--warmup", "1", "--workers", "0", "--results", str(tmp_path / "RESULTS.md"),
                     "--profile", "1", "--profile-dir", str(tmp_path / "out")])
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["profile-a.txt", "profile-b.txt", "profile-e.txt", "profile-f.txt", "profile-h.txt"]
    augmentation = (tmp_path / "out" / "profile-e.txt").read_text()
    model = (tmp_path / "out" / "profile-f.txt").read_text()
    assert "grid_sampler" in augmentation and "convolution" not in augmentation  # the crop, and no model
    assert "convolution" in model


def test_one_pass_step_computes_the_same_loss_as_two_passes():
    """(h) changes only how the views go through the backbone: with batch norm frozen the loss is the same."""
    import torch

    throughput = load_throughput()
    model, _ = throughput.build_model("convnet", torch.device("cpu"), False, False, 8, 32)
    model.eval()  # running statistics: both ways of batching then compute identical features
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the steps leave the weights as they are
    views = [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    two_passes, one_pass = (throughput.train_step(model, optimizer, views, False, torch.device("cpu"), one_pass=flag)
                            for flag in (False, True))
    torch.testing.assert_close(one_pass, two_passes)
    model.train()  # with batch statistics the two differ: the point of measuring (h) at all
    assert not torch.allclose(throughput.train_step(model, optimizer, views, False, torch.device("cpu")),
                              throughput.train_step(model, optimizer, views, False, torch.device("cpu"), one_pass=True))
