"""lscindex.retrieval: Retriever.classify / search / embed on a trained run and its store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lscindex.errors import DataError, InputError, RunError, StoreError
from lscindex.index import build_index, default_index_path
from lscindex.retrieval import Retriever
from lscindex.run import record_store
from lscindex.store import open_store


def test_query_a_training_image_finds_its_class_and_itself(
    run_dir: Path, store: Path, image_folder: Path
) -> None:
    r = Retriever.open(run_dir, store=store)
    image = image_folder / "train" / "class_004" / "003.png"
    top = r.classify([image], k=3)[0]
    assert top[0].name == "class_004" and top[0].margin > 0 and not top[0].novel
    assert top[0].score >= top[1].score >= top[2].score
    near = r.search([image], k=10)[0]
    assert near[0].score == pytest.approx(1.0, abs=2e-3)
    # the image itself among the stored images tied with the best to within fp16 precision
    assert str(image) in [n.path for n in near if n.score >= near[0].score - 2e-3]


def test_query_accuracy_matches_the_trainer(run_dir: Path, image_folder: Path) -> None:
    r = Retriever.open(run_dir, store=False)
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
    assert [len(hits) for hits in r.search(emb, k=109)] == [108, 108]  # fewer than asked
    assert r.search(emb, k=109)[0][:5] == r.search(emb, k=5)[0]
    with pytest.raises(InputError, match="k must be a positive integer, got 0"):
        r.search(emb, k=0)
    with pytest.raises(DataError, match="does not exist"):
        r.classify(["/nonexistent.png"])


def test_store_of_another_run_is_refused_by_the_retriever(other_run: Path, store: Path) -> None:
    with pytest.raises(
        StoreError, match=r"was embedded by run .*open it with the run .*lscindex embed DATA --run"
    ):
        Retriever.open(other_run, store=store)


def test_pil_images_are_read_like_their_files(run_dir: Path, image_folder: Path) -> None:
    from PIL import Image

    r = Retriever.open(run_dir, store=False)
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


# -- which run, store and index answer ---------------------------------------------------------


def _runs_root(tmp_path: Path, *runs: Path) -> Path:
    """A runs/ folder holding copies of ``runs`` (same fingerprints, no stores recorded)."""
    root = tmp_path / "runs"
    for run in runs:
        shutil.copytree(run, root / run.name, ignore=shutil.ignore_patterns("stores.json"))
    return root


def _store_copy(store: Path, run: Path, to: Path) -> Path:
    """A copy of ``store`` at ``to``, recorded in ``run``'s stores.json as embedded with it."""
    shutil.copytree(store, to, ignore=shutil.ignore_patterns("*.faiss*"))
    header = open_store(to).header
    record_store(run, to, store_id=header.store_id, count=header.count)
    return to


def test_the_only_run_and_its_only_store_are_chosen_and_said(
    run_dir: Path, store: Path, tmp_path: Path
) -> None:
    root = _runs_root(tmp_path, run_dir)
    copy = _store_copy(store, root / run_dir.name, tmp_path / "emb.zarr")
    r = Retriever.open(runs_root=root)
    assert r.run.path == root / run_dir.name and r.store is not None and r.store.path == copy
    assert r.chosen == {
        "run": f"the only run under {root}/",
        "store": "the only store embedded with this run",
        "index": "none beside the store: exact search in memory",
    }
    assert r.index_path is None and r.index_factory == "Flat"
    build_index(copy, factory="Flat")
    beside = Retriever.open(runs_root=root)
    assert beside.index_path == default_index_path(copy)
    assert beside.chosen["index"] == "beside the store"
    named = Retriever.open(root / run_dir.name, index=default_index_path(copy))
    assert named.store is not None and named.store.path == copy
    assert named.chosen["store"] == "named by the index's sidecar"
    assert named.chosen["index"] == "given"


def test_several_runs_or_stores_are_refused_with_the_list(
    run_dir: Path, other_run: Path, store: Path, tmp_path: Path
) -> None:
    with pytest.raises(RunError, match=r"no run found under .*name one \(--run RUN"):
        Retriever.open(runs_root=tmp_path / "nothing")
    root = _runs_root(tmp_path, run_dir, other_run)
    with pytest.raises(RunError, match=r"2 runs under .*\(.*blocks, .*other\); name the one"):
        Retriever.open(runs_root=root)
    run = root / run_dir.name
    first = _store_copy(store, run, tmp_path / "a.zarr")
    second = _store_copy(store, run, tmp_path / "b.zarr")
    with pytest.raises(StoreError, match=r"has 2 stores \(.*a\.zarr, .*b\.zarr\).*--no-store"):
        Retriever.open(run)
    assert Retriever.open(run, store=second).store.path == second  # type: ignore[union-attr]
    none = Retriever.open(run, store=False)
    assert none.store is None and none.chosen["store"] == "none asked for"
    shutil.rmtree(first)  # a store that is gone is no candidate
    assert Retriever.open(run).store.path == second  # type: ignore[union-attr]


