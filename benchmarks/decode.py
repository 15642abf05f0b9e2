"""Analytic nearest-target decoding vs a FAISS flat search over the materialised targets.

For v21 at n_min for 1k, 50k and 600k classes: queries/s of ``VectorSystem.decode`` (top-1,
top-5) against ``faiss.IndexFlatIP`` over all class targets, both on the same thread count, the
agreement between the two, and the peak memory each needs.

    python benchmarks/decode.py                  # 2 threads, 10,000 queries, ~2 minutes
    python benchmarks/decode.py --classes 1000 --queries 2000 --repeats 3   # quick look

With ``--run RUN --store STORE`` the queries are real: the first ``--queries`` embeddings of a
store that ``lscindex embed`` wrote with that run, decoded through the run's own system (its
data assignment included), against a flat index over every one of the run's class targets.

    python benchmarks/decode.py --run runs/inst600k --store val600k.zarr
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable

MIN_SAMPLE_S = 0.25


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[1000, 50_000, 600_000])
    parser.add_argument("--kind", default="v21")
    parser.add_argument("--queries", type=int, default=10_000, help="half random, half near-target")
    parser.add_argument("--faiss-queries", type=int, default=2000, help="subset timed for faiss")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run", help="a trained LSC run: decode through its system")
    parser.add_argument("--store", help="with --run: queries are this store's embeddings")
    args = parser.parse_args()
    if (args.run is None) != (args.store is None):
        parser.error("--run and --store go together")
    return args


ARGS = parse_args()
# Thread counts must be fixed before numpy/faiss load their thread pools.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import faiss  # noqa: E402
import numpy as np  # noqa: E402

import lscindex  # noqa: E402
from lscindex import VectorSystem  # noqa: E402


def interleaved_rates(
    samplers: dict[str, tuple[Callable[[], object], int]], repeats: int
) -> dict[str, float]:
    """Items per second of each ``(fn, items)``: the median of ``repeats`` samples.

    The samples are taken in turn (analytic, faiss, analytic, ...), so that load from elsewhere
    on a shared machine falls on both sides of a ratio alike; a call shorter than
    ``MIN_SAMPLE_S`` is repeated within its sample until the sample lasts that long.
    """
    loops = {}
    for name, (fn, _) in samplers.items():
        start = time.perf_counter()
        fn()
        loops[name] = max(1, math.ceil(MIN_SAMPLE_S / max(time.perf_counter() - start, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in samplers}
    for _ in range(repeats):
        for name, (fn, items) in samplers.items():
            start = time.perf_counter()
            for _ in range(loops[name]):
                fn()
            samples[name].append(items * loops[name] / (time.perf_counter() - start))
    return {name: statistics.median(rates) for name, rates in samples.items()}


def make_queries(system: VectorSystem, count: int, rng: np.random.Generator) -> np.ndarray:
    half = count // 2
    random = rng.standard_normal((half, system.dim))
    labels = rng.integers(0, system.n_classes, count - half)
    near = system.targets(labels) + 0.15 * rng.standard_normal((count - half, system.dim))
    return np.concatenate([random, near]).astype(np.float32)


def store_queries(run_dir: str, store_path: str) -> tuple[VectorSystem, np.ndarray]:
    """The run's system and the first ``--queries`` readable embeddings of the store, float32."""
    import pyarrow.compute as pc

    from lscindex import open_run, open_store

    system = open_run(run_dir, device="cpu").system
    if system is None:
        sys.exit(f"{run_dir} is a ce run: it has no targets to decode to")
    store = open_store(store_path)
    ok = np.flatnonzero(pc.equal(store.metadata.column("status"), "ok").to_numpy(False))
    if len(ok) < ARGS.queries:
        sys.exit(f"{store_path} has {len(ok):,} readable rows; fewer than --queries")
    embeddings = np.asarray(store.embeddings[: int(ok[ARGS.queries - 1]) + 1], np.float32)
    return system, embeddings[ok[: ARGS.queries]]


def run(n_classes: int, rng: np.random.Generator) -> dict[str, float]:
    system = VectorSystem.create(ARGS.kind, n_classes)
    return compare(system, make_queries(system, ARGS.queries, rng))


