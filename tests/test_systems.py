"""lscindex.systems: counts, n_min, mcs, the codec and decoding, against brute-force references."""

from __future__ import annotations

import itertools
import json
import math
import tracemalloc

import numpy as np
import pytest
from helpers import assert_topk_exact

import lscindex
from lscindex import (
    CapacityError,
    ConfigError,
    InputError,
    LscIndexError,
    TargetIndex,
    VectorSystem,
    count_vectors,
    n_min,
    parse_kind,
)

KINDS = ["v11", "an", "v21", "v22", "v31", "v32", "v10", "v21s", "v31s", "v10s", "v32s"]


def enumerate_system(kind: str, n: int) -> np.ndarray:
    """Every distinct permutation of the base vector (and its negation for *s kinds)."""
    spec = parse_kind(kind)
    base = [1] * spec.a + [-1] * spec.b + [0] * (n - spec.a - spec.b)
    vectors = set(itertools.permutations(base))
    if spec.symmetric:
        vectors |= {tuple(-x for x in v) for v in vectors}
    return np.array(sorted(vectors), dtype=np.float64)


def brute_mcs(vectors: np.ndarray) -> float:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -np.inf)
    return float(cos.max())


# -- sizes ----------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_counts_and_mcs_match_enumeration(kind: str) -> None:
    spec = parse_kind(kind)
    for n in range(spec.a + spec.b, 8):
        vectors = enumerate_system(kind, n)
        assert count_vectors(kind, n) == len(vectors)
        if len(vectors) > 1:
            system = VectorSystem.create(kind, 1, dim=n)
            assert system.mcs == pytest.approx(brute_mcs(vectors)), n
            assert system.n_vectors == len(vectors)


def test_mcs_matches_paper_table() -> None:
    assert VectorSystem.create("v11", 1000).mcs == pytest.approx(1 / 2)
    assert VectorSystem.create("v21", 1000).mcs == pytest.approx(2 / 3)
    assert VectorSystem.create("v22", 1000).mcs == pytest.approx(3 / 4)
    assert VectorSystem.create("v21s", 1000).mcs == pytest.approx(2 / 3)


def test_mcs_of_a_single_vector_system_is_nan() -> None:
    assert VectorSystem.create("v21", 1, dim=3).mcs == pytest.approx(-1 / 3)  # 3 vectors at n = 3
    assert math.isnan(VectorSystem.create("v10", 1, dim=1).mcs)


# -- construction and serialisation -------------------------------------------------
def test_create_defaults_and_attributes() -> None:
    s = VectorSystem.create("an", 1000, seed=3)
    assert (s.kind, s.dim, s.n_classes, s.seed, s.n_vectors) == ("v11", 33, 1000, 3, 33 * 32)
    assert isinstance(s.n_vectors, int)
    assert isinstance(s.mcs, float)


def test_to_dict_roundtrips_through_json() -> None:
    s = VectorSystem.create("v21s", 5000, dim=25, seed=9)
    again = VectorSystem.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s and hash(again) == hash(s) and again.fingerprint == s.fingerprint
    assert VectorSystem.create("v21s", 5000, dim=25, seed=8).fingerprint != s.fingerprint


def test_from_dict_rejects_unknown_and_missing_keys() -> None:
    with pytest.raises(ConfigError, match="'colour'"):
        VectorSystem.from_dict({"kind": "v21", "n_classes": 10, "colour": 1})
    with pytest.raises(ConfigError, match="'n_classes'"):
        VectorSystem.from_dict({"kind": "v21"})
    with pytest.raises(ConfigError, match="codec version 2"):
        VectorSystem.from_dict({"kind": "v21", "n_classes": 10, "codec": 2})


# Pinned so that stored runs keep decoding to the same classes in every later version.
GOLDEN = [
    (("v21", 1000, None, 0), 14, [477, 30, 412, 786], [3, 9], [11], "7ca3cb03aa05d1c3"),
    (("v11", 1000, None, 7), 33, [240, 498, 402, 887], [7], [17], "b8fdff7ca88a86b0"),
    (("v21s", 5000, None, 1), 19, [4039, 1509, 2670, 1699], [11], [0, 12], "49c3f1102be0cd55"),
    (("v22", 100, 12, 3), 12, [1341, 1149, 1414, 1541], [1, 8], [0, 11], "d2911b255b881815"),
    (
        ("v21", 600_000, None, 0),
        108,
        [432112, 535137, 495549, 173621],
        [71, 90],
        [56],
        "b77463ae436944b5",
    ),
]


