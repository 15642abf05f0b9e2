"""lscindex.assignment: data-aware class -> target tables against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest

from lscindex import VectorSystem
from lscindex.assignment import (
    TableAssignment,
    fit_geometry,
    greedy_match,
    match_classes,
    nearest_candidates,
)
from lscindex.errors import ConfigError, InputError


def sequential_greedy(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The textbook greedy: pairs by (-score, class, vector), take when both are still free."""
    pairs = sorted(
        (-float(scores[c, j]), c, int(ids[c, j]))
        for c in range(ids.shape[0])
        for j in range(ids.shape[1])
        if np.isfinite(scores[c, j])
    )
    table = np.full(ids.shape[0], -1)
    used: set[int] = set()
    for _, c, v in pairs:
        if table[c] < 0 and v not in used:
            table[c] = v
            used.add(v)
    return table


def full_matrix_greedy(system: VectorSystem, means: np.ndarray) -> np.ndarray:
    """Greedy over every (class, vector) pair of the materialised system."""
    vectors = system.vectors(np.arange(system.n_vectors)).astype(np.float64)
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    sims = unit @ (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).T
    ids = np.broadcast_to(np.arange(system.n_vectors), sims.shape)
    return sequential_greedy(ids, sims)


@pytest.mark.parametrize("seed", range(200))
def test_greedy_match_equals_the_sequential_greedy_ties_included(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_classes, width, n_vectors = rng.integers(2, 30), rng.integers(1, 6), rng.integers(30, 60)
    ids = np.stack([rng.choice(n_vectors, width, replace=False) for _ in range(n_classes)])
    scores = rng.integers(0, 4, size=(n_classes, width)).astype(np.float32)  # many exact ties
    scores[rng.random(scores.shape) < 0.1] = -np.inf  # some missing candidates
    table, got = greedy_match(ids, scores)
    np.testing.assert_array_equal(table, sequential_greedy(ids, scores))
    matched = table >= 0
    chosen = scores[np.arange(n_classes), (ids == table[:, None]).argmax(1)]
    assert (got[matched] == chosen[matched]).all()


def test_greedy_match_when_class_0_runs_out_of_candidates_first() -> None:
    # class 0 has lost both its candidates by round 2; in round 3 class 2, bumped from vector 2
    # by class 4, proposes to vector 1, which nobody holds
    ninf = -np.inf
    ids = np.array([[0, 3], [0, 0], [2, 1], [3, 0], [5, 2], [5, 0]])
    scores = np.array(
        [[0.2, 0.1], [0.9, ninf], [0.5, 0.4], [0.7, ninf], [0.65, 0.6], [0.66, ninf]],
        dtype=np.float32,
    )
    table, got = greedy_match(ids, scores)
    np.testing.assert_array_equal(table, sequential_greedy(ids, scores))
    np.testing.assert_array_equal(table, [-1, 0, 1, 3, 2, 5])
    assert got[0] == -np.inf and got[2] == np.float32(0.4)


@pytest.mark.parametrize(("kind", "n_classes"), [("v21", 40), ("v11", 25), ("v22", 60)])
def test_full_enumeration_equals_the_full_matrix_greedy(kind: str, n_classes: int) -> None:
    system = VectorSystem.create(kind, n_classes)
    means = np.random.default_rng(1).standard_normal((n_classes, system.dim)).astype(np.float32)
    table = match_classes(system, means, candidates=system.n_vectors)
    np.testing.assert_array_equal(table, full_matrix_greedy(system, means))


@pytest.mark.parametrize(("kind", "n_classes"), [("v21", 640), ("v22", 400), ("v21s", 500)])
def test_match_is_one_to_one_deterministic_and_close_to_the_full_greedy(
    kind: str, n_classes: int
) -> None:
    system = VectorSystem.create(kind, n_classes)
    rng = np.random.default_rng(2)
    means = rng.standard_normal((n_classes, system.dim)).astype(np.float32)
    table = match_classes(system, means)
    assert table.shape == (n_classes,) and table.dtype == np.int64
    assert len(np.unique(table)) == n_classes
    assert table.min() >= 0 and table.max() < system.n_vectors
    np.testing.assert_array_equal(table, match_classes(system, means.copy()))
    # leftovers (classes whose nearest candidates all went to others) are matched among the
    # free vectors, not arbitrarily: the mean cosine is within 2% of the exhaustive greedy's
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)

    def mean_cos(t: np.ndarray) -> float:
        return float((unit * system.with_assignment(t).targets(np.arange(n_classes))).sum(1).mean())

    reference = full_matrix_greedy(system, means)
    first_round, _ = greedy_match(*nearest_candidates(system, means))
    assert (first_round < 0).any()  # so leftovers were matched in a later round
    assert mean_cos(table) >= 0.98 * mean_cos(reference)
    # and far better than the codec's random assignment
    assert mean_cos(table) > mean_cos(system.vector_ids(np.arange(n_classes))) + 0.3


