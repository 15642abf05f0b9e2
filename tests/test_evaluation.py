"""lscindex.evaluation and ``lscindex eval``: the trainer's val figures, per-class counts and
retrieval scores against slow explicit references, and one-line errors."""

from __future__ import annotations

import inspect
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from helpers import (
    assert_same_shape,
    documented_json,
    make_image_folder,
    run_cli,
    strict_json,
)

from lscindex.embedding import build_store
from lscindex.errors import InputError
from lscindex.evaluation import evaluate
from lscindex.index import build_index
from lscindex.retrieval import Retriever
from lscindex.run import read_metrics, run_fingerprint
from lscindex.schema import to_json
from lscindex.store import open_store
from lscindex_cli.main import app


@pytest.fixture(scope="module")
def flat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A flat ImageFolder (no val/): 4 classes x 6 images of 16 px."""
    root = make_image_folder(
        tmp_path_factory.mktemp("flat") / "blocks", n_classes=4, per_class=6, size=16, val=0
    )
    return root / "train"


@pytest.fixture(scope="module")
def ce_run(flat_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A softmax-head run whose val split is a quarter of ``flat_data`` (val_fraction)."""
    from lscindex.training import TrainConfig, fit

    out = tmp_path_factory.mktemp("runs") / "ce"
    fit(
        TrainConfig(
            data=str(flat_data),
            out=str(out),
            model="test_resnet",
            head="ce",
            epochs=2,
            batch_size=8,
            img_size=16,
            workers=0,
            val_fraction=0.25,
            seed=3,
        )
    )
    return out


# -- the trainer's figures ----------------------------------------------------------------------
@pytest.mark.parametrize("which", ["run_dir", "other_run"])
def test_val_top1_top5_are_the_trainers_last_epoch(
    which: str, request: pytest.FixtureRequest, image_folder: Path
) -> None:
    run = request.getfixturevalue(which)
    report = evaluate(run, image_folder, split="val", workers=0)
    last = read_metrics(run)[-1]
    assert (report.images, report.unreadable) == (12, 0)
    assert (report.top1, report.top5) == (last["val_top1"], last["val_top5"])
    assert report.novelty_rate is not None and 0.0 <= report.novelty_rate <= 1.0
    assert report.run["fingerprint"] == run_fingerprint(run) and report.store is None


def test_ce_run_matches_its_val_fraction_split_and_has_no_novelty(
    ce_run: Path, flat_data: Path
) -> None:
    report = evaluate(ce_run, flat_data, workers=0)
    last = read_metrics(ce_run)[-1]
    assert report.images == 6  # a quarter of 24 images, the ones training held out
    assert (report.top1, report.top5) == (last["val_top1"], last["val_top5"])
    assert report.top_k == 4 and report.top5 == 1.0  # 4 classes: the top 4 hold every label
    assert report.run["head"] == "ce" and report.novelty_rate is None
    document = strict_json(to_json(report.to_document()))
    assert document["kind"] == "eval" and document["novelty_rate"] is None
    assert evaluate(ce_run, flat_data, split="all", workers=0).images == 24


# -- per-class accuracy and confusions ----------------------------------------------------------
def test_per_class_counts_and_confusions_match_a_slow_count(
    other_run: Path, image_folder: Path
) -> None:
    # batch_size=1 decodes each image alone, exactly as the one-by-one reference below does
    report = evaluate(other_run, image_folder, split="all", batch_size=1, workers=0)
    retriever = Retriever.open(other_run, store=False)
    counts: dict[int, list[int]] = {}
    confused: Counter[tuple[int, int]] = Counter()
    for image in sorted(image_folder.rglob("*.png")):
        truth = int(image.parent.name[-3:])
        predicted = retriever.classify([image], k=1)[0][0].id
        tally = counts.setdefault(truth, [0, 0])
        tally[0] += 1
        tally[1] += predicted == truth
        if predicted != truth:
            confused[(truth, predicted)] += 1
    assert confused, "a 1-epoch run should confuse some classes"
    assert report.images == sum(n for n, _ in counts.values()) == 108
    assert report.class_images.tolist() == [counts[c][0] for c in range(6)]
    assert report.class_correct.tolist() == [counts[c][1] for c in range(6)]
    assert report.top1 == sum(ok for _, ok in counts.values()) / 108
    worst = sorted(counts, key=lambda c: (counts[c][1] / counts[c][0], -counts[c][0], c))
    assert [(w.id, w.images, w.correct) for w in report.worst_classes] == [
        (c, counts[c][0], counts[c][1]) for c in worst
    ]
    pairs = sorted(confused.items(), key=lambda item: (-item[1], item[0]))[:10]
    assert [((p.true_id, p.pred_id), p.count) for p in report.confusions] == pairs
    assert report.confusions[0].true_name == f"class_{report.confusions[0].true_id:03d}"
    mean = np.mean([ok / n for n, ok in counts.values()])
    assert report.mean_class_accuracy == pytest.approx(mean, abs=1e-12)


