"""lscindex.retrieval: Retriever.classify / search / embed on a trained run and its store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lscindex.errors import DataError, InputError, StoreError
from lscindex.retrieval import Retriever
from lscindex.store import open_store


def test_query_a_training_image_finds_its_class_and_itself(
    run_dir: Path, store: Path, image_folder: Path
) -> None:
    r = Retriever.open(run_dir, store=store)
    image = image_folder / "train" / "class_004" / "003.png"
    top = r.classify([image], k=3)[0]
    assert top[0].name == "class_004" and top[0].margin > 0 and not top[0].novel
    assert top[0].cosine >= top[1].cosine >= top[2].cosine
    near = r.search([image], k=10)[0]
    assert near[0].cosine == pytest.approx(1.0, abs=2e-3)
    # the image itself among the stored images tied with the best to within fp16 precision
    assert str(image) in [n.path for n in near if n.cosine >= near[0].cosine - 2e-3]


def test_query_accuracy_matches_the_trainer(run_dir: Path, image_folder: Path) -> None:
    r = Retriever.open(run_dir)
    images = sorted((image_folder / "val").rglob("*.png"))
    labels = [int(p.parent.name[-3:]) for p in images]
    predicted = [m[0].id for m in r.classify(images, k=1)]
    accuracy = np.mean(np.array(predicted) == np.array(labels))
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert accuracy == pytest.approx(last["val_top1"], abs=1e-9)


def test_retriever_accepts_embeddings_and_checks_them(run_dir: Path, store: Path) -> None:
    r = Retriever.open(run_dir, store=store)
    emb = np.asarray(open_store(store).embeddings[:2], dtype=np.float32)
    assert r.search(emb, k=1)[0][0].row == 0
    assert len(r.classify(emb, k=2)[1]) == 2
    with pytest.raises(InputError, match=r"embeddings must be \(B, 4\)"):
        r.classify(np.zeros((1, 5), np.float32))
    with pytest.raises(InputError, match=r"k=109 is out of range: the store .* has 108 indexed"):
        r.search(emb, k=109)
    with pytest.raises(DataError, match="does not exist"):
        r.classify(["/nonexistent.png"])


def test_store_of_another_run_is_refused_by_the_retriever(other_run: Path, store: Path) -> None:
    with pytest.raises(StoreError, match=r"was embedded by run .*embed again with --run"):
        Retriever.open(other_run, store=store)


def test_pil_images_are_read_like_their_files(run_dir: Path, image_folder: Path) -> None:
    from PIL import Image

    r = Retriever.open(run_dir)
    path = image_folder / "val" / "class_002" / "001.png"  # saved in mode "L"
    with Image.open(path) as gray:
        assert gray.mode == "L"
        np.testing.assert_array_equal(r.embed([gray]), r.embed([path]))
        assert r.classify([gray], k=2) == r.classify([path], k=2)


def test_search_looks_stored_items_up_by_row_not_by_position(run_dir: Path, store: Path) -> None:
    import dataclasses

    opened = open_store(store)
    order = np.random.default_rng(0).permutation(108)
    shuffled = dataclasses.replace(opened, metadata=opened.metadata.take(order))
    plain = Retriever.open(run_dir, store=store)
    moved = Retriever(plain.run, shuffled, plain.index)
    emb = np.asarray(opened.embeddings[:6], dtype=np.float32)
    assert moved.search(emb, k=5) == plain.search(emb, k=5)
    paths = opened.metadata.column("path").to_pylist()
    assert all(n.path == paths[n.row] for hits in moved.search(emb, k=5) for n in hits)
    missing = dataclasses.replace(opened, metadata=opened.metadata.slice(0, 100))
    with pytest.raises(StoreError, match=r"row 10[0-7] is not in the metadata of store"):
        Retriever(plain.run, missing, plain.index).search(emb[:1], k=108)