@pytest.mark.parametrize(("args", "dim", "vector_ids", "plus", "minus", "fingerprint"), GOLDEN)
def test_golden_values(args, dim, vector_ids, plus, minus, fingerprint) -> None:  # type: ignore[no-untyped-def]
    kind, n_classes, explicit_dim, seed = args
    s = VectorSystem.create(kind, n_classes, dim=explicit_dim, seed=seed)
    assert s.dim == dim
    assert s.vector_ids([0, 1, 2, n_classes - 1]).tolist() == vector_ids
    t = s.targets([0])[0]
    assert np.flatnonzero(t > 0).tolist() == plus
    assert np.flatnonzero(t < 0).tolist() == minus
    assert s.fingerprint == fingerprint


# -- codec ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["v11", "v21", "v22", "v21s", "v32s", "v10"])
def test_codec_is_a_bijection_onto_distinct_targets(kind: str) -> None:
    s = VectorSystem.create(kind, 300, seed=5)
    vids = s.vector_ids(np.arange(300))
    assert len(set(vids.tolist())) == 300
    np.testing.assert_array_equal(s.class_ids(vids), np.arange(300))
    every = s.class_ids(np.arange(s.n_vectors))
    assert sorted(every[every >= 0].tolist()) == list(range(300))
    assert (every == -1).sum() == s.n_vectors - 300
    targets = s.targets(np.arange(300))
    assert targets.dtype == np.float32 and targets.shape == (300, s.dim)
    np.testing.assert_allclose(np.linalg.norm(targets, axis=1), 1.0, rtol=1e-6)
    assert len({row.tobytes() for row in targets}) == 300
    # every target is a member of the system
    members = {tuple(v) for v in enumerate_system(kind, s.dim).astype(int)} if s.dim <= 8 else None
    raw = np.rint(targets * math.sqrt(parse_kind(kind).a + parse_kind(kind).b)).astype(int)
    if members is not None:
        assert all(tuple(v) in members for v in raw)
    spec = parse_kind(kind)
    assert ((raw == 1).sum(1) + (raw == -1).sum(1) == spec.a + spec.b).all()


def test_vectors_enumerates_the_whole_system() -> None:
    s = VectorSystem.create("v21s", 40, dim=6)
    got = {tuple(v) for v in s.vectors(np.arange(s.n_vectors)).tolist()}
    assert got == {tuple(v) for v in enumerate_system("v21s", 6).astype(int).tolist()}


def test_seed_spreads_classes_over_the_system() -> None:
    s = VectorSystem.create("v21", 1000, dim=30, seed=0)
    vids = s.vector_ids(np.arange(1000))
    # not the lexicographically first vectors: spread over the whole index range
    assert vids.max() > 0.9 * s.n_vectors and vids.min() < 0.1 * s.n_vectors


def test_targets_accept_torch_and_lists() -> None:
    torch = pytest.importorskip("torch")
    s = VectorSystem.create("v21", 100)
    np.testing.assert_array_equal(s.targets(torch.tensor([3, 4])), s.targets([3, 4]))


# -- decoding ----------------------------------------------------------------
def brute_scores(system: VectorSystem, e: np.ndarray) -> np.ndarray:
    targets = system.targets(np.arange(system.n_classes)).astype(np.float64)
    e64 = e.astype(np.float64)
    norms = np.linalg.norm(e64, axis=1, keepdims=True)
    return (e64 / np.where(norms > 0, norms, 1.0)) @ targets.T


@pytest.mark.parametrize(
    ("kind", "n_classes", "dim"),
    [
        ("v21", 1000, None),
        ("v11", 500, None),
        ("v22", 2000, None),
        ("v21s", 3000, None),
        ("v31", 400, None),
        ("v21", 4, None),
        ("v10s", 30, None),
        ("v21", 200, 20),
    ],
)
@pytest.mark.parametrize("k", [1, 5, 12])
def test_decode_equals_brute_force_ranking(
    kind: str, n_classes: int, dim: int | None, k: int
) -> None:
    s = VectorSystem.create(kind, n_classes, dim=dim, seed=1)
    k = min(k, n_classes)
    rng = np.random.default_rng(k)
    random = rng.standard_normal((400, s.dim)).astype(np.float32)
    near = s.targets(rng.integers(0, n_classes, 400)) + 0.05 * rng.standard_normal((400, s.dim))
    exact = s.targets(rng.integers(0, n_classes, 50))  # many exact ties below the top-1
    for e in (random, near.astype(np.float32), exact):
        out = s.decode(e, k=k, method="analytic")
        assert out.ids.dtype == np.int64 and out.scores.dtype == np.float32
        assert out.ids.shape == out.scores.shape == (len(e), k) and out.novel.shape == (len(e),)
        assert_topk_exact(out.ids, out.scores, brute_scores(s, e))


