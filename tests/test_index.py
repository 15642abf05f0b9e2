"""lscindex.index: FAISS factories over a store, the sidecar checks, bad factories, the auto
choice (lscindex.index_factory), recall and search knobs (lscindex._index_search), updates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_topk_exact, run_cli

from lscindex.embedding import build_store
from lscindex.errors import ConfigError, StoreError
from lscindex.index import build_index, load_index, update_index
from lscindex.index_factory import choose_factory, estimate_index_bytes
from lscindex.retrieval import Retriever
from lscindex.store import open_store


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF4,Flat", "IVF2,SQ8"])
def test_index_factories_find_stored_items(store: Path, tmp_path: Path, factory: str) -> None:
    info = build_index(store, factory=factory, out=tmp_path / "i.faiss")
    index, checked = load_index(tmp_path / "i.faiss", store=open_store(store))
    assert checked == info and info.count == 108 and info.factory == factory
    sidecar = json.loads((tmp_path / "i.faiss.json").read_text())
    assert (
        sidecar["store_fingerprint"] == open_store(store).fingerprint
        and len(sidecar["sha256"]) == 64
    )
    emb = np.asarray(open_store(store).embeddings[:20], dtype=np.float32)
    if hasattr(index, "nprobe"):
        index.nprobe = 4
    scores, rows = index.search(emb, 1)
    # A well-fitted model puts the images of a class on its target to within fp16 precision
    # (~1e-3; SQ8 adds ~1e-2): an item counts as found when the index returns it or a row
    # that scores as high as it does within that precision (a near-duplicate).
    tolerance = 2e-3 if factory == "Flat" else 2e-2
    tied = scores[:, 0] >= (emb * emb).sum(1) - tolerance
    found = ((rows[:, 0] == np.arange(20)) | tied).mean()
    assert found >= (1.0 if factory == "Flat" else 0.6)


def test_corrupted_index_is_refused_before_reading(store: Path, tmp_path: Path) -> None:
    path = tmp_path / "i.faiss"
    build_index(store, out=path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"is corrupted \(sha256"):
        load_index(path)


def test_index_of_another_store_is_refused(
    store: Path, run_dir: Path, image_folder: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.zarr"
    build_store(run_dir, [image_folder / "val"], other, workers=0)
    build_index(other, out=tmp_path / "other.faiss")
    with pytest.raises(StoreError, match="built from another store"):
        load_index(tmp_path / "other.faiss", store=open_store(store))
    with pytest.raises(StoreError, match="built from another store"):
        Retriever.open(run_dir, store=store, index=tmp_path / "other.faiss")


def test_bad_factory_and_missing_index(store: Path, tmp_path: Path) -> None:

    with pytest.raises(ConfigError, match="factory string 'Nonsense42'"):
        build_index(store, factory="Nonsense42", out=tmp_path / "x.faiss")
    with pytest.raises(StoreError, match="does not exist"):
        load_index(tmp_path / "none.faiss")
    assert not (tmp_path / "x.faiss").exists()


def test_build_index_counts_missing_rows_of_an_opened_store(store: Path, tmp_path: Path) -> None:
    import dataclasses

    opened = open_store(store)
    keep = np.array([r not in (7, 30) for r in range(108)])
    damaged = dataclasses.replace(opened, metadata=opened.metadata.filter(keep))
    with pytest.raises(StoreError, match=r"lacks 2 of 108 rows \(first: row 7\)"):
        build_index(damaged, out=tmp_path / "i.faiss")
    assert not (tmp_path / "i.faiss").exists()


def test_index_ids_must_be_rows_the_store_embedded(store: Path, tmp_path: Path) -> None:
    import dataclasses

    import pyarrow as pa
    import pyarrow.compute as pc

    build_index(store, out=tmp_path / "i.faiss")
    opened = open_store(store)
    status = pc.if_else(pc.equal(opened.metadata.column("row"), 3), "error", "ok")
    failed = dataclasses.replace(
        opened,
        metadata=opened.metadata.set_column(
            opened.metadata.schema.get_field_index("status"), "status", status.cast(pa.string())
        ),
    )
    with pytest.raises(StoreError, match=r"has 1 ids of rows store .* did not embed \(first: 3\)"):
        load_index(tmp_path / "i.faiss", store=failed)


# -- synthetic stores ---------------------------------------------------------------------------
def clustered(rows: int, dim: int, *, centers: int = 40, noise: float = 0.3, seed: int = 0):  # type: ignore[no-untyped-def]
    """(rows, dim) float32 unit vectors around ``centers`` random directions (seeded)."""
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centers, dim))
    x = middle[rng.integers(0, centers, rows)] + noise * rng.standard_normal((rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_store(path: Path, vectors: np.ndarray, *, chunk_rows: int = 512) -> Path:
    """A finished float32 zarr store holding ``vectors`` (every row embedded)."""
    from lscindex.store import StoreHeader, StoreWriter, balanced_chunk_rows, metadata_table

    count, dim = vectors.shape
    header = StoreHeader(
        format_version=1,
        store_id=path.stem.encode().hex()[:16].ljust(16, "0"),
        count=count,
        dim=dim,
        dtype="float32",
        chunk_rows=balanced_chunk_rows(count, chunk_rows),
        system=None,
        run="runs/synthetic",
        run_fingerprint="f" * 16,
        inputs_sha256="0" * 64,
        complete=False,
    )
    writer = StoreWriter.create(path, header)
    for chunk in range(header.n_chunks):
        start, stop = header.chunk_range(chunk)
        rows = np.arange(start, stop)
        n = len(rows)
        table = metadata_table(
            rows,
            ids=[str(r) for r in rows],
            paths=[f"/img/{r}.png" for r in rows],
            labels=[0] * n,
            label_names=["a"] * n,
            pred=np.zeros(n),
            score=np.ones(n),
            novel=np.zeros(n),
            errors=[""] * n,
            class_names=["a"],
        )
        writer.write_chunk(chunk, vectors[start:stop], table)
    writer.finalize()
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 clustered rows of dim 8 (chunks of 500): where IVF and HNSW approximate."""
    root = tmp_path_factory.mktemp("synthetic")
    vectors = clustered(3000, 8, centers=20, noise=0.8)
    return write_store(root / "syn.zarr", vectors, chunk_rows=500)


