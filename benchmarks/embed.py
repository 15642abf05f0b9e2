"""Embedding throughput vs the bare model forward on the same batches, and the fp16 store size.

Writes N synthetic 32 px PNG images, makes a run of the chosen backbone (one training step: the
weights do not matter for speed), then times, side by side:

* bare forward: the encoder on the same batches, images already decoded and transformed;
* ``build_store``: decoding, transforms, forward, class decoding and the zarr/parquet writes.

    python benchmarks/embed.py                        # 20,000 images, resnet10t, 2 threads
    python benchmarks/embed.py --images 2000 --repeats 1 --model test_resnet   # quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", help="folder to keep the data and stores in")
    return parser.parse_args()


ARGS = parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from _synthetic import make_untrained_run, write_random_pngs  # noqa: E402

import lscindex  # noqa: E402
from lscindex.data import read_image  # noqa: E402
from lscindex.embedding import build_store  # noqa: E402
from lscindex.run import open_run  # noqa: E402


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    work = Path(ARGS.keep or tempfile.mkdtemp(prefix="lscindex-embed-bench-"))
    data, run_dir = work / "data", work / "run"
    if not data.exists():
        rng = np.random.default_rng(0)
        write_random_pngs(data, ARGS.images, classes=ARGS.classes, size=ARGS.img_size, rng=rng)
    if not run_dir.exists():
        make_untrained_run(data, run_dir, model=ARGS.model, img_size=ARGS.img_size)
    run = open_run(run_dir, device="cpu")
    files = sorted(data.rglob("*.png"))
    print(
        f"# embed benchmark: {len(files):,} images of {ARGS.img_size} px, {ARGS.model}, batch "
        f"{ARGS.batch_size}, {ARGS.workers} loader workers, {ARGS.threads} threads, median of "
        f"{ARGS.repeats} runs"
    )
    print(
        f"# python {platform.python_version()}, torch {torch.__version__}, timm "
        f"{timm.__version__}, numpy {np.__version__}, lscindex {lscindex.__version__}, "
        f"{os.cpu_count()} cpus"
    )

    # the same batches, decoded and transformed ahead of time
    batches = [
        torch.stack([run.transform(read_image(str(f))) for f in files[i : i + ARGS.batch_size]])
        for i in range(0, len(files), ARGS.batch_size)
    ]

    def bare() -> None:
        with torch.inference_mode():
            for batch in batches:
                run.model(batch)

    def store(suffix: str) -> float:
        out = work / f"emb{suffix}"
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        start = time.perf_counter()
        build_store(run, [data], out, batch_size=ARGS.batch_size, workers=ARGS.workers)
        return time.perf_counter() - start

    def data_only() -> None:  # what the loader workers do per image, in this one process
        for f in files:
            run.transform(read_image(str(f)))

    bare()  # warm-up
    forward_s, data_s, zarr_s, parquet_s = [], [], [], []
    for _ in range(ARGS.repeats):  # interleaved, so drift on a shared machine hits all alike
        start = time.perf_counter()
        bare()
        forward_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        data_only()
        data_s.append(time.perf_counter() - start)
        zarr_s.append(store(".zarr"))
        parquet_s.append(store(".parquet"))
    n, dim = len(files), run.system.dim
    forward = n / statistics.median(forward_s)
    zarr_rate, parquet_rate = n / statistics.median(zarr_s), n / statistics.median(parquet_s)
    array = sum(
        p.stat().st_size
        for p in (work / "emb.zarr" / "embeddings").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    )
    meta = sum(p.stat().st_size for p in (work / "emb.zarr" / "metadata").rglob("*.parquet"))
    ideal = n * dim * 2
    print()
    print("| what | img/s | ratio to bare forward |")
    print("|---|---|---|")
    print(f"| bare forward (pre-decoded batches) | {forward:,.0f} | 1.00 |")
    print(f"| lscindex embed -> zarr | {zarr_rate:,.0f} | **{zarr_rate / forward:.2f}** |")
    print(f"| lscindex embed -> parquet | {parquet_rate:,.0f} | {parquet_rate / forward:.2f} |")
    # Decoding shares the CPU cores with the forward, so on a CPU-only machine whose forward
    # already keeps every core busy, embed can at best reach forward + decoding back to back.
    data = n / statistics.median(data_s)
    serial = 1.0 / (1.0 / forward + 1.0 / data)
    print(f"| decode + transform alone, 1 process | {data:,.0f} | {data / forward:.2f} |")
    print(f"| forward and decoding back to back | {serial:,.0f} | {serial / forward:.2f} |")
    print()
    print(
        f"fp16 embeddings array: {array:,} bytes for N*dim*2 = {n:,}*{dim}*2 = {ideal:,} "
        f"(**{array / ideal:.3f}x**, chunk files); metadata parquet "
        f"{meta:,} bytes; parquet store file {(work / 'emb.parquet').stat().st_size:,} bytes"
    )
    if not ARGS.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