# -- retrieval ----------------------------------------------------------------------------------
def brute_force_retrieval(
    run: Path, store: Path, queries: list[tuple[Path, int]], k: int
) -> tuple[float, float, int, int]:
    """(recall@k, mAP@k, queries counted, queries without relevant items) by a full scan."""
    opened = open_store(store)
    rows = opened.metadata.to_pylist()
    stored = np.asarray(opened.embeddings[:], dtype=np.float32)
    vectors = Retriever.open(run, store=False).embed([path for path, _ in queries])
    hits, ap, counted, without = 0.0, 0.0, 0, 0
    for (path, label), vector in zip(queries, vectors, strict=True):
        itself = os.path.realpath(path)
        items = [
            (float(stored[row["row"]] @ vector), row["label"] == label)
            for row in rows
            if row["status"] == "ok" and os.path.realpath(row["path"]) != itself
        ]
        n_relevant = sum(relevant for _, relevant in items)
        if n_relevant == 0:
            without += 1
            continue
        ranked = [relevant for _, relevant in sorted(items, key=lambda item: -item[0])][:k]
        precisions = [sum(ranked[: i + 1]) / (i + 1) for i in range(len(ranked)) if ranked[i]]
        counted += 1
        hits += any(ranked)
        ap += sum(precisions) / min(k, n_relevant)
    return hits / counted, ap / counted, counted, without


def test_recall_and_map_match_a_brute_force_scan(
    other_run: Path, image_folder: Path, tmp_path: Path
) -> None:
    # A copy of the 1-epoch run, whose neighbours are far from perfect: the figures are not all
    # 1.0, and the store recorded in the copy's stores.json stays out of other modules' runs.
    run_dir = tmp_path / "run"
    shutil.copytree(other_run, run_dir)
    # The store holds the val images of classes 0-4 through a symlinked folder (each query's
    # own copy, under another path), the train images of classes 0-1 and one val image of
    # class 5: so R >= k, R < k and R = 0 (that image itself) all occur.
    link = tmp_path / "link"
    link.symlink_to(image_folder / "val", target_is_directory=True)
    inputs = [link / f"class_{c:03d}" for c in range(5)]
    inputs += [image_folder / "train" / "class_000", image_folder / "train" / "class_001"]
    inputs.append(image_folder / "val" / "class_005" / "000.png")
    store = tmp_path / "s.zarr"
    build_store(run_dir, inputs, store, batch_size=16, workers=0)
    queries = [(p, int(p.parent.name[-3:])) for p in sorted((image_folder / "val").rglob("*.png"))]
    recall, mean_ap, counted, without = brute_force_retrieval(run_dir, store, queries, k=5)
    assert (counted, without) == (11, 1) and 0.0 < mean_ap < recall < 1.0

    exact = evaluate(run_dir, image_folder, store=store, k=5, workers=0)
    assert exact.retrieval is not None and exact.index is not None
    assert (exact.retrieval.queries, exact.retrieval.without_relevant) == (11, 1)
    assert exact.retrieval.recall_at_k == pytest.approx(recall, abs=1e-12)
    assert exact.retrieval.map_at_k == pytest.approx(mean_ap, abs=1e-12)
    assert exact.index["path"] is None and exact.chosen["store"] == "given"

    build_index(store, factory="Flat")
    indexed = evaluate(run_dir, image_folder, store=store, k=5, workers=0)
    assert indexed.index is not None and indexed.index["path"] == str(tmp_path / "s.faiss")
    assert indexed.retrieval == exact.retrieval