def brute_force_recall(index, vectors: np.ndarray, held: np.ndarray, params=None, k: int = 10):  # type: ignore[no-untyped-def]
    """(Q,) recall@k of ``index`` (holding every row but ``held``) for the held-out rows as
    queries, one at a time, against the k-th best exact score over the rows it holds (a tie
    with the k-th counts)."""
    found = index.search(vectors[held], k, params=params)[1]
    others = np.setdiff1d(np.arange(len(vectors)), held)
    recalls = []
    for row, ids in zip(held, found, strict=True):
        scores = np.full(len(vectors), -np.inf, dtype=np.float32)
        scores[others] = vectors[others] @ vectors[row]
        kth = np.sort(scores)[-k]
        recalls.append(sum(1 for i in ids if i >= 0 and scores[i] >= kth - 1e-5) / k)
    return np.array(recalls)


def reaches_target(recalls: np.ndarray) -> bool:
    """The default knob's rule: mean recall@10 - 2 standard errors >= 0.95."""
    return recalls.mean() - 2 * recalls.std(ddof=1) / np.sqrt(len(recalls)) >= 0.95


# -- auto ---------------------------------------------------------------------------------------
def test_auto_picks_flat_for_a_tiny_store_and_records_why(store: Path, tmp_path: Path) -> None:
    info = build_index(store, factory="auto", out=tmp_path / "a.faiss")
    sidecar = json.loads((tmp_path / "a.faiss.json").read_text())
    assert info.factory == sidecar["factory"] == "Flat"
    assert sidecar["auto"]["candidates"][0] == {
        "factory": "Flat",
        "estimated_bytes": estimate_index_bytes("Flat", 108, info.dim),
        "fits": True,
    }
    assert sidecar["auto"]["max_memory_bytes"] is None and "108 rows" in sidecar["auto"]["reason"]
    # a tenth of the rows held out as queries: exact search finds every true neighbour
    assert (info.recall, info.recall_k, info.recall_queries) == (1.0, 10, 10)
    assert info.default_nprobe is None and info.default_ef_search is None
    assert load_index(tmp_path / "a.faiss")[1] == info