def test_a_store_of_another_run_is_no_candidate(
    other_run: Path, store: Path, tmp_path: Path
) -> None:
    root = _runs_root(tmp_path, other_run)
    run = root / other_run.name
    _store_copy(store, run, tmp_path / "emb.zarr")  # recorded, but embedded by trained_run
    r = Retriever.open(run)
    assert r.store is None and r.chosen["store"] == "none embedded with this run"
    with pytest.raises(StoreError, match="has no store; embed one with lscindex embed"):
        Retriever.open(run, store=True)


# -- images, folders and bad images ------------------------------------------------------------


def test_embed_takes_folders_and_a_batch_size(run_dir: Path, image_folder: Path) -> None:
    r = Retriever.open(run_dir, store=False)
    folder = image_folder / "val"
    files = sorted(folder.rglob("*.png"))
    by_folder = r.embed(folder, batch_size=5)
    assert by_folder.shape == (len(files), 4) and by_folder.dtype == np.float32
    np.testing.assert_allclose(by_folder, r.embed(files), atol=1e-6)
    assert r.embed([]).shape == (0, 4)
    with pytest.raises(InputError, match="batch_size must be a positive integer, got 0"):
        r.embed(files, batch_size=0)


def test_query_answers_each_image_and_reports_bad_ones(
    run_dir: Path, store: Path, image_folder: Path, tmp_path: Path
) -> None:
    r = Retriever.open(run_dir, store=store)
    good = sorted((image_folder / "val" / "class_001").glob("*.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    missing = tmp_path / "missing.png"
    results = r.query([good[0], broken, image_folder / "val" / "class_001", missing], k=3)
    assert [x.image for x in results] == [str(good[0]), str(broken), *map(str, good), str(missing)]
    assert [x.error is not None for x in results] == [False, True, False, False, True]
    assert str(broken) in (results[1].error or "") and "does not exist" in (results[-1].error or "")
    assert results[1].classes == [] and results[1].neighbors == []
    answered = [x for x in results if x.error is None]
    assert [x.classes for x in answered] == r.classify([good[0], *good], k=3)
    assert [x.neighbors for x in answered] == r.search([good[0], *good], k=3)


def test_margin_of_the_last_class_is_none(run_dir: Path, image_folder: Path) -> None:
    r = Retriever.open(run_dir, store=False)
    image = next((image_folder / "val").rglob("*.png"))
    matches = r.classify([image], k=6)[0]  # the run has 6 classes
    assert matches[-1].margin is None
    assert all(m.margin is not None and m.margin >= 0 for m in matches[:-1])
    assert r.score_meaning == "cosine"


def test_reprs_say_what_is_open(run_dir: Path, store: Path) -> None:
    r = Retriever.open(run_dir, store=store)
    text = repr(r)
    assert "Retriever(" in text and "v21, dim 4" in text and "6 classes" in text
    assert "108 rows" in text and "index=" in text
    assert repr(r.run) == (
        f"Run({str(run_dir)!r}, test_resnet, v21, dim 4, 6 classes, fingerprint "
        f"{r.run.fingerprint}, cpu)"
    )
    st = repr(open_store(store))
    assert st.startswith("EmbeddingStore(") and "rows=108" in st and "dim=4" in st
    assert "pyarrow" not in st and len(st) < 300


def test_k_above_the_class_count_gives_every_class(run_dir: Path, store: Path) -> None:
    r = Retriever.open(run_dir, store=store)
    emb = np.asarray(open_store(store).embeddings[:1], dtype=np.float32)
    assert [m.id for m in r.classify(emb, k=50)[0]] == [m.id for m in r.classify(emb, k=6)[0]]
    (result,) = r.query([str(open_store(store).metadata.column("path")[0])], k=8)
    assert len(result.classes) == 6 and len(result.neighbors) == 8  # neighbours: k as asked
    with pytest.raises(InputError, match="k must be a positive integer, got 0"):
        r.classify(emb, k=0)
