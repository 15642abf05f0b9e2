"""The whole pipeline through the Python API, on a small glyph set: train, embed, index, query.

    python examples/retrieval.py [WORKDIR]

Builds 40 glyph classes from the fonts shipped in pip packages, trains a tiny encoder on fixed
v21 targets for a few epochs, embeds every image into a zarr store, indexes it with FAISS and
asks the Retriever about a held-out image.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import lscindex


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="lscindex-example-"))
    data, run, store = work / "glyphs", work / "runs" / "glyphs", work / "emb.zarr"

    info = lscindex.build_glyph_dataset(data, n_classes=40, size=24, overwrite=True)
    print(f"{info.n_classes} classes from {len(info.train_fonts)} training fonts")

    result = lscindex.fit(
        lscindex.TrainConfig(
            data=str(data),
            out=str(run),
            model="test_resnet",
            epochs=4,
            batch_size=32,
            img_size=24,
            workers=0,
            lr=3e-3,
        )
    )
    print(f"val top-1 on held-out fonts: {result.metrics[-1].val_top1:.3f}")

    report = lscindex.build_store(run, [data], store, workers=0)
    index = lscindex.build_index(store, factory="HNSW32")
    print(
        f"stored {report.header.count} embeddings of dim {report.header.dim}; {index.count} indexed"
    )

    retriever = lscindex.Retriever.open(run, store=store)
    image = sorted((data / "val").rglob("*.png"))[0]
    best = retriever.classify([image], k=3)[0]
    print(
        f"{image.parent.name}/{image.name}: " + ", ".join(f"{m.name} ({m.score:.2f})" for m in best)
    )
    for neighbor in retriever.search([image], k=3)[0]:
        print(f"  near: {neighbor.id} label={neighbor.label_name} cosine={neighbor.score:.3f}")


if __name__ == "__main__":  # the glyph builder renders in worker processes
    main()