# -- recall and the default knob ----------------------------------------------------------------
def test_recall_reported_matches_brute_force(synthetic: Path, tmp_path: Path) -> None:
    """The sample is held out while measured: removing it from the built index (IVF can)
    gives back the index that was measured."""
    import faiss

    from lscindex._index_search import sample_rows

    info = build_index(
        synthetic, factory="IVF32,Flat", out=tmp_path / "i.faiss", recall_queries=200
    )
    index, _ = load_index(tmp_path / "i.faiss")
    assert faiss.extract_index_ivf(index).nprobe == info.default_nprobe  # saved in the file
    vectors = np.asarray(open_store(synthetic).embeddings, dtype=np.float32)
    held = sample_rows(np.arange(3000), 200, 0)
    assert (info.recall_queries, index.remove_ids(held)) == (200, 200)
    # every setting tried, from nprobe 1 (well below 0.95) to the default
    assert info.tuning[0].value == 1 and info.tuning[0].recall < 0.95
    reached = []
    for trial in info.tuning:
        params = faiss.SearchParametersIVF(nprobe=trial.value)
        reference = brute_force_recall(index, vectors, held, params)
        assert trial.recall == pytest.approx(reference.mean(), abs=1e-6)
        reached.append(reaches_target(reference))
    # the default: the smallest nprobe reaching 0.95 (by 2 standard errors)
    assert reached[-1] and not any(reached[:-1]) and info.recall >= 0.95
    assert info.default_nprobe == info.tuning[-1].value == 2 ** (len(info.tuning) - 1)
    assert info.recall == pytest.approx(brute_force_recall(index, vectors, held).mean(), abs=1e-6)


def test_hnsw_gets_a_default_ef_search(synthetic: Path, tmp_path: Path) -> None:
    """A sparse graph (M=3) misses neighbours at FAISS's efSearch 16: tuning goes on."""
    import faiss

    info = build_index(synthetic, factory="HNSW3", out=tmp_path / "h.faiss", recall_queries=300)
    index, _ = load_index(tmp_path / "h.faiss")
    values = [t.value for t in info.tuning]
    assert len(values) >= 2 and values == [16, 32, 64, 128, 256, 512][: len(values)]
    assert info.tuning[0].recall < 0.95 and info.recall >= 0.95
    assert info.default_ef_search == values[-1] and info.default_nprobe is None
    assert faiss.downcast_index(index.index).hnsw.efSearch == info.default_ef_search


def test_recall_of_an_hnsw_index_matches_brute_force(synthetic: Path) -> None:
    """The measurement itself, on an HNSW index built here without the held-out rows."""
    import faiss

    from lscindex._index_search import tune_search

    opened = open_store(synthetic)
    vectors = np.asarray(opened.embeddings, dtype=np.float32)
    held = np.arange(0, 3000, 10)
    indexed = np.ones(3000, dtype=bool)
    indexed[held] = False
    index = faiss.IndexIDMap2(faiss.index_factory(8, "HNSW3", faiss.METRIC_INNER_PRODUCT))
    index.add_with_ids(vectors[indexed], np.flatnonzero(indexed))
    report = tune_search(index, opened, indexed, vectors[held], factory="HNSW3")
    assert report is not None and report.queries == 300 and len(report.trials) >= 2
    for trial in report.trials:
        params = faiss.SearchParametersHNSW(efSearch=trial.value)
        reference = brute_force_recall(index, vectors, held, params)
        assert trial.recall == pytest.approx(reference.mean(), abs=1e-6)
    assert report.value == report.trials[-1].value and report.recall == report.trials[-1].recall


# -- search knobs -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def knob_store(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4,000 clustered rows of the run's dim, so that a Retriever of the run searches them."""
    from lscindex.run import open_run

    dim = int(open_run(run_dir, device="cpu").model.embed_dim)
    root = tmp_path_factory.mktemp("knobs")
    return write_store(root / "knobs.zarr", clustered(4000, dim, centers=20, noise=0.5))


