"""`lscindex index --factory auto` on a synthetic store: the factory chosen under a memory budget,
the index's measured memory against that budget, build time, recall@10 and queries/s.

The store holds ``--rows`` float16 unit vectors of dim 18 clustered like real embeddings: each is
one of v21's 2,448 vectors in 18 dims (the targets a run of up to 2,448 classes trains towards)
plus Gaussian noise of a per-row sigma in [0.05, 0.2] per coordinate, normalised (seeded).

The build and the search each run in a fresh process, so that their peak RSS growth (VmHWM after
the index is built or loaded, minus VmRSS before) is the index's and nothing else's. New
queries (in no store) are drawn the same way with another seed; their recall@10 counts a
returned row when its exact cosine is at least the 10th best's minus 1e-5, as the sidecar's
recall (of the rows held out while it was measured) does.

    python benchmarks/index_auto.py                              # 1M rows, 256 MiB, ~1 min
    python benchmarks/index_auto.py --rows 50000 --max-memory-mib 4 --repeats 1   # quick look
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=18, help="v21's dim: its vectors are centres")
    parser.add_argument("--factory", default="auto")
    parser.add_argument("--max-memory-mib", type=float, default=256, help="auto's budget")
    parser.add_argument(
        "--queries", type=int, default=10_000, help="new queries (in no store), timed"
    )
    parser.add_argument("--repeats", type=int, default=5, help="query runs (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", help="folder to keep the store and index in")
    parser.add_argument("--step", choices=("build", "search"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


ARGS = parse_args()
# Thread counts must be fixed before numpy/faiss load their thread pools.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

import lscindex  # noqa: E402
from lscindex import VectorSystem  # noqa: E402
from lscindex.index import build_index, index_problems, read_faiss_index, read_sidecar  # noqa: E402
from lscindex.store import (  # noqa: E402
    StoreHeader,
    StoreWriter,
    balanced_chunk_rows,
    metadata_table,
    open_store,
)


def status_kib(key: str) -> int:
    """A VmRSS / VmHWM line of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def reset_peak() -> None:
    """Hand memory freed so far back to the OS, then set VmHWM to the current RSS (Linux >= 4.0),
    so that the next peak is this step's own and no freed memory is reused unseen."""
    gc.collect()
    pa.default_memory_pool().release_unused()
    Path("/proc/self/clear_refs").write_text("5")


def embeddings(count: int, seed: int) -> np.ndarray:
    """(count, dim) float32 unit vectors: a v21 vector of ``--dim`` plus per-row noise."""
    centres = VectorSystem.create("v21", lscindex.count_vectors("v21", ARGS.dim), dim=ARGS.dim)
    targets = centres.targets(np.arange(centres.n_classes))
    rng = np.random.default_rng(seed)
    out = np.empty((count, ARGS.dim), dtype=np.float32)
    for start in range(0, count, 65536):
        n = min(65536, count - start)
        sigma = rng.uniform(0.05, 0.2, (n, 1))
        x = targets[rng.integers(0, len(targets), n)] + sigma * rng.standard_normal((n, ARGS.dim))
        out[start : start + n] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def write_store(path: Path, vectors: np.ndarray) -> None:
    """A finished float16 zarr store of ``vectors`` (every row embedded), 4,096-row chunks."""
    count = len(vectors)
    header = StoreHeader(
        format_version=1,
        store_id="be0c4a11be0c4a11",
        count=count,
        dim=ARGS.dim,
        dtype="float16",
        chunk_rows=balanced_chunk_rows(count, 4096),
        system=None,
        run="runs/synthetic",
        run_fingerprint="0" * 16,
        inputs_sha256="0" * 64,
        complete=False,
    )
    writer = StoreWriter.create(path, header)
    for chunk in range(header.n_chunks):
        start, stop = header.chunk_range(chunk)
        rows, n = np.arange(start, stop), stop - start
        table = metadata_table(
            rows,
            ids=[str(r) for r in rows],
            paths=[f"/synthetic/{r}.png" for r in rows],
            labels=[-1] * n,
            label_names=[None] * n,
            pred=np.zeros(n),
            score=np.ones(n),
            novel=np.zeros(n),
            errors=[""] * n,
            class_names=["synthetic"],
        )
        writer.write_chunk(chunk, vectors[start:stop], table)
    writer.finalize()


def step_build(work: Path) -> dict[str, float | str]:
    """In a fresh process: build the index; its time and peak RSS growth."""
    store = open_store(work / "emb.zarr")
    budget = int(ARGS.max_memory_mib * 2**20) if ARGS.factory == "auto" else None
    reset_peak()
    before = status_kib("VmRSS")
    start = time.perf_counter()
    info = build_index(store, factory=ARGS.factory, max_memory_bytes=budget)
    seconds = time.perf_counter() - start
    return {
        "build_s": seconds,
        "build_peak_kib": status_kib("VmHWM") - before,
        "path": str(info.path),
    }