def compare(system: VectorSystem, queries: np.ndarray) -> dict[str, float]:
    """Analytic decode vs a flat search over all ``system.n_classes`` targets on ``queries``."""
    n_classes = system.n_classes
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    system.decode(queries[:100], k=5, threads=ARGS.threads)  # warm-up

    row: dict[str, float] = {"classes": n_classes, "dim": system.dim}
    tracemalloc.start()
    ours = system.decode(queries, k=5, threads=ARGS.threads)
    row["analytic_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()

    start = time.perf_counter()
    index = faiss.IndexFlatIP(system.dim)
    index.add(system.targets(np.arange(n_classes)))
    row["faiss_build_s"] = time.perf_counter() - start
    # what the flat index holds: the (n_classes, dim) float32 target matrix
    row["faiss_index_mb"] = index.ntotal * index.code_size / 2**20

    subset = unit[: ARGS.faiss_queries]
    samplers: dict[str, tuple[Callable[[], object], int]] = {}
    for k in (1, 5):
        samplers[f"analytic_top{k}"] = (
            lambda k=k: system.decode(queries, k=k, threads=ARGS.threads),
            len(queries),
        )
        samplers[f"faiss_top{k}"] = (lambda k=k: index.search(subset, k), len(subset))
    row.update(interleaved_rates(samplers, ARGS.repeats))

    # One extra neighbour, so that a tie between the 5th and 6th best counts as a tie.
    scores6, ids6 = index.search(unit, 6)
    scores, ids = scores6[:, :5], ids6[:, :5]
    row["max_score_diff"] = float(np.abs(ours.scores - scores).max())
    # ids must agree wherever a score is more than 1e-6 from the scores before and after it
    before = np.concatenate([np.full((len(scores), 1), np.inf), scores6[:, :-1]], axis=1)
    gaps = np.minimum(
        before - scores6,
        np.concatenate([-np.diff(scores6, axis=1), np.full((len(scores), 1), np.inf)], axis=1),
    )[:, :5]
    separated = gaps > 1e-6
    row["ids_equal_where_separated"] = float((ours.ids == ids)[separated].mean())
    row["separated_fraction"] = float(separated.mean())
    row["top1_agreement"] = float((ours.ids[:, 0] == ids[:, 0]).mean())
    row["novel_fraction"] = float(ours.novel.mean())
    return row


def main() -> None:
    faiss.omp_set_num_threads(ARGS.threads)
    print(
        f"# decode benchmark: {ARGS.kind} at n_min, {ARGS.queries:,} queries (half random, half "
        f"near-target, unless from a store), {ARGS.threads} threads, median of {ARGS.repeats} "
        f"samples of >= {MIN_SAMPLE_S} s each, analytic and faiss in turn (faiss timed on "
        f"{ARGS.faiss_queries:,} of the queries)"
    )
    print(
        f"# python {platform.python_version()}, numpy {np.__version__}, faiss {faiss.__version__}, "
        f"lscindex {lscindex.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cpus"
    )
    if ARGS.store is not None:
        system, queries = store_queries(ARGS.run, ARGS.store)
        print(f"# queries: {len(queries):,} embeddings of {ARGS.store} (run {ARGS.run})")
        rows = [compare(system, queries)]
    else:
        rows = [run(n, np.random.default_rng(0)) for n in ARGS.classes]
    print()
    print(
        "| classes | dim | analytic top-1 q/s | faiss top-1 q/s | ratio | analytic top-5 q/s "
        "| faiss top-5 q/s | ratio | max top-5 score diff | ids equal (separated) | "
        "top-1 agree | novel | analytic peak MiB | faiss index MiB |"
    )
    print("|" + "---|" * 14)
    for r in rows:
        print(
            f"| {r['classes']:,.0f} | {r['dim']:.0f} | {r['analytic_top1']:,.0f} | "
            f"{r['faiss_top1']:,.0f} | **{r['analytic_top1'] / r['faiss_top1']:,.0f}x** | "
            f"{r['analytic_top5']:,.0f} | {r['faiss_top5']:,.0f} | "
            f"**{r['analytic_top5'] / r['faiss_top5']:,.0f}x** | {r['max_score_diff']:.1e} | "
            f"{100 * r['ids_equal_where_separated']:.3f}% | {100 * r['top1_agreement']:.2f}% | "
            f"{100 * r['novel_fraction']:.1f}% | {r['analytic_peak_mb']:.1f} | "
            f"{r['faiss_index_mb']:.1f} |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
