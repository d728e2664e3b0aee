"""End-to-end training throughput: augmented views per second, augmentation included.

One run, one device, four pipelines feeding the same SimCLR model (backbone + projector, forward and
backward, SGD step):

  (a) torchvision transforms in a DataLoader with all available workers (what lightly/solo-learn run)
  (b) the lab's device pipeline: uint8 data on the device, batched augmentation there, fp32
  (c) (b) + bf16 autocast + channels_last            (CUDA only)
  (d) (c) + torch.compile of the backbone             (CUDA; on a CPU only with --cpu-compile)

and, to show where the time of (c)/(d) goes, two parts of the device pipeline measured alone:

  (e) the augmentation alone: two views per image, no model
  (f) the model alone on a fixed pair of pre-augmented views, at (c)'s settings (and (d)'s as (g))
  (h) as (f), but both views in one forward pass of 2B images instead of two passes of B — whether the
      backbone's batch size is what keeps (c) below the design notes' 43,000 views/s (batch norm then
      normalises over both views together, as SimCLR's own code does; SimCLR's `one_pass` option)

and, because the 2026-11-23 profiles showed every GPU pipeline waiting on the CPU to launch kernels:

  (i) (c) end to end with both views in one pass (`--set one_pass=true` in training)
  (j) (i) + torch.compile mode reduce-overhead: forward and backward replayed as CUDA graphs
      (`selfsup-lab train --compile reduce-overhead`)
  (k) the model alone at (j)'s settings

and, because (k) is then the ceiling of (j) and the projector, loss and optimiser still launch kernel by kernel:

  (l) (j) with the whole forward -- backbone, projector, NT-Xent loss -- compiled as one graph (and its backward)
  (m) (l) + the SGD step compiled too (a tensor learning rate, so a schedule would not recompile it)
  (n) the model alone at (m)'s settings

    PYTHONPATH=. python benchmarks/throughput.py                     # GPU: ResNet-18, batch 512
    PYTHONPATH=. python benchmarks/throughput.py --device cpu --backbone convnet --batch-size 256 --steps 5
    PYTHONPATH=. python benchmarks/throughput.py --profile 10      # + where each pipeline's time goes
    PYTHONPATH=. python benchmarks/throughput.py --only cijlm      # some pipelines only ((a) always runs)

Results are appended to benchmarks/RESULTS.md (date, device, settings, views/s, peak memory). With --profile N,
each pipeline is also profiled for N more steps (torch.profiler) and its top operations are written to
benchmarks/out/profile-<pipeline>.txt (not committed). A pipeline that fails is recorded as failed and the
others still run; Ctrl-C or SIGTERM (`timeout`) writes the rows finished so far and exits with status 130.
Data: the CIFAR-10 JPEG copy via --dataset imagefolder:PATH, or `digits` upscaled (same shapes and work
per image as CIFAR: throughput does not depend on the pixel values).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import sys
import time
from pathlib import Path

import torch

from selfsup_lab import augment, data, models
from selfsup_lab.methods import MethodContext
from selfsup_lab.methods.simclr import SimCLR, SimCLROptions
from selfsup_lab.train import resolve_compile_mode, uses_cuda_graphs


class TorchvisionPairs(torch.utils.data.Dataset):
    """Per-image PIL transforms, two views per image — the usual SimCLR recipe in torchvision (the same
    CIFAR preset as (b), written as torchvision transforms by `augment.torchvision_transform`)."""

    def __init__(self, images_uint8: torch.Tensor, mean, std, size: int):
        self.images = images_uint8.permute(0, 2, 3, 1).contiguous().numpy()  # N,H,W,C for PIL
        self.transform = augment.torchvision_transform(augment.cifar_preset(size, mean, std))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return self.transform(img), self.transform(img)


def build_model(backbone: str, device, channels_last: bool, compile_mode: str | None, batch_size: int,
                image_size: int, one_pass: bool = False, scope: str = "backbone", backend: str = "inductor"):
    """The SimCLR model and SGD, and the two callables a step runs: views -> loss, and the optimiser step.

    `scope` says what torch.compile covers when `compile_mode` is set: "backbone" (what the trainer's
    --compile does), "forward" (backbone, projector and NT-Xent loss traced as one graph, and its backward),
    or "step" (that, and the SGD step). Under reduce-overhead each compiled part is replayed as CUDA graphs.
    `backend` is for tests: "eager" traces the same graphs without generating code.
    """
    torch.manual_seed(0)
    context = MethodContext(num_train=50_000, num_classes=10, batch_size=batch_size, epochs=1, steps_per_epoch=1,
                            image_size=image_size, device=device)
    model = SimCLR(models.build_backbone(backbone), SimCLROptions(one_pass=one_pass), context).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    compiled_step = compile_mode is not None and scope == "step"
    # a compiled SGD step bakes a float learning rate into its graph; a tensor can follow a schedule
    lr = torch.tensor(0.1, device=device) if compiled_step else 0.1
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)

    def loss_of(views):
        return model.training_step(views, None).loss  # (h)-(n): SimCLR's one_pass option

    options = {"backend": backend, **({"mode": compile_mode} if backend == "inductor" else {})}
    loss_fn, optimizer_step = loss_of, optimizer.step
    if compile_mode and scope == "backbone":
        model.backbone.compile(**options)
    elif compile_mode:
        loss_fn = torch.compile(loss_of, fullgraph=True, **options)  # a graph break would split the graphs: fail
        if compiled_step:
            # The momentum buffers exist before the first compiled step: created inside it, they would be outputs
            # of a CUDA graph that a later replay may overwrite. Zeros give SGD's first step (buf = grad) exactly.
            for p in model.parameters():
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
            optimizer_step = torch.compile(optimizer.step, **options)
    return model, optimizer, loss_fn, optimizer_step


def train_step(loss_fn, optimizer, optimizer_step, views, amp: bool, cuda_graphs: bool = False):
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cpu", enabled=False)
    if cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()
    with ctx:
        loss = loss_fn(views)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer_step()
    return loss.detach()  # not read in the timed loop (reading it would synchronise)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def resident_gib() -> float:
    """This process's resident memory now (Linux /proc; nan elsewhere). DataLoader workers are not included."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20  # kB → GiB
    except OSError:
        pass
    return float("nan")


