"""The lab's losses and kNN against an independent implementation: lightly's, on the same random inputs.

Our SimCLR ends 8 kNN points below a public reference on CIFAR-10 (results_simclr.md). Before blaming the
recipe, this rules the arithmetic in or out: each piece that a wrong sign, a missing mask or an off-by-one
would silently spoil is computed twice, once by the lab and once by lightly (a widely used library written by
other people), and the largest difference is reported.

    pip install lightly       # not a dependency of the lab: only this script needs it
    PYTHONPATH=. python benchmarks/crosscheck_lightly.py

What is compared (float32, CPU, seeded random inputs):
  - NT-Xent (METHODS.md §1): `simclr.nt_xent_loss` vs `lightly.loss.NTXentLoss`, loss and gradients;
  - SwAV's swapped prediction (§4.2): `balancing.sinkhorn` + `naive.swapped_cross_entropy` vs
    `lightly.loss.SwaVLoss`, the Sinkhorn targets, the loss and its gradient, at K = 10 and K = 3000, and
    with a queue of earlier embeddings;
  - BYOL's loss (§3): `byol.normalized_mse` = 2 + 2 · `lightly.loss.NegativeCosineSimilarity`;
  - weighted kNN (§5): `metrics.knn_predict` vs `lightly.utils.benchmarking.knn_predict`, k = 200, τ = 0.1;
  - the ResNet-18 CIFAR stem against `lightly.models.ResNetGenerator("resnet-18")`: the same parameter
    shapes in the same order, and, with our weights copied into lightly's network, the same 512-d features.

Results are appended to benchmarks/RESULTS_crosscheck.md (date, versions, the largest differences).
"""
from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from selfsup_lab.balancing import sinkhorn
from selfsup_lab.methods.byol import normalized_mse
from selfsup_lab.methods.naive import swapped_cross_entropy
from selfsup_lab.methods.simclr import nt_xent_loss
from selfsup_lab.metrics import knn_predict
from selfsup_lab.models import build_backbone

# float32 sums over a few thousand terms agree to about 1e-6 relative; a real mistake is orders larger. Every
# difference is relative to the size of what is compared (gradients are small: ~1e-4 at B = 512).
TOLERANCE = 1e-4


def _lightly():
    try:
        import lightly
        from lightly.loss import NegativeCosineSimilarity, NTXentLoss, SwaVLoss
        from lightly.models import ResNetGenerator
        from lightly.utils.benchmarking import knn_predict as lightly_knn_predict
    except ImportError as error:
        raise SystemExit(f"This cross-check needs lightly ({error}); install it with "
                         "`pip install lightly`; it is not a dependency of the lab.")
    return dict(version=lightly.__version__, NTXentLoss=NTXentLoss, SwaVLoss=SwaVLoss,
                NegativeCosineSimilarity=NegativeCosineSimilarity, ResNetGenerator=ResNetGenerator,
                knn_predict=lightly_knn_predict)


def _pair(generator: torch.Generator, *shape: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated random tensors (views of one image are similar), leaf tensors that take a gradient."""
    a = torch.randn(*shape, generator=generator)
    b = a + 0.8 * torch.randn(*shape, generator=generator)
    return a.requires_grad_(), b.requires_grad_()


def _relative_difference(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours − theirs| / max |theirs|: 0 for equal tensors, about 1 when one of them is wrong or zero."""
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30))


def _max_gradient_difference(ours: torch.Tensor, theirs: torch.Tensor, inputs) -> float:
    """The largest relative difference between the two losses' gradients, over the input tensors."""
    # retain_graph: the two losses may share a graph; materialize_grads: an input a loss ignores gets zeros
    ours_grads = torch.autograd.grad(ours, inputs, retain_graph=True, allow_unused=True, materialize_grads=True)
    their_grads = torch.autograd.grad(theirs, inputs, allow_unused=True, materialize_grads=True)
    return max(_relative_difference(g, h) for g, h in zip(ours_grads, their_grads))


