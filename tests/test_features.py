"""lscindex.features: a store of a plain timm model's pooled features, and k-NN classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli, strict_json

from lscindex.embedding import build_store
from lscindex.errors import ConfigError, StoreError
from lscindex.features import FeatureSpec, create_spec
from lscindex.retrieval import KNN_VOTES, Retriever
from lscindex.store import open_store


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_resnet's weights, classifier included (left out when loaded), as safetensors."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    path = tmp_path_factory.mktemp("weights") / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def features_store(
    checkpoint: Path, image_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("features") / "feats.zarr"
    build_store(create_spec("test_resnet", checkpoint=checkpoint), [image_folder], out, workers=0)
    return out


def reference_features(checkpoint: Path, paths: list[str]) -> np.ndarray:
    """What the docs promise, computed with timm alone: L2-normalised pooled features under the
    model's own eval transform."""
    import timm
    import timm.data
    from PIL import Image
    from safetensors.torch import load_file

    model = timm.create_model("test_resnet", num_classes=0)
    model.load_state_dict(load_file(str(checkpoint)), strict=False)
    model.eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return torch.nn.functional.normalize(model(batch), dim=1).numpy()


def test_the_store_holds_normalised_pooled_features_and_the_spec(
    features_store: Path, checkpoint: Path, image_folder: Path
) -> None:
    store = open_store(features_store)
    spec = create_spec("test_resnet", checkpoint=checkpoint)
    header = store.header
    assert header.encoder == spec.to_dict() and header.system is None
    assert (header.run, header.run_fingerprint) == (spec.name, spec.fingerprint)
    assert header.run == "timm:test_resnet:test_resnet.safetensors"
    meta = store.metadata
    assert set(meta.column("pred").to_pylist()) == {-1}  # no classes to predict
    assert set(meta.column("label_name").to_pylist()) == {f"class_{c:03d}" for c in range(6)}
    assert meta.column("label").to_pylist() == [
        int(n[-3:]) for n in meta.column("label_name").to_pylist()
    ]
    paths = meta.column("path").to_pylist()[:10]
    expected = reference_features(checkpoint, paths)
    np.testing.assert_allclose(np.asarray(store.embeddings[:10], np.float32), expected, atol=2e-3)


def test_query_classifies_by_a_vote_of_the_nearest_stored_items(
    features_store: Path, image_folder: Path, tmp_path: Path
) -> None:
    r = Retriever.open(store=features_store, runs_root=tmp_path / "no-runs")
    assert r.chosen["run"] == "the store's plain timm encoder"
    assert r.score_meaning == "knn_vote" and r.run.class_names == []
    images = sorted(str(p) for p in (image_folder / "val").rglob("*.png"))[:5]
    store = open_store(features_store)
    emb = np.asarray(store.embeddings, np.float32)
    labels = np.asarray(store.metadata.column("label").to_pylist())
    for image, matches in zip(images, r.classify(images, k=3), strict=True):
        # Brute force: the KNN_VOTES most similar stored items, their labels counted.
        q = r.embed([image])[0]
        nearest = np.argsort(-(emb @ q), kind="stable")[:KNN_VOTES]
        counts = np.bincount(labels[nearest], minlength=6)
        assert matches[0].score == pytest.approx(counts.max() / KNN_VOTES)
        assert counts[matches[0].id] == counts.max()
        assert [m.score for m in matches] == sorted((m.score for m in matches), reverse=True)
    (result,) = r.query(images[:1], k=2)
    assert result.classes == r.classify(images[:1], k=2)[0] and len(result.neighbors) == 2


def test_embed_and_query_a_plain_model_through_the_cli(
    checkpoint: Path,
    image_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # no runs/ here: the store alone names its encoder
    out = tmp_path / "feats.zarr"
    args = ["embed", str(image_folder / "train"), "--model", "test_resnet"]
    code, printed, err = run_cli(
        [*args, "--checkpoint", str(checkpoint), "--out", str(out), "--workers", "0"], capsys
    )
    assert code == 0, err
    assert "embedded 96 images" in printed
    image = str(sorted((image_folder / "val").rglob("*.png"))[0])
    code, printed, err = run_cli(["query", image, "--store", str(out), "--json", "-k", "2"], capsys)
    assert code == 0, err
    doc = strict_json(printed)
    assert doc["run"]["head"] == "features" and doc["score_meaning"] == "knn_vote"
    assert doc["run"]["path"] == "timm:test_resnet:test_resnet.safetensors"
    assert doc["chosen"]["run"] == "the store's plain timm encoder"
    assert len(doc["results"][0]["classes"]) == 2 and len(doc["results"][0]["neighbors"]) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "name the encoder once"),
        (["--model", "test_resnet", "--run", "runs/x"], "name the encoder once"),
        (["--model", "test_resnet"], "needs its weights named once"),
        (["--model", "test_resnet", "--pretrained", "--checkpoint", "w.safetensors"], "once"),
        (["--model", "test_resnet", "--checkpoint", "w.pt"], "is not a .safetensors file"),
        (["--model", "resnet1888", "--pretrained"], "unknown timm model 'resnet1888'"),
    ],
)
def test_bad_encoder_options_are_one_line(
    extra: list[str],
    message: str,
    image_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "feats.zarr"
    code, _, err = run_cli(["embed", str(image_folder), "--out", str(out), *extra], capsys)
    assert code in (1, 2) and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_changed_or_foreign_checkpoint_is_refused(
    checkpoint: Path, features_store: Path, tmp_path: Path
) -> None:
    import shutil

    import timm
    from safetensors.torch import save_file

    moved = tmp_path / "weights.safetensors"
    shutil.copy(checkpoint, moved)
    store = tmp_path / "feats.zarr"
    shutil.copytree(features_store, store)
    spec = FeatureSpec.from_dict({**open_store(store).header.encoder, "checkpoint": str(moved)})
    from lscindex.features import open_features

    open_features(spec)  # the same bytes elsewhere: fine
    moved.write_bytes(moved.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(StoreError, match=r"is missing or changed since the store was embedded"):
        open_features(spec)
    other = tmp_path / "other.safetensors"
    save_file(timm.create_model("resnet10t", num_classes=0).state_dict(), str(other))
    with pytest.raises(ConfigError, match=r"does not fit timm's 'test_resnet'"):
        open_features(create_spec("test_resnet", checkpoint=other))


def test_a_served_plain_encoder_classifies_by_its_store(
    features_store: Path, image_folder: Path, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from lscindex.schema import query_document, to_json
    from lscindex.service import create_app

    r = Retriever.open(store=features_store, runs_root=tmp_path / "no-runs")
    image = sorted((image_folder / "val").rglob("*.png"))[0]
    with TestClient(create_app(r)) as client:
        answer = client.post(
            "/classify?k=2", files={"image": (str(image), image.read_bytes(), "image/png")}
        )
    assert answer.status_code == 200, answer.text
    doc = strict_json(answer.text)
    assert doc == strict_json(to_json(query_document(r, r.query([str(image)], k=2), k=2)))
    assert doc["score_meaning"] == "knn_vote" and len(doc["results"][0]["classes"]) == 2