def test_search_knobs_change_results_per_call(
    run_dir: Path, knob_store: Path, tmp_path: Path
) -> None:
    from lscindex.run import open_run

    run, opened = open_run(run_dir, device="cpu"), open_store(knob_store)
    queries = np.asarray(opened.embeddings[:60], dtype=np.float32)
    exact = Retriever(run, opened).search(queries, k=10)
    ids = {}
    for factory, knob, values in (
        ("IVF64,Flat", "nprobe", (1, 64)),
        ("HNSW4", "ef_search", (10, 1000)),
    ):
        build_index(opened, factory=factory, out=tmp_path / "k.faiss", recall_queries=0)
        index, info = load_index(tmp_path / "k.faiss", store=opened)
        retriever = Retriever(run, opened, index, index_factory=info.factory)
        default = retriever.search(queries, k=10)
        low, high = (retriever.search(queries, k=10, **{knob: v}) for v in values)
        ids[factory] = [[[n.row for n in hits] for hits in r] for r in (low, high, exact)]
        assert ids[factory][0] != ids[factory][1]  # the knob changed the answer ...
        assert retriever.search(queries, k=10) == default  # ... for that call only
        # more lists / a longer candidate list find more of the exact neighbours
        found = [
            sum(len(set(a) & set(e)) for a, e in zip(r, ids[factory][2], strict=True))
            for r in ids[factory][:2]
        ]
        assert found[0] < found[1]
    # nprobe = nlist visits every list: the exact answer
    assert ids["IVF64,Flat"][1] == ids["IVF64,Flat"][2]


def test_search_knobs_are_refused_where_they_do_not_apply(
    run_dir: Path, knob_store: Path, store: Path, tmp_path: Path
) -> None:
    from lscindex.errors import InputError
    from lscindex.run import open_run

    run, opened = open_run(run_dir, device="cpu"), open_store(knob_store)
    query = np.asarray(opened.embeddings[:1], dtype=np.float32)
    build_index(opened, factory="HNSW8", out=tmp_path / "h.faiss", recall_queries=0)
    index, info = load_index(tmp_path / "h.faiss", store=opened)
    hnsw = Retriever(run, opened, index, index_factory=info.factory)
    flat = Retriever(run, opened)
    with pytest.raises(
        InputError,
        match=r"^nprobe applies to IVF indexes, but index 'HNSW8' is "
        r"an HNSW index; use ef_search \(--ef-search\)$",
    ):
        hnsw.search(query, nprobe=4)
    with pytest.raises(InputError, match=r"^ef_search applies to HNSW indexes, but index 'Flat'"):
        flat.search(query, ef_search=32)
    with pytest.raises(InputError, match=r"^nprobe must be a positive integer, got 0$"):
        hnsw.query([], nprobe=0)
    with pytest.raises(InputError, match="no store was opened"):
        Retriever(run).query([], ef_search=16)


# -- updates ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grown_stores(run_dir: Path, image_folder: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """(train.zarr: the 96 train images, all.zarr: the same 96 then the 12 val images), embedded
    apart in the same chunks and batches of 16, so rows 0..95 are bit-identical."""
    root = tmp_path_factory.mktemp("grown")
    fast = {"chunk_rows": 16, "batch_size": 16, "workers": 0}
    build_store(run_dir, [image_folder / "train"], root / "train.zarr", **fast)
    inputs = [image_folder / "train", image_folder / "val"]
    build_store(run_dir, inputs, root / "all.zarr", **fast)
    return root / "train.zarr", root / "all.zarr"


def neighbours(path: Path, store: Path, k: int = 10) -> np.ndarray:
    """(count, k) ids: the index's answer for every stored row as a query."""
    return search_all(path, store, k)[1]