def check_nt_xent(lightly, generator, batch: int, dim: int, temperature: float) -> dict:
    z1, z2 = _pair(generator, batch, dim)
    ours, _ = nt_xent_loss(z1, z2, temperature)
    theirs = lightly["NTXentLoss"](temperature=temperature)(z1, z2)
    return dict(check=f"NT-Xent, τ = {temperature}", sizes=f"B = {batch}, d = {dim}",
                value=ours.item(), difference=_relative_difference(ours.detach(), theirs.detach()),
                gradient_difference=_max_gradient_difference(ours, theirs, (z1, z2)))


def check_swav(lightly, generator, batch: int, dim: int, clusters: int, queue: int = 0) -> dict:
    """Both views' Sinkhorn targets, optionally over the batch plus `queue` rows of earlier embeddings."""
    z1, z2 = _pair(generator, batch, dim)
    prototypes = F.normalize(torch.randn(clusters, dim, generator=generator), dim=1)
    s1, s2 = (F.normalize(z, dim=1) @ prototypes.T for z in (z1, z2))
    queued = [F.normalize(torch.randn(queue, dim, generator=generator), dim=1) @ prototypes.T for _ in range(2)]
    epsilon, iterations, temperature = 0.05, 3, 0.1
    q1, q2 = (sinkhorn(s.detach(), epsilon, iterations, queue_scores=qs if queue else None)
              for s, qs in zip((s1, s2), queued))
    ours = 0.5 * (swapped_cross_entropy(q1, s2, temperature) + swapped_cross_entropy(q2, s1, temperature))

    swav = lightly["SwaVLoss"](temperature=temperature, sinkhorn_iterations=iterations, sinkhorn_epsilon=epsilon)
    theirs = swav([s1, s2], [], queue_outputs=queued if queue else None)
    from lightly.loss.swav_loss import sinkhorn as lightly_sinkhorn  # the targets themselves, view 1

    their_q1 = lightly_sinkhorn(torch.cat([s1.detach(), queued[0]]), iterations=iterations, epsilon=epsilon)[:batch]
    return dict(check=f"SwAV swapped prediction, K = {clusters}" + (f", queue of {queue}" if queue else ""),
                sizes=f"B = {batch}, d = {dim}, ε 0.05, τ 0.1",
                value=ours.item(), difference=_relative_difference(ours.detach(), theirs.detach()),
                gradient_difference=_max_gradient_difference(ours, theirs, (z1, z2)),
                target_difference=_relative_difference(q1, their_q1))


def check_byol(lightly, generator, batch: int, dim: int) -> dict:
    p, t = _pair(generator, batch, dim)
    ours = normalized_mse(p, t).mean()
    theirs = 2 + 2 * lightly["NegativeCosineSimilarity"]()(p, t)
    return dict(check="BYOL loss = 2 + 2 · negative cosine", sizes=f"B = {batch}, d = {dim}",
                value=ours.item(), difference=_relative_difference(ours.detach(), theirs.detach()),
                gradient_difference=_max_gradient_difference(ours, theirs, (p, t)))


def check_knn(lightly, generator, bank_size: int, queries: int, dim: int, classes: int) -> dict:
    """Blobs on the sphere with overlapping classes (about 80% kNN accuracy at d = 512), so that the weighted vote
    over many neighbours of mixed classes decides, not one obvious nearest point."""
    centres = torch.randn(classes, dim, generator=generator)
    bank_labels = torch.randint(classes, (bank_size,), generator=generator)
    query_labels = torch.randint(classes, (queries,), generator=generator)
    bank = F.normalize(centres[bank_labels] + 8.0 * torch.randn(bank_size, dim, generator=generator), dim=1)
    query = F.normalize(centres[query_labels] + 8.0 * torch.randn(queries, dim, generator=generator), dim=1)
    ours = knn_predict(bank, bank_labels, query, k=200, temperature=0.1, num_classes=classes)
    theirs = lightly["knn_predict"](query, bank.T.contiguous(), bank_labels, classes, knn_k=200, knn_t=0.1)[:, 0]
    disagree = int((ours != theirs).sum())
    return dict(check="weighted kNN, k = 200, τ = 0.1", sizes=f"bank {bank_size:,}, {queries:,} queries, "
                f"d = {dim}, {classes} classes", value=float((ours == query_labels).float().mean()),
                difference=float((theirs == query_labels).float().mean()) - float((ours == query_labels).float().mean()),
                disagreements=disagree)