def measure(step_fn, device, warmup: int, steps: int, views_per_step: int, peak_includes_warmup: bool = False) -> dict:
    """Views/s over `steps` timed steps after `warmup` untimed ones, and the peak memory of the timed steps --
    or, with `peak_includes_warmup`, of warm-up and timed steps together: CUDA graphs take their memory while
    they are recorded, in the warm-up, and replaying them allocates nothing the allocator would count."""
    if device.type == "cuda" and peak_includes_warmup:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        step_fn()
    sync(device)
    if device.type == "cuda" and not peak_includes_warmup:
        torch.cuda.reset_peak_memory_stats()
    host_peak = resident_gib()
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn()
        if device.type == "cpu":  # reading /proc costs microseconds; a step costs tenths of a second
            host_peak = max(host_peak, resident_gib())
    sync(device)
    seconds = time.perf_counter() - t0
    # on a GPU: the allocator's peak during the timed steps; on a CPU: the largest resident set sampled
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else host_peak
    return {"views_per_s": views_per_step * steps / seconds, "peak_gib": peak, "s_per_step": seconds / steps}


def run_dataloader(args, dataset, device):
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    mean, std = dataset.channel_stats()
    loader = torch.utils.data.DataLoader(
        TorchvisionPairs(dataset.images, mean, std, dataset.image_size), batch_size=args.batch_size, shuffle=True,
        num_workers=workers, drop_last=True, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    _, optimizer, loss_fn, optimizer_step = build_model(args.backbone, device, False, None, args.batch_size,
                                                        dataset.image_size)
    iterator = iter(loader)

    def step():
        nonlocal iterator
        try:
            v1, v2 = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            v1, v2 = next(iterator)
        views = [v1.to(device, non_blocking=True), v2.to(device, non_blocking=True)]
        train_step(loss_fn, optimizer, optimizer_step, views, False)

    return step, args.warmup, {"workers": workers}


def device_augmenter(dataset, device):
    """The lab's augmentation (the CIFAR preset at the data's resolution and statistics) and a seeded generator."""
    mean, std = dataset.channel_stats()
    return (augment.Augmenter(augment.cifar_preset(dataset.image_size, mean, std)),
            torch.Generator(device=device).manual_seed(0))


def run_device(args, dataset, device, amp: bool, channels_last: bool, compile_mode: str | None,
               one_pass: bool = False, scope: str = "backbone"):
    images = dataset.images.to(device)
    augmenter, generator = device_augmenter(dataset, device)
    _, optimizer, loss_fn, optimizer_step = build_model(args.backbone, device, channels_last, compile_mode,
                                                        args.batch_size, dataset.image_size, one_pass, scope)
    cuda_graphs = uses_cuda_graphs(compile_mode, device)

    def step():
        idx = torch.randint(len(images), (args.batch_size,), device=device, generator=generator)
        batch = images[idx]
        views = augmenter.views(batch, 2, generator)  # both views in one call, as the trainer does
        if channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        train_step(loss_fn, optimizer, optimizer_step, views, amp, cuda_graphs)

    # compilation happens in the first steps
    return step, args.warmup + (10 if compile_mode else 0), {"graphs": cuda_graphs}


def run_augment_only(args, dataset, device):
    """(e): sampling + two augmented views per image, nothing else — the augmentation's own ceiling."""
    images = dataset.images.to(device)
    augmenter, generator = device_augmenter(dataset, device)

    def step():
        idx = torch.randint(len(images), (args.batch_size,), device=device, generator=generator)
        augmenter.views(images[idx], 2, generator)

    return step, args.warmup, {}


def run_model_only(args, dataset, device, amp: bool, channels_last: bool, compile_mode: str | None,
                   one_pass: bool = False, scope: str = "backbone"):
    """(f)/(g)/(h)/(k)/(n): the training step on one fixed pair of augmented views — the model's own ceiling."""
    images = dataset.images[: args.batch_size].to(device)
    augmenter, generator = device_augmenter(dataset, device)
    views = augmenter.views(images, 2, generator)
    if channels_last:
        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    _, optimizer, loss_fn, optimizer_step = build_model(args.backbone, device, channels_last, compile_mode,
                                                        args.batch_size, dataset.image_size, one_pass, scope)
    cuda_graphs = uses_cuda_graphs(compile_mode, device)
    return (lambda: train_step(loss_fn, optimizer, optimizer_step, views, amp, cuda_graphs),
            args.warmup + (10 if compile_mode else 0), {"graphs": cuda_graphs})


def write_profile(step_fn, device, steps: int, label: str, folder) -> Path:
    """Profile `steps` more steps (already warm) with torch.profiler; write the operations that took the most
    time — on a GPU by their own device time, on a CPU by their own CPU time — to folder/profile-<label>.txt."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step_fn()
        sync(device)
    table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=25)
    path = Path(folder) / f"profile-{label.split(')')[0].strip('(')}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{label}: {steps} steps, {device}\n\n{table}\n")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbone", default="auto")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers for (a); default: all cores")
    parser.add_argument("--cpu-compile", action="store_true", help="also run (d) on a CPU (slow to compile)")
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")))
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="after timing each pipeline, profile STEPS more steps and write its top operations")
    parser.add_argument("--profile-dir", default=str(Path(__file__).with_name("out")))
    parser.add_argument("--only", default="", metavar="LETTERS",
                        help="run only these pipelines, e.g. --only cdij ((a) always runs)")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode of (d) and (g) (default, max-autotune-no-cudagraphs, ...)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    args.backbone = models.resolve_backbone_name(args.backbone, device)
    dataset = data.load_dataset(args.dataset, "train")
    if len(dataset) < args.batch_size:
        repeats = -(-args.batch_size // len(dataset))
        dataset = data.ImageDataset(dataset.images.repeat(repeats, 1, 1, 1), dataset.labels.repeat(repeats),
                                    dataset.classes, dataset.name, dataset.split)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the trainer leaves it off: its rows may be a little faster than training
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

    cuda = device.type == "cuda"
    mode = resolve_compile_mode(args.compile_mode, device)  # the trainer's check: a typo fails here, not in torch
    pipelines = {
        "(a) torchvision transforms, DataLoader": lambda: run_dataloader(args, dataset, device),
        "(b) device augmentation, fp32": lambda: run_device(args, dataset, device, False, False, None),
    }
    if cuda:
        pipelines["(c) + bf16 autocast + channels_last"] = lambda: run_device(args, dataset, device, True, True, None)
        pipelines["(d) + torch.compile"] = lambda: run_device(args, dataset, device, True, True, mode)
    elif args.cpu_compile:
        pipelines["(d) fp32 + torch.compile"] = lambda: run_device(args, dataset, device, False, False, mode)
    pipelines["(e) augmentation alone"] = lambda: run_augment_only(args, dataset, device)
    pipelines["(f) model alone" + (", bf16 + channels_last" if cuda else ", fp32")] = \
        lambda: run_model_only(args, dataset, device, cuda, cuda, None)
    if cuda or args.cpu_compile:
        pipelines["(g) model alone + torch.compile"] = lambda: run_model_only(args, dataset, device, cuda, cuda, mode)
    pipelines["(h) model alone, both views in one pass"] = \
        lambda: run_model_only(args, dataset, device, cuda, cuda, None, one_pass=True)
    # (i)-(k): SimCLR's one_pass option end to end, and CUDA graphs (the step is launch-bound on an H100).
    pipelines["(i) as (c), both views in one pass" if cuda else "(i) as (b), both views in one pass"] = \
        lambda: run_device(args, dataset, device, cuda, cuda, None, one_pass=True)
    if cuda:
        pipelines["(j) (i) + torch.compile reduce-overhead (CUDA graphs)"] = \
            lambda: run_device(args, dataset, device, True, True, "reduce-overhead", one_pass=True)
        pipelines["(k) model alone, one pass + reduce-overhead"] = \
            lambda: run_model_only(args, dataset, device, True, True, "reduce-overhead", one_pass=True)
        # (l)-(n): what (k) leaves outside the graphs, the projector, the loss and the SGD step, inside them too
        pipelines["(l) (j) with projector and loss in the graphs"] = \
            lambda: run_device(args, dataset, device, True, True, "reduce-overhead", one_pass=True, scope="forward")
        pipelines["(m) (l) + the SGD step compiled too"] = \
            lambda: run_device(args, dataset, device, True, True, "reduce-overhead", one_pass=True, scope="step")
        pipelines["(n) model alone at (m)'s settings"] = \
            lambda: run_model_only(args, dataset, device, True, True, "reduce-overhead", one_pass=True, scope="step")
    if args.only:  # (a) always runs: every row is reported as a multiple of it
        wanted = {"a", *args.only.replace(",", "").replace(" ", "")}
        unknown = sorted(wanted - set("abcdefghijklmn"))
        if unknown:
            raise SystemExit(f"error: --only {args.only!r} names no row ({'), ('.join(unknown)}); the rows are (a) to "
                             f"(n), listed at the top of benchmarks/throughput.py")
        skipped = sorted(wanted - {label[1] for label in pipelines})
        if skipped:  # asked for, but not run on this device: say so rather than leave the rows out silently
            print(f"not run on {device.type}: ({'), ('.join(skipped)}) — see the list at the top of this file; "
                  f"CUDA rows need a GPU, (d)/(g) on a CPU need --cpu-compile", file=sys.stderr)
        pipelines = {label: build for label, build in pipelines.items() if label[1] in wanted}

    # A GPU session is short and time-limited: a pipeline that fails (say, a compile error on another torch) is
    # recorded as failed and the others still run; a run stopped by Ctrl-C or `timeout` (SIGTERM) still writes
    # the rows it finished.
    previous_handler = signal.signal(signal.SIGTERM, signal.default_int_handler)
    rows, interrupted = [], False
    try:
        for label, build in pipelines.items():
            try:
                step, warmup, info = build()  # each pipeline: a step function, its warm-up steps, extra info
                result = {**measure(step, device, warmup, args.steps, 2 * args.batch_size, info.get("graphs", False)),
                          **info}
            except Exception as error:
                if not rows:
                    raise  # (a), the baseline every row is compared with
                reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"[:160]
                print(f"{label:45s} failed: {reason}", flush=True)
                rows.append((label, {"failed": reason}))
                continue
            rows.append((label, result))
            extra = f", {result['workers']} workers" if "workers" in result else ""
            print(f"{label:45s} {result['views_per_s']:>10,.0f} views/s   peak {result['peak_gib']:.2f} GiB{extra}",
                  flush=True)
            if args.profile:
                print(f"  profile of {args.profile} more steps: "
                      f"{write_profile(step, device, args.profile, label, args.profile_dir)}")
    except KeyboardInterrupt:
        interrupted = True
        print(f"interrupted after {len(rows)} of {len(pipelines)} pipelines", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    if not rows:
        raise SystemExit(130)

    base = rows[0][1]["views_per_s"]
    memory_label = ("peak GPU memory (GiB)" if device.type == "cuda"
                    else "peak resident memory of the main process (GiB)")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [f"\n### Throughput — {stamp} — {name}\n",
             f"SimCLR step (forward + backward + SGD), {args.backbone}, batch {args.batch_size}, two "
             f"{dataset.image_size}px views (the device pipelines augment both in one call), data `{args.dataset}`, "
             f"{args.steps} timed steps after {args.warmup} warm-up; "
             f"torch {torch.__version__}.\n",
             f"| pipeline | views/s | × (a) | {memory_label} |", "|---|---:|---:|---:|"]
    for label, r in rows:
        if "failed" in r:
            lines.append(f"| {label} | failed: {r['failed'].replace('|', '/')} | – | – |")
            continue
        peak = "–" if r["peak_gib"] != r["peak_gib"] else f"{r['peak_gib']:.2f}" + (" ¹" if r.get("graphs") else "")
        lines.append(f"| {label}{' (' + str(r['workers']) + ' workers)' if 'workers' in r else ''} | "
                     f"{r['views_per_s']:,.0f} | {r['views_per_s'] / base:.2f} | {peak} |")
    if any(r.get("graphs") for _, r in rows):
        lines.append("\n¹ peak over warm-up and timed steps: the CUDA graphs' memory is taken while they are recorded.")
    if interrupted:
        lines.append(f"\nInterrupted after {len(rows)} of {len(pipelines)} pipelines: the rest did not run.")
    with open(args.results, "a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {args.results}")
    if interrupted:
        raise SystemExit(130)  # the rows are kept, but a script must not take the run for complete


if __name__ == "__main__":
    main()
