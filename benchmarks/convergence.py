"""Convergence study: LSC variants and the cross-entropy baseline, same backbone, schedule and seed.

Each configuration is one ``lscindex train`` run (one fresh process each, one after the other,
into OUT/<name>); the script then reads every run's metrics.jsonl and prints per-epoch validation
top-1, the final top-1/top-5, and the first epoch reaching 50/80/90% top-1, and draws all curves
into OUT/curves.png. Runs already finished in OUT are read, not trained again, so an interrupted
study continues where it stopped.

    python benchmarks/convergence.py data/glyphs --out runs/study                # all, ~1 h
    python benchmarks/convergence.py data/glyphs --out runs/study --only v21-data ce
    python benchmarks/convergence.py data/glyphs --out runs/study --epochs 18   # longer schedule

The common recipe is the README's: resnet10t, 32 px, batch 128, AdamW lr 3e-3, one warm-up
epoch, cosine schedule, seed 0; any other ``lscindex train`` flag given here goes to every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

CONFIGS: dict[str, list[str]] = {
    "v21-features": [],  # the default recipe: feature-fitted assignment, centred, lattice loss
    "v21-features-cosine": ["--loss", "cosine"],
    "v21-features-noaug": ["--no-augment"],
    # the recipes of earlier releases (the data assignment's default, then the codec's)
    "v21-data": ["--assignment", "data", "--no-centered", "--loss", "cosine"],
    "v21-data-4x": [
        *("--assignment", "data", "--no-centered", "--loss", "cosine"),
        *("--rematch-per-epoch", "4", "--assign-samples", "4"),
    ],
    "v21-codec": ["--assignment", "codec", "--no-centered", "--loss", "cosine"],
    "v11-data": ["--system", "v11", "--assignment", "data", "--loss", "cosine"],
    "v22-data": ["--system", "v22", "--assignment", "data", "--loss", "cosine"],
    "v21-384-data": ["--dim", "384", "--assignment", "data", "--no-centered", "--loss", "cosine"],
    "v21-384-codec": ["--dim", "384", "--assignment", "codec", "--no-centered", "--loss", "cosine"],
    "ce": ["--head", "ce"],
}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="data set (folder or manifest) every run trains on")
    parser.add_argument("--out", default="runs/study", help="folder for the runs and the plot")
    parser.add_argument("--only", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    args, extra = parser.parse_known_args(argv)
    args.extra = extra  # any other flag goes to every run, e.g. --workers 0
    return args


def train_command(args: argparse.Namespace, name: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lscindex_cli.main",
        "train",
        args.data,
        "--out",
        str(Path(args.out) / name),
        "--model",
        args.model,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        *CONFIGS[name],
        *args.extra,
    ]


def read_metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def first_epoch_reaching(rows: list[dict[str, Any]], level: float) -> str:
    for row in rows:
        if (row.get("val_top1") or 0.0) >= level:
            return str(row["epoch"])
    return f">{rows[-1]['epoch']}" if rows else "n/a"


def render(names: list[str], runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [
        "| run | dim | top-1 per epoch (%) | top-1 / top-5 at the end | epochs to 50 / 80 / 90% |",
        "|---|---:|---|---|---|",
    ]
    for name in names:
        rows = runs[name]
        if not rows:
            lines.append(f"| {name} | | not run | | |")
            continue
        per_epoch = ", ".join(f"{100 * (r['val_top1'] or 0):.1f}" for r in rows)
        last = rows[-1]
        reach = " / ".join(first_epoch_reaching(rows, x) for x in (0.5, 0.8, 0.9))
        lines.append(
            f"| {name} | {rows[0].get('dim', '')} | {per_epoch} | "
            f"**{100 * last['val_top1']:.1f}% / {100 * last['val_top5']:.1f}%** | {reach} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = dict(os.environ)
    env.update({var: str(args.threads) for var in THREAD_VARS})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {}
    for name in args.only:
        run = out / name
        rows = read_metrics(run)
        if len(rows) < args.epochs:
            resume = ["--resume"] if (run / "config.json").is_file() else []
            print(f"== {name}: {' '.join(train_command(args, name)[3:])}", flush=True)
            proc = subprocess.run([*train_command(args, name), *resume], env=env, check=False)
            if proc.returncode != 0:
                print(f"== {name} failed with exit status {proc.returncode}", flush=True)
            rows = read_metrics(run)
        dim = json.loads((run / "config.json").read_text())["model"] if rows else None
        for row in rows:
            row["dim"] = _out_dim(dim) if dim else ""
        runs[name] = rows

    import torch

    import lscindex
    from lscindex.plots import plot_runs

    print(
        f"# convergence: {args.model}, {args.epochs} epochs, batch {args.batch_size}, "
        f"lr {args.lr}, {args.threads} threads; python {platform.python_version()}, "
        f"torch {torch.__version__}, "
        f"lscindex {lscindex.__version__}; data {args.data}"
    )
    for line in render(args.only, runs):
        print(line)
    done = [out / name for name in args.only if runs[name]]
    if done:
        print(f"curves: {plot_runs(done, out / 'curves.png')}")
    return 0


def _out_dim(model_config: dict[str, Any]) -> int:
    from lscindex.model import ModelConfig

    return ModelConfig.from_dict(model_config).out_dim


if __name__ == "__main__":
    sys.exit(main())