def check_resnet(lightly, generator) -> dict:
    """Same parameter shapes in the same order; then our weights in lightly's network give our features."""
    ours = build_backbone("resnet18").eval()
    reference = lightly["ResNetGenerator"]("resnet-18")
    reference.linear = torch.nn.Identity()  # its classifier; what is left ends in the pooled 512-d features
    reference.eval()
    our_state = list(ours.state_dict().values())
    their_state = reference.state_dict()
    shapes_match = len(our_state) == len(their_state) and all(
        a.shape == b.shape for a, b in zip(our_state, their_state.values()))
    if not shapes_match:
        return dict(check="ResNet-18 CIFAR stem: features with the same weights", sizes="", value=float("nan"),
                    difference=float("inf"))
    reference.load_state_dict(dict(zip(their_state.keys(), our_state)))
    images = torch.randn(8, 3, 32, 32, generator=generator)
    with torch.no_grad():
        ours_out, their_out = ours(images), reference(images)
    return dict(check="ResNet-18 CIFAR stem: features with the same weights", sizes="8 images of 32×32, eval mode",
                value=float(sum(p.numel() for p in ours.parameters())),
                difference=_relative_difference(ours_out, their_out))


def passed(row: dict) -> bool:
    if "disagreements" in row:
        return row["disagreements"] == 0
    return all(abs(row.get(key, 0.0)) <= TOLERANCE
               for key in ("difference", "gradient_difference", "target_difference"))


def run_checks(seed: int = 0, small: bool = False) -> tuple[str, list[dict]]:
    lightly = _lightly()
    generator = torch.Generator().manual_seed(seed)
    batch, dim = (16, 8) if small else (512, 128)
    rows = [check_nt_xent(lightly, generator, batch, dim, 0.2), check_nt_xent(lightly, generator, batch, dim, 0.5),
            check_swav(lightly, generator, batch, dim, 10), check_swav(lightly, generator, batch, dim, 3000),
            check_swav(lightly, generator, batch, dim, 3000, queue=64 if small else 3840),
            check_byol(lightly, generator, batch, dim),
            check_knn(lightly, generator, 500 if small else 50_000, 50 if small else 10_000, 512 if not small else 8,
                      10),
            check_resnet(lightly, generator)]
    return lightly["version"], rows


def _number(x: float | None) -> str:
    return "–" if x is None else f"{x:.2e}"


def markdown(version: str, rows: list[dict], seed: int) -> str:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [f"### Cross-check against lightly {version} — {stamp} — CPU, torch {torch.__version__}, seed {seed}", "",
             "| check | sizes | ours | difference | gradient | Sinkhorn targets | kNN disagreements | agrees |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['check']} | {row['sizes']} | {row['value']:.6g} | {_number(row['difference'])} | "
                     f"{_number(row.get('gradient_difference'))} | {_number(row.get('target_difference'))} | "
                     f"{row.get('disagreements', '–')} | {'yes' if passed(row) else '**no**'} |")
    lines += ["", f"Differences are relative, max |ours − lightly's| / max |lightly's|, tolerance {TOLERANCE:g} "
              "(float32); kNN: identical predictions. 'ours' is the loss value; for the kNN row our accuracy on the "
              "synthetic blobs (difference: lightly's accuracy minus ours); for the ResNet row our parameter count "
              "(difference: in the features of 8 random images with our weights in both networks).", ""]
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS_crosscheck.md"))
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    version, rows = run_checks(args.seed, args.small)
    table = markdown(version, rows, args.seed)
    print(table)
    if not args.results.exists():
        args.results.write_text("# The lab against lightly (`benchmarks/crosscheck_lightly.py`)\n\n")
    with args.results.open("a") as f:
        f.write(table + "\n")
    if not all(passed(row) for row in rows):
        raise SystemExit("Some checks disagree with lightly: see the rows marked **no** above.")
    return rows


if __name__ == "__main__":
    main()
