"""SIGKILL an embed job at random points, resume it, and compare with an uninterrupted run.

Each kill is followed by the same command again. Reports, over all kills: rows recomputed per kill
(rows the killed process had embedded but not yet committed; at most one chunk by design),
whether every committed chunk stayed readable, and whether the final store is bit-identical to an
uninterrupted one.

    python benchmarks/embed_resume.py                 # 20 kills
    python benchmarks/embed_resume.py --kills 5 --images 600
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--chunk-rows", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default="test_resnet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=3, metavar=("RUN", "OUT", "LOG"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    return parser.parse_args()


def child(args: argparse.Namespace) -> None:
    """The embed job: logs rows embedded after every batch, so the parent can count losses."""
    from lscindex.embedding import build_store

    run, out, log_path = args.child
    with open(log_path, "a") as log:

        def progress(done: int, todo: int, rate: float) -> None:
            log.write(f"{done}\n")
            log.flush()

        build_store(
            run,
            [args.data],
            out,
            chunk_rows=args.chunk_rows,
            batch_size=args.batch_size,
            workers=0,
            device="cpu",
            progress=progress,
        )


def rows_logged(log: Path) -> int:
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()] if log.exists() else []
    return int(lines[-1]) if lines else 0


def main() -> None:
    args = parse_args()
    if args.child:
        child(args)
        return
    import numpy as np
    import pyarrow.parquet as pq
    from _synthetic import make_untrained_run, write_random_pngs

    from lscindex.store import open_store, read_header

    work = Path(tempfile.mkdtemp(prefix="lscindex-resume-bench-"))
    data, run = work / "data", work / "run"
    rng = np.random.default_rng(args.seed)
    write_random_pngs(data, args.images, classes=50, size=32, rng=rng)
    make_untrained_run(data, run, model=args.model)
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def command(out: Path, log: Path) -> list[str]:
        return [
            sys.executable,
            __file__,
            "--child",
            str(run),
            str(out),
            str(log),
            "--data",
            str(data),
            "--chunk-rows",
            str(args.chunk_rows),
            "--batch-size",
            str(args.batch_size),
        ]

    reference = work / "reference.zarr"
    start = time.perf_counter()
    subprocess.run(command(reference, work / "reference.log"), env=env, check=True)
    full_s = time.perf_counter() - start

    out = work / "killed.zarr"
    losses, unreadable, kills, attempt = [], 0, 0, 0
    while kills < args.kills:
        attempt += 1
        log = work / f"attempt{attempt}.log"
        parts = out / "metadata"
        before = len(list(parts.glob("*.parquet"))) if parts.exists() else 0
        proc = subprocess.Popen(
            command(out, log), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # a random moment while it embeds: after a random number of rows (this attempt's),
        # anywhere within its next four chunks, so kills land at every phase of a chunk
        target = int(rng.integers(1, 4 * args.chunk_rows))
        deadline = time.time() + 300
        while proc.poll() is None and rows_logged(log) < target and time.time() < deadline:
            time.sleep(0.002)
        if proc.poll() is not None:
            shutil.rmtree(out)  # finished before the kill: start over to keep killing
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        committed = len(list(parts.glob("*.parquet"))) if parts.exists() else 0
        chunk_rows = read_header(out, allow_incomplete=True).chunk_rows
        losses.append(rows_logged(log) - (committed - before) * chunk_rows)
        for part in parts.glob("*.parquet") if parts.exists() else []:
            try:
                pq.read_table(part)
            except Exception:
                unreadable += 1
    subprocess.run(command(out, work / "final.log"), env=env, check=True)
    a, b = open_store(out), open_store(reference)
    identical = np.array_equal(
        np.asarray(a.embeddings[:]).view(np.uint16), np.asarray(b.embeddings[:]).view(np.uint16)
    )
    same_meta = a.metadata.to_pylist() == b.metadata.to_pylist()
    print(
        f"# embed resume: {args.images:,} images, chunks of {args.chunk_rows} rows, "
        f"{args.kills} SIGKILLs at random moments (uninterrupted job: {full_s:.1f} s)"
    )
    print(
        f"rows recomputed per kill: max {max(losses)}, mean {np.mean(losses):.1f} "
        f"(one chunk = {args.chunk_rows} rows)"
    )
    print(f"unreadable committed chunks after kills: {unreadable}")
    print(
        f"final embeddings bit-identical to the uninterrupted run: {identical}; "
        f"metadata identical: {same_meta}"
    )
    shutil.rmtree(work, ignore_errors=True)
    if not (
        identical
        and same_meta
        and unreadable == 0
        and 0 <= min(losses) <= max(losses) <= args.chunk_rows
    ):
        sys.exit(1)


if __name__ == "__main__":
    main()
