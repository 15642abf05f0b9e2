"""Decode noisy embeddings to classes among 600,000 with no target matrix and no index.

python examples/decode.py
"""

from __future__ import annotations

import time

import numpy as np

from lscindex import VectorSystem

system = VectorSystem.create("v21", 600_000, seed=0)
print(f"{system}: {system.n_vectors:,} vectors, closest pair cosine {system.mcs:.3f}")

rng = np.random.default_rng(0)
labels = rng.integers(0, system.n_classes, size=20_000)
# What a trained encoder emits: its class target plus noise, unnormalised.
embeddings = 3.0 * system.targets(labels) + 0.2 * rng.standard_normal((len(labels), system.dim))

start = time.perf_counter()
out = system.decode(embeddings, k=5)
seconds = time.perf_counter() - start

top1 = (out.ids[:, 0] == labels).mean()
top5 = (out.ids == labels[:, None]).any(axis=1).mean()
print(f"decoded {len(labels):,} embeddings in {seconds * 1e3:.0f} ms")
print(f"top-1 {top1:.3f}, top-5 {top5:.3f}")
print(
    f"first row: ids {out.ids[0].tolist()}, cosines {[round(float(s), 3) for s in out.scores[0]]}"
)

# An embedding that lands on a vector no class owns is flagged as novel.
owners = system.class_ids(np.arange(system.n_vectors))
unowned = system.vectors(np.flatnonzero(owners < 0)[:1]).astype(np.float32)
print(f"embedding at an unowned vector: novel={bool(system.decode(unowned).novel[0])}")