def test_decode_of_a_target_is_its_class_with_cosine_one() -> None:
    s = VectorSystem.create("v21", 1000, seed=2)
    out = s.decode(s.targets(np.arange(1000)), k=2)
    np.testing.assert_array_equal(out.ids[:, 0], np.arange(1000))
    np.testing.assert_allclose(out.scores[:, 0], 1.0, rtol=1e-6)
    assert (out.scores[:, 1] <= 2 / 3 + 1e-6).all()
    assert not out.novel.any()


def test_exact_ties_in_the_input_are_handled() -> None:
    s = VectorSystem.create("v21", 100)
    e = np.ones((3, s.dim), dtype=np.float32)  # every vector scores the same
    e[1, :] = 0.0  # zero vector: every cosine is 0
    e[2, :4] = 2.0
    out = s.decode(e, k=5)
    assert_topk_exact(out.ids, out.scores, brute_scores(s, e))


def test_novelty_flags_embeddings_nearest_to_unowned_vectors() -> None:
    s = VectorSystem.create("v21", 1000)
    owner = s.class_ids(np.arange(s.n_vectors))
    free = np.flatnonzero(owner < 0)[:20]
    e = s.vectors(free).astype(np.float32)
    out = s.decode(e, k=3)
    assert out.novel.all()
    assert (out.scores[:, 0] < 1 - 1e-6).all()  # the unowned vector itself is never returned
    assert_topk_exact(out.ids, out.scores, brute_scores(s, e))
    assert not s.decode(s.targets([1, 2]), k=1).novel.any()
    np.testing.assert_array_equal(s.is_novel(e), True)


@pytest.mark.parametrize("k", [1, 5])
def test_analytic_path_equals_faiss_path(k: int) -> None:
    s = VectorSystem.create("v21", 5000, seed=4)
    rng = np.random.default_rng(0)
    e = np.concatenate(
        [
            rng.standard_normal((2000, s.dim)),
            s.targets(rng.integers(0, 5000, 2000)) + 0.1 * rng.standard_normal((2000, s.dim)),
        ]
    ).astype(np.float32)
    fast = s.decode(e, k=k, method="analytic")
    slow = s.decode(e, k=k, method="index")
    np.testing.assert_allclose(fast.scores, slow.scores, atol=1e-6)
    np.testing.assert_array_equal(fast.novel, slow.novel)
    # ids must agree wherever a score is more than 1e-6 from its neighbours, including the
    # (k+1)-th best, which a tie at rank k would otherwise hide.
    extended = s.decode(e, k=k + 1, method="index").scores.astype(np.float64)
    before = np.concatenate([np.full((len(e), 1), np.inf), extended[:, :-1]], axis=1)
    after = np.concatenate([extended[:, 1:], np.full((len(e), 1), -np.inf)], axis=1)
    separated = (np.minimum(before - extended, extended - after) > 1e-6)[:, :k]
    assert separated.mean() > 0.9
    np.testing.assert_array_equal(fast.ids[separated], slow.ids[separated])


def test_far_above_n_min_uses_the_target_index() -> None:
    s = VectorSystem.create("v21", 300, dim=64)
    assert not s.analytic_is_fast(5)
    assert VectorSystem.create("v21", 600_000).analytic_is_fast(5)
    e = np.random.default_rng(1).standard_normal((200, 64)).astype(np.float32)
    auto = s.decode(e, k=5)
    assert isinstance(s.target_index(), TargetIndex)
    assert_topk_exact(auto.ids, auto.scores, brute_scores(s, e))
    forced = s.decode(e, k=5, method="analytic")  # still exact, just slower
    assert_topk_exact(forced.ids, forced.scores, brute_scores(s, e))


