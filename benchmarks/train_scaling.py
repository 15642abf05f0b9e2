"""Training step time and peak memory of the LSC head vs a learned softmax (CE) head by class count.

For one timm backbone, each (head, n_classes) configuration trains on synthetic images and uniform
random labels (or, with ``--data``, on the real images of a shard source with that many classes)
in its own fresh subprocess (peak RSS is per process and never goes down), with the
optimizer training uses (timm AdamW). A step is everything a training step does: forward, loss,
zero_grad, backward, optimizer.step. The claim under test: nothing in LSC training grows with the
class count (the targets come from the codec per batch, the head is dim = n_min wide), while the
softmax head's weights, gradients, Adam moments and logits all grow with it.

    python benchmarks/train_scaling.py            # resnet18, 32 px, batch 64, 2 threads, ~3-8 min
    python benchmarks/train_scaling.py --rounds 2  # busy machine: keep each row's fastest round
    python benchmarks/train_scaling.py --classes 1000 600000 --heads lsc ce --steps 20
    python benchmarks/train_scaling.py --classes 100 2000 --steps 2 --warmup 1 \\
        --model test_resnet --batch-size 8 --img-size 32          # smoke test, ~30 s

With the data assignment (the training default) each LSC configuration matches its classes to
targets twice, from synthetic class means: before the first step and again after the warm-up
steps, as training does between epochs; "matching s" is the slower of the two, and the peak RSS
includes the (n_classes, dim) float32 class-mean sums, the matching's candidates and the table.

Columns: median and p90 wall time per step; others' cores is how many cores other processes kept
busy on average while that row's process ran (above ~0.2 its timings are not to be trusted: torch's
OpenMP threads wait for each other whenever one loses its core); start RSS is the peak after
importing torch and timm, before anything is built (the torch runtime alone is ~0.5 GB). The
ratios divide by the LSC row at the smallest class count; the summary line compares the largest
class count with the smallest.

The CE head at 600k classes on resnet18's 512 features is 307M parameters: ~1.2 GB of weights and
~5 GB with gradient and Adam moments (~8 GB peak, with AdamW's temporaries), so that configuration
needs that much free RAM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

RESULT_PREFIX = "TRAIN_SCALING_RESULT "
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 10_000, 100_000, 600_000])
    parser.add_argument("--heads", nargs="+", choices=["lsc", "ce"], default=["lsc", "ce"])
    parser.add_argument("--model", default="resnet18", help="timm backbone name")
    parser.add_argument("--kind", default="v21", help="vector system kind for the lsc head")
    parser.add_argument(
        "--assignment",
        choices=["data", "codec"],
        default="data",
        help="lsc class->target assignment (data, the training default, matches classes twice: "
        "before the first step and after the warm-up steps, as training does between epochs)",
    )
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every configuration this many times, interleaved, and keep each one's fastest "
        "round (a guard against other processes on a shared machine)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data",
        nargs="+",
        default=[],
        metavar="CLASSES=SHARDS",
        help="real images instead of synthetic ones: for each class count, a shard source with "
        "that many classes (lscindex data instances), read as training reads it: one shard at a "
        "time, the train transform, data loading outside the timer (e.g. 1000=data/inst1k)",
    )
    parser.add_argument(
        "--loader-workers",
        type=int,
        default=1,
        help="with --data: DataLoader worker processes (0: batches are decoded in the timed "
        "process between steps, so no loader runs on the cores while a step is timed)",
    )
    # Internal: run one configuration ("head:n_classes") and print one JSON result line.
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.classes) < 1 or min(args.steps, args.rounds, args.threads) < 1 or args.warmup < 0:
        parser.error("--classes, --steps, --rounds and --threads must be >= 1, --warmup >= 0")
    try:
        args.sources = {int(k): v for k, v in (item.split("=", 1) for item in args.data)}
    except ValueError:
        parser.error(f"--data takes CLASSES=SHARDS pairs, got {args.data}")
    missing = [c for c in args.classes if args.sources and c not in args.sources]
    if missing and args.child is None:  # a child runs one of the parent's counts
        parser.error(f"--data names no source for --classes {missing}")
    return args


def batches(args: argparse.Namespace, n_classes: int, model: Any) -> Iterator[tuple[Any, Any]]:
    """(images, labels) batches: synthetic, or the real shards ``--data`` names for the count."""
    import torch

    generator = torch.Generator().manual_seed(args.seed)
    shape = (args.batch_size, 3, args.img_size, args.img_size)
    if n_classes not in args.sources:
        while True:  # a fresh batch each step (labels drive the per-batch targets)
            images = torch.randn(shape, generator=generator)
            yield images, torch.randint(0, n_classes, (args.batch_size,), generator=generator)
    from torch.utils.data import DataLoader

    from lscindex.data import ImageDataset, collate_skipping, load_dataset
    from lscindex.model import create_train_transform
    from lscindex.shards import give_back_freed_memory
    from lscindex.training.sampling import EpochSampler

    splits = load_dataset(args.sources[n_classes])
    if splits.n_classes != n_classes:
        raise SystemExit(
            f"{args.sources[n_classes]} has {splits.n_classes} classes, not {n_classes}"
        )
    # What training keeps once the run's files are written: the samples, not the class names.
    train = splits.train
    del splits
    give_back_freed_memory()
    blocks = getattr(train, "blocks", None)
    sampler = EpochSampler(len(train), seed=args.seed, epoch=0, rank=0, world=1, blocks=blocks)
    transform = create_train_transform(model.data_config, augment=True)
    loader = DataLoader(
        ImageDataset(train, transform),
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.loader_workers,
        collate_fn=collate_skipping,
        drop_last=True,
    )
    for images, labels, _, _ in loader:
        yield images, labels


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated ``q``-th percentile (0..100) of ``values``."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# -- child: one configuration ---------------------------------------------------------------------
def run_config(args: argparse.Namespace, head: str, n_classes: int) -> dict[str, Any]:
    """Build model, loss and optimizer for one configuration and time its training steps."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import timm.optim

    from lscindex import VectorSystem
    from lscindex.assignment import match_classes
    from lscindex.losses import create_loss
    from lscindex.model import ModelConfig, create_model
    from lscindex.training.matching import MEAN_BLOCK  # the block training computes means in

    start_rss = peak_rss_mib()
    torch.manual_seed(args.seed)
    system = VectorSystem.create(args.kind, n_classes) if head == "lsc" else None
    assign_s: list[float] = []

    def rematch(system: VectorSystem) -> VectorSystem:
        # What training does: class means block by block (here synthetic, a fixed function of
        # the class id), their candidates and the table; only the table stays for the steps.
        block = MEAN_BLOCK

        def class_means(class_ids: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for start in range(0, len(class_ids), block):
                ids = class_ids[start : start + block]
                means = np.empty((len(ids), system.dim), dtype=np.float32)
                for first in np.unique(ids // block) * block:
                    rng = np.random.default_rng([args.seed, int(first)])
                    rows = rng.standard_normal((block, system.dim), dtype=np.float32)
                    inside = (ids >= first) & (ids < first + block)
                    means[inside] = rows[ids[inside] - first]
                yield ids, means

        t0 = time.perf_counter()
        table = match_classes(system, class_means, current=system.assignment_table)
        assign_s.append(time.perf_counter() - t0)
        return system.with_assignment(table)

    if system is not None and args.assignment == "data":
        system = rematch(system)
    config = ModelConfig(
        backbone=args.model,
        head=head,  # type: ignore[arg-type]
        n_classes=n_classes,
        system=system.to_dict() if system is not None else None,
        img_size=args.img_size,
    )
    model = create_model(config)
    model.train()
    loss_fn = create_loss(head, system)
    optimizer = timm.optim.create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    params = sum(p.numel() for p in model.parameters())
    data = batches(args, n_classes, model)

    times = []
    for i in range(args.warmup + args.steps):
        images, labels = next(data)  # made or loaded outside the timer
        t0 = time.perf_counter()
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)  # as lscindex.training does
        loss.backward()
        optimizer.step()
        elapsed = time.perf_counter() - t0
        if not torch.isfinite(loss.detach()):
            raise RuntimeError(f"non-finite loss {float(loss)} at step {i} ({head}, {n_classes})")
        if i >= args.warmup:
            times.append(elapsed)
        if i + 1 == args.warmup and system is not None and args.assignment == "data":
            system = rematch(system)
            loss_fn = create_loss(head, system)

    return {
        "head": head,
        "classes": n_classes,
        "out_dim": config.out_dim,
        "params": params,
        "median_ms": 1000 * statistics.median(times),
        "p90_ms": 1000 * percentile(times, 90),
        "start_rss_mib": start_rss,
        "peak_rss_mib": peak_rss_mib(),
        "assign_s": max(assign_s) if assign_s else None,
    }


# -- parent: run every configuration in its own process, print the table --------------------------
def child_command(args: argparse.Namespace, head: str, n_classes: int) -> list[str]:
    return [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        f"{head}:{n_classes}",
        "--model",
        args.model,
        "--kind",
        args.kind,
        "--assignment",
        args.assignment,
        "--img-size",
        str(args.img_size),
        "--batch-size",
        str(args.batch_size),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
        *(["--data", *args.data] if args.data else []),
        *(["--loader-workers", str(args.loader_workers)] if args.data else []),
    ]


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat), else None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal ...: busy = all but idle, iowait, steal.
    ticks = [int(v) for v in fields[1:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(args: argparse.Namespace, head: str, n_classes: int) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter; {"error": ...} when it fails.

    Also records ``others_cores``: the CPU cores that processes other than the child kept busy
    on average while it ran (None where /proc/stat is missing), the measure of how far other
    work on the machine disturbed its timings.
    """
    env = dict(os.environ)
    env.update({var: str(args.threads) for var in THREAD_VARS})
    busy0, child0, t0 = busy_cpu_seconds(), children_cpu_seconds(), time.perf_counter()
    proc = subprocess.run(
        child_command(args, head, n_classes),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    busy1, child1, wall = busy_cpu_seconds(), children_cpu_seconds(), time.perf_counter() - t0
    others = None
    if busy0 is not None and busy1 is not None:
        others = max(0.0, (busy1 - busy0) - (child1 - child0)) / wall
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            result["others_cores"] = others
            return result
    tail = (proc.stderr.strip().splitlines() or [f"no output (exit status {proc.returncode})"])[-1]
    return {"head": head, "classes": n_classes, "error": f"exit {proc.returncode}: {tail}"}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(args: argparse.Namespace) -> str:
    import timm
    import torch

    import lscindex

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    data = (
        "real, from shards ("
        + ", ".join(f"{k:,}: {v}" for k, v in args.sources.items())
        + f"), {args.loader_workers} loader worker(s)"
        if args.sources
        else "synthetic (random pixels, uniform labels)"
    )
    return (
        f"# train scaling: {args.model} at {args.img_size} px, batch {args.batch_size}, "
        f"{args.kind} targets ({args.assignment} assignment), AdamW; {args.threads} torch "
        f"threads; median/p90 of {args.steps} "
        f"steps after {args.warmup} warm-up; one fresh process per row and round, "
        f"fastest of {args.rounds} round(s)\n"
        f"# images: {data}\n"
        f"# python {platform.python_version()}, torch {torch.__version__}, "
        f"timm {timm.__version__}, lscindex {lscindex.__version__}; {cpu_name()}, "
        f"{cpus} cpus available, "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )


def busy_warning(rows: list[dict[str, Any]], threshold: float = 0.2) -> str | None:
    """A warning naming the rows that ran while other processes kept cores busy, else None."""
    busy = [r for r in rows if (r.get("others_cores") or 0.0) > threshold]
    if not busy:
        return None
    names = ", ".join(f"{r['head']} {short(r['classes'])}" for r in busy)
    worst = max(r["others_cores"] for r in busy)
    return (
        f"# WARNING: other processes kept up to {worst:.2f} cores busy while {names} ran; torch's "
        f"OpenMP threads then wait for each other at every op, so those steps can be several "
        f"times slower at random: rerun on an idle machine (or with --rounds) before comparing"
    )


def short(n: int) -> str:
    """1000 -> '1k', 600000 -> '600k', 2500 -> '2,500'."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


def ratio(num: float | None, den: float | None, digits: int = 2) -> str:
    return f"{num / den:.{digits}f}" if num is not None and den else "n/a"


def render(rows: list[dict[str, Any]], classes: list[int]) -> list[str]:
    """Markdown table plus the one-line summary (largest vs smallest class count)."""
    ok = {(r["head"], r["classes"]): r for r in rows if "error" not in r}
    lo, hi = min(classes), max(classes)
    base = ok.get(("lsc", lo))
    lines = [
        "| classes | head | out dim | params | median step ms | p90 step ms | others' cores "
        f"| start RSS MiB | peak RSS MiB | step ÷ LSC@{short(lo)} | peak RSS ÷ LSC@{short(lo)} "
        "| CE step ÷ LSC step | matching s |",
        "|" + "---:|" * 13,
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['classes']:,} | {r['head']} | failed: {r['error']} |" + " |" * 10)
            continue
        lsc_same = ok.get(("lsc", r["classes"]))
        others = "n/a" if r.get("others_cores") is None else f"{r['others_cores']:.2f}"
        vs_lsc = (
            ratio(r["median_ms"], lsc_same["median_ms"], 1)
            if r["head"] == "ce" and lsc_same
            else "—"
        )
        lines.append(
            f"| {r['classes']:,} | {r['head']} | {r['out_dim']:,} | {r['params']:,} | "
            f"{r['median_ms']:.1f} | {r['p90_ms']:.1f} | {others} | {r['start_rss_mib']:.0f} | "
            f"{r['peak_rss_mib']:.0f} | "
            f"{ratio(r['median_ms'], base['median_ms'] if base else None)} | "
            f"{ratio(r['peak_rss_mib'], base['peak_rss_mib'] if base else None, 3)} | {vs_lsc} | "
            f"{'—' if r.get('assign_s') is None else format(r['assign_s'], '.2f')} |"
        )
    top = ok.get(("lsc", hi))
    ce_top = ok.get(("ce", hi))

    def get(r: dict[str, Any] | None, key: str) -> float | None:
        return r[key] if r is not None else None

    lines.append("")
    lines.append(
        f"LSC {short(hi)}/{short(lo)} step time "
        f"{ratio(get(top, 'median_ms'), get(base, 'median_ms'))} (target <= 1.10), "
        f"peak RSS {ratio(get(top, 'peak_rss_mib'), get(base, 'peak_rss_mib'))} "
        f"(target within 5%), CE/LSC step time at {short(hi)} "
        f"{ratio(get(ce_top, 'median_ms'), get(top, 'median_ms'), 1)} (target >= 10)"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Thread pools size themselves when torch/numpy load, so fix them before any import.
    for var in THREAD_VARS:
        os.environ[var] = str(args.threads)
    if args.child is not None:
        head, _, n = args.child.partition(":")
        result = run_config(args, head, int(n))
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    print(header(args), flush=True)
    classes = list(dict.fromkeys(args.classes))
    configs = [(head, n_classes) for n_classes in classes for head in dict.fromkeys(args.heads)]
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for round_ in range(1, args.rounds + 1):
        for head, n_classes in configs:
            row = run_child(args, head, n_classes)
            status = row.get("error") or f"{row['median_ms']:.1f} ms, {row['peak_rss_mib']:.0f} MiB"
            print(f"# round {round_} {head} {n_classes:,}: {status}", file=sys.stderr, flush=True)
            kept = best.get((head, n_classes))
            if (
                kept is None
                or "error" in kept
                or ("error" not in row and row["median_ms"] < kept["median_ms"])
            ):
                best[head, n_classes] = row
    rows = [best[config] for config in configs]
    print()
    print("\n".join(render(rows, classes)))
    warning = busy_warning(rows)
    if warning:
        print(warning)
    print(f"# load average {os.getloadavg()[0]:.2f} at end", flush=True)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
