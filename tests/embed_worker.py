"""Run as a subprocess by test_embedding (and benchmarks/embed_resume.py): embeds with progress.

After each batch it appends ``rows_done`` to a log file, so a parent that kills it knows how
many rows it had computed, and so how many were lost when it died.

    python embed_worker.py RUN OUT LOG INPUT... [--chunk-rows N] [--batch-size N]
"""

from __future__ import annotations

import argparse

from lscindex.embedding import build_store

parser = argparse.ArgumentParser()
parser.add_argument("run")
parser.add_argument("out")
parser.add_argument("log")
parser.add_argument("inputs", nargs="+")
parser.add_argument("--chunk-rows", type=int, default=16)
parser.add_argument("--batch-size", type=int, default=8)
args = parser.parse_args()

with open(args.log, "a") as log:

    def progress(done: int, todo: int, rate: float) -> None:
        log.write(f"{done}\n")
        log.flush()

    report = build_store(
        args.run,
        args.inputs,
        args.out,
        chunk_rows=args.chunk_rows,
        batch_size=args.batch_size,
        workers=0,
        device="cpu",
        progress=progress,
    )
    log.write(f"finished {report.computed_rows}\n")