def step_search(work: Path) -> dict[str, float]:
    """In a fresh process: load the index (RSS growth), time new queries, their recall.

    The index is read first, before the store is opened: the RSS growth of ``faiss.read_index``
    is the index alone; the peak then includes load_index's checks (a pass over the id map).
    """
    queries = embeddings(ARGS.queries, seed=1)
    path = work / "emb.faiss"
    reset_peak()
    before = status_kib("VmRSS")
    info = read_sidecar(path)
    index = read_faiss_index(path, info)
    read_kib = status_kib("VmRSS") - before
    assert not index_problems(index, info, None), "the index does not match its sidecar"
    loaded = {"load_kib": read_kib, "load_peak_kib": status_kib("VmHWM") - before}
    index.search(queries[:100], 10)  # warm-up
    times = []
    for _ in range(ARGS.repeats):
        start = time.perf_counter()
        found = index.search(queries, 10)[1]
        times.append(time.perf_counter() - start)
    store = open_store(work / "emb.zarr")
    exact = faiss.IndexFlatIP(ARGS.dim)
    exact.add(np.asarray(store.embeddings, dtype=np.float32))
    true_scores = exact.search(queries, 10)[0]
    ids = np.unique(found[found >= 0])
    vectors = np.asarray(store.embeddings[ids], dtype=np.float32)
    at = np.searchsorted(ids, np.maximum(found, 0))
    scores = np.einsum("qd,qkd->qk", queries, vectors[at])
    hits = (found >= 0) & (scores >= true_scores[:, -1:] - 1e-5)
    return {**loaded, "qps": len(queries) / statistics.median(times), "recall": float(hits.mean())}


def in_fresh_process(step: str, work: Path) -> dict[str, object]:
    """Run ``--step step`` of this script in a new interpreter; its JSON result."""
    cmd = [sys.executable, __file__, *sys.argv[1:], "--step", step, "--work", str(work)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{step} failed:\n{done.stderr[-3000:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    if ARGS.step is not None:
        work = Path(ARGS.work)
        result = step_build(work) if ARGS.step == "build" else step_search(work)
        print(json.dumps(result))
        return
    faiss.omp_set_num_threads(ARGS.threads)
    print(
        f"# index_auto benchmark: {ARGS.rows:,} rows x {ARGS.dim} (v21 centres + noise, float16"
        f" store), --factory {ARGS.factory}, budget {ARGS.max_memory_mib:g} MiB, {ARGS.queries:,} "
        f"new queries, k=10, {ARGS.threads} threads, median of {ARGS.repeats} query runs"
    )
    print(
        f"# python {platform.python_version()}, numpy {np.__version__}, faiss {faiss.__version__}, "
        f"lscindex {lscindex.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus"
    )
    work = Path(ARGS.keep or tempfile.mkdtemp(prefix="lscindex-index-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if not (work / "emb.zarr").exists():
            write_store(work / "emb.zarr", embeddings(ARGS.rows, seed=0))
        built = in_fresh_process("build", work)
        searched = in_fresh_process("search", work)
        report(work, built, searched)
    finally:
        if not ARGS.keep:
            shutil.rmtree(work, ignore_errors=True)


def report(work: Path, built: dict[str, object], searched: dict[str, object]) -> None:
    side = json.loads((work / "emb.faiss.json").read_text())
    budget = side["auto"]["max_memory_bytes"] if "auto" in side else None
    estimate = next(
        (
            c["estimated_bytes"]
            for c in side.get("auto", {}).get("candidates", [])
            if c["factory"] == side["factory"]
        ),
        None,
    )
    mib = 2**20
    default = side.get("default_nprobe") or side.get("default_ef_search")
    knob = "nprobe" if "default_nprobe" in side else "efSearch" if default else "-"
    print(f"# auto: {side['auto']['reason']}" if "auto" in side else f"# factory {side['factory']}")
    print()
    print(
        "| rows | dim | budget MiB | chosen | estimate MiB | file MiB | index RSS MiB | "
        "load peak MiB | build peak MiB | build s | default knob | recall@10 (sidecar) "
        "| recall@10 (new queries) | q/s |"
    )
    print("|" + "---|" * 14)
    print(
        f"| {ARGS.rows:,} | {ARGS.dim} | {budget / mib if budget else float('nan'):,.1f} | "
        f"{side['factory']} | {estimate / mib if estimate else float('nan'):,.1f} | "
        f"{(work / 'emb.faiss').stat().st_size / mib:,.1f} | "
        f"{float(searched['load_kib']) / 1024:,.1f} | "
        f"{float(searched['load_peak_kib']) / 1024:,.1f} | "
        f"{float(built['build_peak_kib']) / 1024:,.1f} | {float(built['build_s']):,.1f} | "
        f"{knob} {default or ''} | {side.get('recall', float('nan')):.4f} | "
        f"{float(searched['recall']):.4f} | {float(searched['qps']):,.0f} |"
    )
    tried = ", ".join(f"{t['value']}: {t['recall']:.3f}" for t in side.get("tuning", []))
    if tried:
        held = side["recall_queries"]
        print(f"\n# {knob} tried at build (recall@10 of {held:,} held-out rows): {tried}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