def test_threads_give_the_same_answer() -> None:
    s = VectorSystem.create("v21", 50_000)
    e = np.random.default_rng(3).standard_normal((9000, s.dim)).astype(np.float32)
    one, two = s.decode(e, k=5, threads=1), s.decode(e, k=5, threads=3)
    np.testing.assert_array_equal(one.ids, two.ids)
    np.testing.assert_array_equal(one.scores, two.scores)


def test_decode_accepts_torch_any_float_dtype_and_unnormalised_input() -> None:
    torch = pytest.importorskip("torch")
    s = VectorSystem.create("v21", 1000)
    t = torch.from_numpy(s.targets([5, 6])) * 7.5
    for x in (t, t.half(), t.double(), t.to(torch.bfloat16), t.numpy().astype(np.float16)):
        assert s.decode(x, k=1).ids[:, 0].tolist() == [5, 6]
    if torch.cuda.is_available():
        assert s.decode(t.cuda(), k=1).ids[:, 0].tolist() == [5, 6]


def test_decode_empty_batch() -> None:
    s = VectorSystem.create("v21", 1000)
    out = s.decode(np.zeros((0, s.dim), np.float32), k=3)
    assert out.ids.shape == (0, 3) and out.novel.shape == (0,)


def test_analytic_path_never_materialises_the_targets() -> None:
    s = VectorSystem.create("v21", 600_000)
    e = np.random.default_rng(0).standard_normal((1000, s.dim)).astype(np.float32)
    s.decode(e[:10], k=5)  # warm caches
    tracemalloc.start()
    s.decode(e, k=5, threads=1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    matrix = s.n_classes * s.dim * 4
    assert peak < matrix / 50, (peak, matrix)
    assert not s._index_cache  # the FAISS fallback was never built


def test_decode_at_600k_classes_matches_brute_force() -> None:
    s = VectorSystem.create("v21", 600_000, seed=0)
    rng = np.random.default_rng(7)
    e = np.concatenate(
        [
            rng.standard_normal((100, s.dim)),
            s.targets(rng.integers(0, 600_000, 100)) + 0.05 * rng.standard_normal((100, s.dim)),
        ]
    ).astype(np.float32)
    out = s.decode(e, k=5)
    assert_topk_exact(out.ids, out.scores, brute_scores(s, e))


# -- bad input ----------------------------------------------------------------
def test_bad_configs_raise_clear_errors() -> None:
    with pytest.raises(ConfigError, match=r"n_classes must be >= 1, got 0"):
        VectorSystem.create("v21", 0)
    with pytest.raises(CapacityError, match=r"dim 10 holds 360 vectors.*use dim >= 14"):
        VectorSystem.create("v21", 1000, dim=10)
    with pytest.raises(ConfigError, match=r"unknown vector system kind 'v2'.*v21s"):
        VectorSystem.create("v2", 10)
    with pytest.raises(ConfigError, match="mirror"):
        parse_kind("v01")
    with pytest.raises(ConfigError, match="already sign-symmetric"):
        parse_kind("v22s")
    with pytest.raises(ConfigError, match="more than the 2\\*\\*62"):
        VectorSystem.create("v99", 10, dim=200)
    with pytest.raises(ConfigError, match="seed"):
        VectorSystem.create("v21", 10, seed=-1)
    with pytest.raises(ConfigError, match="n_classes must be an integer"):
        VectorSystem.create("v21", 10.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        n_min("v21", 0)


def test_errors_are_lscindex_and_builtin_errors() -> None:
    with pytest.raises(LscIndexError):
        VectorSystem.create("nope", 10)
    with pytest.raises(ValueError):
        VectorSystem.create("nope", 10)


@pytest.mark.parametrize(
    ("embeddings", "match"),
    [
        (np.zeros((2, 13), np.float32), "dim 13 but v21 for 1,000 classes has dim 14"),
        (np.zeros(14, np.float32), r"2-D.*x\[None\]"),
        (np.zeros((1, 2, 14), np.float32), "2-D"),
        (np.array([[np.nan] * 14]), "row 0 contains NaN or inf"),
        (np.array([[1.0] * 13 + [np.inf]]), "NaN or inf"),
        (np.array([["a"] * 14]), "float array"),
    ],
)
def test_bad_embeddings(embeddings: np.ndarray, match: str) -> None:
    s = VectorSystem.create("v21", 1000)
    with pytest.raises(InputError, match=match):
        s.decode(embeddings)


@pytest.mark.parametrize("k", [0, -1, 1001, 2.0, True])
def test_bad_k(k: object) -> None:
    s = VectorSystem.create("v21", 1000)
    with pytest.raises(InputError, match=r"k must be an integer in \[1, n_classes=1,000\]"):
        s.decode(np.ones((1, 14), np.float32), k=k)  # type: ignore[arg-type]


@pytest.mark.parametrize("ids", [[1000], [-1], [0.5]])
def test_bad_class_ids(ids: list[float]) -> None:
    s = VectorSystem.create("v21", 1000)
    with pytest.raises(InputError, match=r"class id|integers"):
        s.targets(ids)


def test_public_api_is_exported() -> None:
    for name in ("VectorSystem", "TargetIndex", "n_min", "Decoded", "LscIndexError"):
        assert hasattr(lscindex, name)


def test_rows_needing_long_enumerations_fall_back_to_faiss(monkeypatch: pytest.MonkeyPatch) -> None:
    from lscindex import systems

    monkeypatch.setattr(systems, "_MAX_CANDIDATES", 8)
    s = VectorSystem.create("v21", 300, dim=30)
    e = np.random.default_rng(2).standard_normal((300, 30)).astype(np.float32)
    out = s.decode(e, k=4, method="analytic")
    assert s._index_cache  # the FAISS index finished the rows the enumeration could not
    assert_topk_exact(out.ids, out.scores, brute_scores(s, e))
    np.testing.assert_array_equal(out.novel, s.is_novel(e))


def test_nearest_vectors_ranks_the_whole_system() -> None:
    s = VectorSystem.create("v21s", 50, dim=7)
    every = s.vectors(np.arange(s.n_vectors)).astype(np.float64)
    e = np.random.default_rng(5).standard_normal((100, 7)).astype(np.float32)
    vids, cos = s.nearest_vectors(e, k=6)
    unit = every / np.linalg.norm(every, axis=1, keepdims=True)
    e64 = e.astype(np.float64) / np.linalg.norm(e, axis=1, keepdims=True)
    assert_topk_exact(vids, cos, e64 @ unit.T)


# -- centred targets ------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_centred_targets_are_zero_mean_unit_and_decode_the_same_classes(kind: str) -> None:
    spec = parse_kind(kind)
    n_classes = min(300, count_vectors(kind, spec.n_min(300)))
    plain = VectorSystem.create(kind, n_classes, seed=3)
    centred = VectorSystem.create(kind, n_classes, seed=3, centered=True)
    every = centred.vectors(np.arange(centred.n_vectors)).astype(np.float64)
    shift = every.mean(axis=0)  # the lattice mean, by brute force
    expected = (plain.vectors(plain.vector_ids(np.arange(n_classes))) - shift).astype(np.float64)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    targets = centred.targets(np.arange(n_classes))
    np.testing.assert_allclose(targets, expected, atol=1e-6)
    rng = np.random.default_rng(7)
    e = rng.standard_normal((500, centred.dim)).astype(np.float32)
    k = min(5, n_classes)
    for method in ("analytic", "index"):
        out = centred.decode(e, k=k, method=method)
        assert_topk_exact(out.ids, out.scores, brute_scores(centred, e))
        # same classes as the uncentred system, ties aside
        before = plain.decode(e, k=k, method=method)
        sims = brute_scores(centred, e)
        np.testing.assert_allclose(
            np.take_along_axis(sims, before.ids, axis=1), out.scores, atol=1e-5
        )
    np.testing.assert_array_equal(centred.decode(e).novel, plain.decode(e).novel)


def test_centred_spec_round_trips_and_old_specs_keep_their_fingerprint() -> None:
    plain = VectorSystem.create("v21", 1000)
    centred = VectorSystem.create("v21", 1000, centered=True)
    assert "centered" not in plain.to_dict()
    assert centred.to_dict()["centered"] is True
    assert VectorSystem.from_dict(json.loads(json.dumps(centred.to_dict()))) == centred
    assert centred.fingerprint != plain.fingerprint
    assert VectorSystem.from_dict(plain.to_dict()).fingerprint == plain.fingerprint
    table = np.arange(1000)
    assert centred.with_assignment(table).centered
    with pytest.raises(ConfigError, match="centered must be true or false"):
        VectorSystem.from_dict({**centred.to_dict(), "centered": "yes"})
