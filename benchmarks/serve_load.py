"""`lscindex serve` under sustained concurrent load, side by side with the in-process Retriever.

Starts a real ``lscindex serve`` process on 127.0.0.1 (a run and a zarr store of glyph images),
then for each client count (1, 4, 16, 64) sends a bounded number of requests from that many
concurrent clients (threads with their own HTTP connection), alternating ``POST /classify`` and
``POST /search`` with one real glyph image each, for at most ``--seconds`` a level. Reports
throughput, p50/p99 latency, errors (any status but 200) and the server's RSS, and the same
queries answered in this process by ``Retriever.query`` one after the other (image bytes decoded
as the server decodes them): the ceiling, since the server runs one forward pass at a time.

    python benchmarks/serve_load.py                                   # 4 levels, 3 rounds each
    python benchmarks/serve_load.py --clients 16 --requests 200 --rounds 1    # quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=400, help="requests a level and round")
    parser.add_argument("--seconds", type=float, default=60.0, help="time limit a level")
    parser.add_argument("--rounds", type=int, default=3, help="median over this many rounds")
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--classes", type=int, default=200, help="glyph classes to build")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    parser.add_argument("--keep", help="folder to keep the data, run and store in")
    return parser.parse_args()


ARGS = parse_args()
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _synthetic import make_untrained_run  # noqa: E402

import lscindex  # noqa: E402
from lscindex.data import read_image_bytes  # noqa: E402
from lscindex.embedding import build_store  # noqa: E402
from lscindex.glyphs import build_glyph_dataset  # noqa: E402
from lscindex.retrieval import Retriever  # noqa: E402


def prepare(work: Path) -> tuple[Path, Path, list[tuple[str, bytes]]]:
    """(run, store, the (name, PNG bytes) of the glyph images the clients send)."""
    data, run, store = work / "glyphs", work / "run", work / "emb.zarr"
    if not data.exists():
        build_glyph_dataset(data, n_classes=ARGS.classes, workers=1)
    if not run.exists():
        make_untrained_run(data, run, model=ARGS.model)
    if not store.exists():
        build_store(run, [data / "train"], store, workers=0)
    images = sorted((data / "val").rglob("*.png"))[:256]
    return run, store, [(str(p), p.read_bytes()) for p in images]


def start_server(run: Path, store: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A ``lscindex serve`` process on a free port and its base URL."""
    cmd = [sys.executable, "-m", "lscindex_cli.main", "serve", "--run", str(run)]
    cmd += ["--store", str(store), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    deadline = time.time() + 300
    while time.time() < deadline:
        found = re.search(r"serving on (http://\S+):(\d+)", log.read_text(errors="replace"))
        if found:
            url = f"{found[1]}:{found[2]}"
            httpx.get(f"{url}/health", timeout=30).raise_for_status()
            return proc, url
        if proc.poll() is not None:
            sys.exit(f"lscindex serve exited {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.1)
    proc.kill()
    sys.exit("lscindex serve did not start within 300 s")


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of process ``pid`` in MiB, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    value = {k: float(re.search(rf"{k}:\s+(\d+)", status)[1]) / 1024 for k in ("VmRSS", "VmHWM")}  # type: ignore[index]
    return value["VmRSS"], value["VmHWM"]


def load(url: str, images: list[tuple[str, bytes]], clients: int) -> dict[str, float]:
    """``clients`` concurrent clients sharing ``--requests`` requests (at most ``--seconds``)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(ARGS.requests))
    deadline = time.perf_counter() + ARGS.seconds

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while time.perf_counter() < deadline:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                name, data = images[i % len(images)]
                endpoint = ("classify", "search")[i % 2]
                start = time.perf_counter()
                try:
                    response = http.post(f"{url}/{endpoint}", files=[("image", (name, data))])
                    status = str(response.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                took = time.perf_counter() - start
                with lock:
                    latencies.append(took)
                    if status != "200":
                        errors.append(status)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "rps": len(latencies) / wall,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "requests": len(latencies),
        "errors": len(errors),
    }


def in_process(run: Path, store: Path, images: list[tuple[str, bytes]]) -> float:
    """Requests a second answered by Retriever.query in this process, one after the other."""
    torch.set_num_threads(ARGS.threads)
    searcher = Retriever.open(run, store=store, device="cpu")
    classifier = Retriever.open(run, store=False, device="cpu")
    order = [(i % 2, *images[i % len(images)]) for i in range(ARGS.requests)]
    searcher.query([read_image_bytes(order[0][2], order[0][1])])  # warm-up
    start = time.perf_counter()
    for search, name, data in order:
        (searcher if search else classifier).query([read_image_bytes(data, name)])
    return len(order) / (time.perf_counter() - start)


def main() -> None:
    work = Path(ARGS.keep or tempfile.mkdtemp(prefix="lscindex-serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    run, store, images = prepare(work)
    print(
        f"# serve load: {ARGS.model} on 32 px glyphs, {len(images)} distinct query images, "
        f"{ARGS.requests} requests a level (classify and search alternating, 1 image each, "
        f"at most {ARGS.seconds:g} s), median of {ARGS.rounds} rounds, server torch threads "
        f"{ARGS.threads}, clients are threads of this process on the same machine"
    )
    print(
        f"# python {platform.python_version()}, torch {torch.__version__}, httpx "
        f"{httpx.__version__}, lscindex {lscindex.__version__}, {os.cpu_count()} cpus"
    )
    proc, url = start_server(run, store, work / "server.log")
    try:
        load(url, images, 4)  # warm-up: connections, first forward passes
        idle, _ = rss_mib(proc.pid)
        ceiling = statistics.median(in_process(run, store, images) for _ in range(ARGS.rounds))
        print()
        print(
            "| clients | requests/s | ratio to in-process | p50 ms | p99 ms | errors | "
            "server RSS MiB (peak) |"
        )
        print("|---|---|---|---|---|---|---|")
        print(f"| in-process Retriever, 1 thread | {ceiling:,.1f} | 1.00 | | | | |")
        for clients in ARGS.clients:
            rounds = [load(url, images, clients) for _ in range(ARGS.rounds)]
            mid = sorted(rounds, key=lambda r: r["rps"])[len(rounds) // 2]
            errors = sum(int(r["errors"]) for r in rounds)
            now, peak = rss_mib(proc.pid)
            print(
                f"| {clients} | {mid['rps']:,.1f} | **{mid['rps'] / ceiling:.2f}** | "
                f"{mid['p50']:.1f} | {mid['p99']:.1f} | {errors} of "
                f"{sum(int(r['requests']) for r in rounds)} | {now:,.0f} ({peak:,.0f}) |"
            )
        print(f"\nserver RSS when idle after warm-up: {idle:,.0f} MiB")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