# -- data ---------------------------------------------------------------------------------------
def test_a_manifest_of_some_classes_maps_them_by_key(
    run_dir: Path, image_folder: Path, tmp_path: Path
) -> None:
    images = sorted((image_folder / "val").rglob("*.png"))[6:]  # classes 3, 4 and 5
    manifest = tmp_path / "m.csv"  # no split column: every row is a training row
    lines = [f"{p},{p.parent.name}" for p in images]
    manifest.write_text("path,label\n" + "\n".join(lines) + "\n")
    some = evaluate(run_dir, manifest, split="all", workers=0)
    every = evaluate(run_dir, image_folder, workers=0)
    assert some.class_images.tolist() == [0, 0, 0, 2, 2, 2]
    assert some.class_correct[3:].tolist() == every.class_correct[3:].tolist()


def test_unreadable_images_are_left_out_and_counted(
    run_dir: Path, image_folder: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    (data / "val" / "class_000" / "broken.png").write_bytes(b"not a png")
    calls: list[tuple[int, int]] = []
    report = evaluate(
        run_dir, data, batch_size=5, workers=0, progress=lambda d, t, _: calls.append((d, t))
    )
    assert (report.images, report.unreadable) == (12, 1)
    assert calls == [(5, 13), (10, 13), (13, 13)]


# -- the command --------------------------------------------------------------------------------
def test_eval_json_end_to_end(
    run_dir: Path, store: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["eval", str(run_dir), str(image_folder), "--store", str(store), "-k", "3", "--json"]
    code, out, err = run_cli([*args, "--workers", "0"], capsys)
    assert code == 0, err
    document = strict_json(out)
    assert (document["schema_version"], document["kind"]) == (1, "eval")
    assert document["run"]["fingerprint"] == run_fingerprint(run_dir)
    assert document["store"]["store_id"] == open_store(store).header.store_id
    assert document["top1"] == read_metrics(run_dir)[-1]["val_top1"]
    assert document["retrieval"]["k"] == 3 and 0.0 <= document["retrieval"]["map_at_k"] <= 1.0
    assert document["data"] == {"path": str(image_folder), "split": "val"}
    docs = Path(__file__).parents[1] / "docs" / "json-schema.md"
    assert_same_shape(document, documented_json(docs, "eval"))


def test_eval_prints_a_summary(
    run_dir: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["eval", str(run_dir), str(image_folder), "--workers", "0"], capsys)
    assert code == 0, err
    top1 = read_metrics(run_dir)[-1]["val_top1"]
    assert f"{top1:.2%}" in out and "worst classes" in out and "12 images" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/nope", "{data}"], "does not exist"),
        (["{run}", "{tmp}/nope"], "does not exist"),
        (["{run}", "{seven}"], "was not trained on ('class_006')"),
        (["{other}", "{data}", "--store", "{store}"], "was embedded by run"),
        (["{run}", "{data}", "-k", "0"], "k must be an integer >= 1, got 0"),
        (["{run}", "{data}", "--store", "{store}", "-k", "999"], "k=999 is more than the 108"),
        (["{run}", "{data}/train"], "has no val split"),
    ],
)
def test_bad_input_is_one_line(
    args: list[str],
    message: str,
    run_dir: Path,
    other_run: Path,
    store: Path,
    image_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seven = make_image_folder(tmp_path / "seven", n_classes=7, per_class=1, val=1)
    where = {
        "tmp": tmp_path,
        "data": image_folder,
        "run": run_dir,
        "other": other_run,
        "store": store,
        "seven": seven,
    }
    words = [a.format(**where) for a in args]
    code, out, err = run_cli(["eval", *words, "--workers", "0"], capsys)
    assert code == 1 and out == ""
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err


def test_option_defaults_are_the_library_defaults() -> None:
    library = inspect.signature(evaluate).parameters
    command: Any = typer.main.get_command(app)
    params = command.commands["eval"].params
    shared = {
        p.name: p.default for p in params if p.name in library and p.name not in ("run", "data")
    }
    assert set(shared) == {"split", "store", "k", "batch_size", "workers", "device"}
    assert shared == {name: library[name].default for name in shared}


def test_an_unknown_split_is_a_usage_error(
    run_dir: Path, image_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(["eval", str(run_dir), str(image_folder), "--split", "test"], capsys)
    assert code == 2 and out == "" and "'test' is not one of val, train, all" in err
    with pytest.raises(InputError, match="split must be one of val, train, all, got 'test'"):
        evaluate(run_dir, image_folder, split="test")