def search_all(path: Path, store: Path, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    opened = open_store(store)
    index, _ = load_index(path, store=opened)
    return index.search(np.asarray(opened.embeddings, dtype=np.float32), k)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF4,Flat"])
def test_update_gives_the_neighbours_of_a_rebuild(
    grown_stores,
    factory: str,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    small, grown = grown_stores
    path = tmp_path / "u.faiss"
    build_index(small, factory=factory, out=path)
    with pytest.raises(StoreError, match="was built from another store"):
        update_index(path, grown)  # lineage: all.zarr is no later version of train.zarr
    done = update_index(path, grown, check="rows")
    build_index(grown, factory=factory, out=tmp_path / "r.faiss")
    assert (done.added_rows, done.rebuilt, done.info.count) == (12, False, 108)
    assert done.info.store_fingerprint == open_store(grown).fingerprint
    assert done.info == load_index(path, store=open_store(grown))[1]
    updated, scratch = neighbours(path, grown), neighbours(tmp_path / "r.faiss", grown)
    if factory == "Flat":  # both exact: the same answers, up to the order of exact ties
        vectors = np.asarray(open_store(grown).embeddings, dtype=np.float32)
        for answer in (search_all(path, grown), search_all(tmp_path / "r.faiss", grown)):
            assert_topk_exact(answer[1], answer[0], vectors @ vectors.T)
        tied = np.isclose(np.diff(search_all(path, grown)[0], axis=1), 0, atol=1e-6)
        separated = ~np.concatenate([tied, np.zeros((108, 1), bool)], axis=1)
        separated[:, 1:] &= ~tied
        np.testing.assert_array_equal(updated[separated], scratch[separated])
    else:  # approximate: as close to exact (Flat) search as a rebuild is
        build_index(grown, out=tmp_path / "f.faiss")
        exact = neighbours(tmp_path / "f.faiss", grown)
        recall = [
            np.mean([len(set(a) & set(e)) / 10 for a, e in zip(r, exact, strict=True)])
            for r in (updated, scratch)
        ]
        assert recall[0] >= min(0.9, recall[1] - 0.02), recall


def test_update_refuses_a_store_whose_rows_differ(
    grown_stores,
    image_folder: Path,
    run_dir: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    small, _ = grown_stores
    other = tmp_path / "val.zarr"
    build_store(run_dir, [image_folder / "val", image_folder / "train"], other, workers=0)
    build_index(small, out=tmp_path / "u.faiss")
    with pytest.raises(StoreError, match=r"^row 0 of store .*val\.zarr differs from the row"):
        update_index(tmp_path / "u.faiss", other, check="rows")


def test_update_after_append_follows_the_store_history(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers import make_image_folder

    images = make_image_folder(tmp_path / "img", n_classes=3, per_class=6, val=2)
    out = tmp_path / "emb.zarr"
    build_store(run_dir, [images / "train"], out, chunk_rows=8, workers=0)
    build_index(out, factory="HNSW32")
    for path in sorted((images / "val").rglob("*.png")):  # 6 new images, same class folders
        path.rename(images / "train" / path.parent.name / f"v{path.name}")
    build_store(run_dir, [images / "train"], out, append=True, workers=0)
    with pytest.raises(StoreError, match=r"earlier version of store .* --update$"):
        load_index(tmp_path / "emb.faiss", store=open_store(out))
    code, stdout, err = run_cli(["index", str(out), "--update"], capsys)
    assert code == 0, err
    assert "added 6 rows to" in stdout and "24 embeddings" in stdout and "recall@10" in stdout
    build_index(out, factory="Flat", out=tmp_path / "flat.faiss")
    exact, updated = (
        neighbours(tmp_path / "flat.faiss", out),
        neighbours(tmp_path / "emb.faiss", out),
    )
    assert np.mean([len(set(a) & set(e)) for a, e in zip(updated, exact, strict=True)]) >= 9.5


def test_update_rebuilds_an_index_that_cannot_take_the_rows(store: Path, tmp_path: Path) -> None:
    """An index of another dim (here written by hand, its sidecar naming the store) is rebuilt."""
    import hashlib

    import faiss

    path = tmp_path / "d.faiss"
    build_index(store, out=path)
    dim = open_store(store).header.dim
    wrong = faiss.IndexIDMap2(faiss.IndexFlatIP(dim + 1))
    wrong.add_with_ids(clustered(10, dim + 1), np.arange(10))
    faiss.write_index(wrong, str(path))
    meta = json.loads((tmp_path / "d.faiss.json").read_text())
    meta.update(dim=dim + 1, count=10, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    (tmp_path / "d.faiss.json").write_text(json.dumps(meta))
    done = update_index(path, store)
    assert done.rebuilt and done.reason == f"the index has dim {dim + 1}, the store {dim}"
    assert (done.info.count, done.info.dim) == (108, dim) and load_index(
        path, store=open_store(store)
    )


def test_update_says_when_auto_would_choose_another_factory() -> None:
    import dataclasses

    from lscindex._index_sidecar import IndexInfo
    from lscindex._index_update import advice

    choice = choose_factory(5_000, 18, max_memory_bytes=2**30)
    info = IndexInfo(Path("e.faiss"), "Flat", 18, 5_000, "e.zarr", "f" * 16, "0" * 64, auto=choice)
    assert advice(info) == "" and advice(dataclasses.replace(info, auto=None)) == ""
    assert advice(dataclasses.replace(info, count=200_000)) == (
        "auto would now choose HNSW32 for 200,000 rows (it chose Flat for 5,000); to switch: "
        f"lscindex index e.zarr --factory auto --max-memory {2**30}"
    )


# -- the sidecar ---------------------------------------------------------------------------------
REQUIRED = (
    "format_version",
    "factory",
    "metric",
    "dim",
    "count",
    "store",
    "store_fingerprint",
    "sha256",
)


def test_sidecars_without_the_new_keys_still_load(
    store: Path, run_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "emb.faiss"
    info = build_index(store, factory="IVF4,Flat", out=path)
    side = tmp_path / "emb.faiss.json"
    meta = json.loads(side.read_text())
    assert set(meta) - set(REQUIRED) == {
        "recall",
        "recall_k",
        "recall_queries",
        "default_nprobe",
        "tuning",
    }
    side.write_text(json.dumps({key: meta[key] for key in REQUIRED}))  # as the first release wrote
    old = load_index(path, store=open_store(store))[1]
    assert (old.recall, old.default_nprobe, old.tuning, old.auto) == (None, None, (), None)
    assert old.count == info.count and old.factory == "IVF4,Flat"
    retriever = Retriever.open(run_dir, store=store, index=path, device="cpu")
    assert retriever.search(np.asarray(open_store(store).embeddings[:1], np.float32), k=3)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("recall", "high", r'recall "high", expected a number in 0..1'),
        ("recall", 1.5, r"recall 1.5, expected a number in 0..1"),
        ("default_nprobe", 0, r"default_nprobe 0, expected an integer >= 1"),
        ("recall_queries", True, r"recall_queries true, expected an integer >= 1"),
        (
            "tuning",
            [{"knob": "nlist", "value": 4, "recall": 1.0}],
            r"tuning .*expected a list of \{knob: nprobe\|ef_search, value: int >= 1, "
            r"recall: 0..1\}",
        ),
        (
            "auto",
            {"factory": "Flat"},
            r"auto .*expected an object as docs/store-format.md describes",
        ),
    ],
)
def test_new_sidecar_keys_are_type_checked(
    store: Path, tmp_path: Path, key: str, value: object, message: str
) -> None:
    path = tmp_path / "emb.faiss"
    build_index(store, out=path)
    side = tmp_path / "emb.faiss.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), key: value}))
    with pytest.raises(StoreError, match=f"has {message}; rebuild the index"):
        load_index(path)


# -- the CLI ------------------------------------------------------------------------------------
def test_cli_index_auto_prints_the_choice_and_recall(
    synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "a.faiss"
    args = ["index", str(synthetic), "--factory", "auto", "--max-memory", "250KiB"]
    code, stdout, err = run_cli([*args, "--out", str(out), "--recall-queries", "100"], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / "a.faiss.json").read_text())
    assert meta["auto"]["max_memory_bytes"] == 250 * 1024 and meta["factory"].startswith("IVF")
    assert "auto: 3,000 rows <= 100,000" in stdout and "Flat" in stdout
    assert f"{meta['factory']} " in stdout and "<- chosen" in stdout
    assert f"recall@10 {meta['recall']:.3f} against exact search on 100 held-out rows" in stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--max-memory", "2XB"], 2, "'2XB' is not a size; write e.g. 2GB, 512MiB or 1000000"),
        (["--max-memory", "1GB"], 1, "max_memory_bytes applies to factory='auto', not to 'Flat'"),
        (["--update", "--factory", "HNSW32"], 2, "--update keeps the index's factory"),
        (["--update"], 1, "does not exist; build it with lscindex index STORE"),
    ],
)
def test_cli_index_option_errors_are_one_line(
    synthetic: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    code: int,
    message: str,
) -> None:
    got, _, err = run_cli(
        ["index", str(synthetic), "--out", str(tmp_path / "x.faiss"), *args], capsys
    )
    assert got == code and len(err.strip().splitlines()) == 1 and message in err, err


def test_cli_query_refuses_a_knob_of_another_index(
    run_dir: Path, store: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = str(next((image_folder / "val").rglob("*.png")))
    args = ["query", image, "--run", str(run_dir), "--store", str(store), "--device", "cpu"]
    code, _, err = run_cli([*args, "--nprobe", "2"], capsys)
    assert code == 1 and "nprobe applies to IVF indexes, but index 'Flat'" in err, err
