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
    assert [r.split("|")[1].strip()[:3] for r in rows] == ["(a)", "(b)", "(e)", "(f)"]
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
    assert written == ["profile-a.txt", "profile-b.txt", "profile-e.txt", "profile-f.txt"]
    augmentation = (tmp_path / "out" / "profile-e.txt").read_text()
    model = (tmp_path / "out" / "profile-f.txt").read_text()
    assert "grid_sampler" in augmentation and "convolution" not in augmentation  # the crop, and no model
    assert "convolution" in model