def test_a_mean_source_may_give_its_blocks_in_any_order() -> None:
    """Training's source goes through shard samples in storage order, not class order: the
    table (leftovers included) is the one the means in memory give."""
    system = VectorSystem.create("v21", 2000)
    means = np.random.default_rng(5).standard_normal((2000, system.dim)).astype(np.float32)
    order = np.random.default_rng(6).permutation(2000)
    asked: list[int] = []

    def shuffled(class_ids: np.ndarray):  # type: ignore[no-untyped-def]
        asked.append(len(class_ids))
        mine = order[np.isin(order, class_ids)]  # class_ids in a scrambled order
        for start in range(0, len(mine), 7):
            block = np.sort(mine[start : start + 7])
            yield block, means[block]

    np.testing.assert_array_equal(match_classes(system, shuffled), match_classes(system, means))
    assert len(asked) == 2 and 0 < asked[1] < 2000  # every class, then the leftovers


@pytest.mark.parametrize("budget", [None, 1 << 16])
def test_means_that_barely_differ_end_on_the_lowest_free_vectors(
    budget: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An untrained network's class means: every class wants the same few vectors. The exact
    search stops once a round matches under 1% of the leftovers; past the leftovers' memory
    budget their images are not even embedded again. Either way the table is one-to-one."""
    from lscindex import assignment

    if budget is not None:
        monkeypatch.setattr(assignment, "_MAX_LEFTOVER_BYTES", budget)
    system = VectorSystem.create("v21", 20_000)
    rng = np.random.default_rng(3)
    base = rng.standard_normal(system.dim)
    means = (base + 1e-4 * rng.standard_normal((20_000, system.dim))).astype(np.float32)
    asked: list[int] = []

    def source(class_ids: np.ndarray):  # type: ignore[no-untyped-def]
        asked.append(len(class_ids))
        yield class_ids, means[class_ids]

    table = match_classes(system, source)
    assert len(np.unique(table)) == 20_000 and table.min() >= 0
    first, _ = greedy_match(*nearest_candidates(system, means))
    left = np.flatnonzero(first < 0)
    assert left.size > 19_000  # the first round matched a handful
    if budget is not None:  # 19k leftovers x 64 candidates x 12 B > 64 KiB: no second pass
        assert asked == [20_000]
        taken = np.sort(first[first >= 0])
        lowest = np.setdiff1d(np.arange(left.size + len(taken)), taken)[: left.size]
        np.testing.assert_array_equal(table[left], lowest)
    else:
        assert asked == [20_000, left.size]


def test_classes_without_samples_get_free_vectors() -> None:
    system = VectorSystem.create("v21", 200)
    means = np.random.default_rng(3).standard_normal((200, system.dim)).astype(np.float32)
    means[[5, 17, 150]] = 0.0
    table = match_classes(system, means)
    assert len(np.unique(table)) == 200


@pytest.mark.parametrize(
    ("kind", "n_classes", "dim"), [("v21", 2000, None), ("v21s", 900, None), ("v21", 300, 20)]
)
@pytest.mark.parametrize("k", [1, 5])
def test_decode_equals_brute_force_nearest_assigned_target(
    kind: str, n_classes: int, dim: int | None, k: int
) -> None:
    base = VectorSystem.create(kind, n_classes, dim=dim)
    rng = np.random.default_rng(4)
    system = base.with_assignment(
        match_classes(base, rng.standard_normal((n_classes, base.dim)).astype(np.float32))
    )
    e = rng.standard_normal((500, base.dim)).astype(np.float32)
    targets = system.targets(np.arange(n_classes)).astype(np.float64)
    sims = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float64) @ targets.T
    expected = -np.sort(-sims, axis=1)[:, :k]
    for method in ("analytic", "index"):
        out = system.decode(e, k=k, method=method)
        got = np.take_along_axis(sims, out.ids, axis=1)
        np.testing.assert_allclose(got, expected, atol=1e-5)  # exact ties may swap ids
        np.testing.assert_allclose(out.scores, expected, atol=1e-5)
    # novelty: the nearest vector of the whole system is owned by no class
    nearest, _ = system.nearest_vectors(e, k=1)
    np.testing.assert_array_equal(
        system.decode(e, k=1).novel, ~np.isin(nearest[:, 0], system.assignment_table)
    )


def test_table_round_trips_and_changes_the_fingerprint() -> None:
    codec = VectorSystem.create("v21", 100)
    table = np.random.default_rng(5).permutation(codec.n_vectors)[:100]
    data = codec.with_assignment(table)
    assert data.assignment == "data" and codec.assignment == "codec"
    np.testing.assert_array_equal(data.vector_ids(np.arange(100)), table)
    np.testing.assert_array_equal(data.class_ids(table), np.arange(100))
    unowned = np.setdiff1d(np.arange(codec.n_vectors), table)
    assert (data.class_ids(unowned) == -1).all()
    assert data.to_dict() == {**codec.to_dict(), "assignment": "data"}
    assert data.fingerprint != codec.fingerprint
    assert codec.with_assignment(np.roll(table, 1)).fingerprint != data.fingerprint
    assert VectorSystem.from_dict(data.to_dict(), table=table) == data
    assert data.with_assignment(None) == codec


def test_bad_tables_are_refused_by_name() -> None:
    system = VectorSystem.create("v21", 10)
    with pytest.raises(InputError, match="more than one class"):
        system.with_assignment([0, 1, 2, 3, 4, 5, 6, 7, 8, 8])
    with pytest.raises(InputError, match=r"vector index 12, outside the system's \[0, 12\)"):
        system.with_assignment([0, 1, 2, 3, 4, 5, 6, 7, 8, 12])
    with pytest.raises(InputError, match="has 3 entries but the system has n_classes=10"):
        system.with_assignment([0, 1, 2])
    with pytest.raises(InputError, match="1-D integer array"):
        TableAssignment(np.zeros((2, 2), dtype=np.int64), 10)
    with pytest.raises(ConfigError, match="no table was given"):
        VectorSystem.from_dict({**system.to_dict(), "assignment": "data"})
    with pytest.raises(ConfigError, match="takes no assignment table"):
        VectorSystem.from_dict(system.to_dict(), table=np.arange(10))
    with pytest.raises(InputError, match=r"must be \(n_classes, dim\)"):
        match_classes(system, np.zeros((3, system.dim)))
    with pytest.raises(InputError, match="NaN"):
        match_classes(system, np.full((10, system.dim), np.nan))


def test_rematching_with_a_margin_keeps_classes_on_their_current_vectors() -> None:
    system = VectorSystem.create("v21", 1000)
    rng = np.random.default_rng(6)
    before = rng.standard_normal((1000, system.dim)).astype(np.float32)
    current = match_classes(system, before)
    after = before + 0.5 * rng.standard_normal(before.shape).astype(np.float32)
    moved = [
        int((match_classes(system, after, current=current, margin=m) != current).sum())
        for m in (0.0, 0.05, 0.2, 10.0)
    ]
    assert moved[0] > moved[1] > moved[2] > 0 and moved[3] == 0, moved
    # margin 0: the current vector is just one more candidate, at its own cosine
    table = match_classes(system, after, current=current, margin=0.0)
    assert len(np.unique(table)) == 1000
    unit = after / np.linalg.norm(after, axis=1, keepdims=True)
    cos_new = (unit * system.with_assignment(table).targets(np.arange(1000))).sum(1)
    cos_old = (unit * system.with_assignment(current).targets(np.arange(1000))).sum(1)
    assert cos_new.mean() > cos_old.mean()


@pytest.mark.parametrize("centered", [False, True])
def test_fit_geometry_recovers_a_rotated_planted_assignment(centered: bool) -> None:
    """A geometry that *is* the targets of some table, rotated: the fit finds the table."""
    base = VectorSystem.create("v21", 60, dim=8, centered=centered)
    rng = np.random.default_rng(0)
    planted = rng.permutation(base.n_vectors)[:60]
    geometry = base.with_assignment(planted).targets(np.arange(60)).astype(np.float64)
    # a rotation close to the identity, so the alternation starts inside its basin
    skew = rng.standard_normal((8, 8))
    small, upper = np.linalg.qr(np.eye(8) + 0.05 * (skew - skew.T))
    small *= np.sign(np.diag(upper))  # QR's sign convention may flip axes
    table, found, fit = fit_geometry(
        base, (geometry @ small.T).astype(np.float32), centered=centered
    )
    np.testing.assert_array_equal(table, planted)
    assert fit == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(found @ small, np.eye(8), atol=1e-4)


def test_fit_geometry_puts_similar_classes_on_neighbouring_vectors() -> None:
    """Pairs of near-identical classes land on targets closer than a random table gives."""
    base = VectorSystem.create("v21", 200)
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((100, base.dim)).astype(np.float32)
    geometry = np.repeat(centres, 2, axis=0) + 0.05 * rng.standard_normal((200, base.dim))
    table, _, fit = fit_geometry(base, geometry.astype(np.float32))
    assert len(np.unique(table)) == 200
    targets = base.with_assignment(table).targets(np.arange(200))
    pair_cos = (targets[0::2] * targets[1::2]).sum(axis=1)
    codec = base.targets(np.arange(200))
    assert pair_cos.mean() > (codec[0::2] * codec[1::2]).sum(axis=1).mean() + 0.3
    assert fit > 0.4


def test_fit_geometry_anchored_keeps_the_current_table_of_its_own_geometry() -> None:
    base = VectorSystem.create("v21", 200)
    rng = np.random.default_rng(2)
    table, _, _ = fit_geometry(base, rng.standard_normal((200, base.dim)).astype(np.float32))
    geometry = base.with_assignment(table).targets(np.arange(200))
    again, _, fit = fit_geometry(base, geometry, current=table, margin=0.1)
    np.testing.assert_array_equal(again, table)
    assert fit == pytest.approx(1.0, abs=1e-5)


def test_fit_geometry_refuses_a_wrong_shape() -> None:
    base = VectorSystem.create("v21", 50)
    with pytest.raises(InputError, match=r"class geometry must be \(n_classes, dim\)"):
        fit_geometry(base, np.zeros((50, base.dim + 1), dtype=np.float32))
