"""Vector-system kinds: parsing a kind name, counting its vectors, n_min and mcs.

A vector system V^{ab}_n is the set of all distinct coordinate permutations of a base vector in R^n
with ``a`` entries +1, ``b`` entries -1 and the rest 0 (Gabdullin, arXiv 2512.07509). Kinds:

========  ============================  ================================  =======================
kind      base vector                   vectors in n dims                 mcs (closest pair cos)
========  ============================  ================================  =======================
``v11``   [1, 0, ..., 0, -1]  (``an``)  n(n-1)                            1/2
``v21``   [1, 1, 0, ..., 0, -1]         n(n-1)(n-2)/2                     2/3
``v22``   [1, 1, 0, ..., 0, -1, -1]     n(n-1)(n-2)(n-3)/4                3/4
``vab``   a ones, b minus-ones          C(n, a) C(n-a, b)                 (a+b-1)/(a+b)
``vabs``  V^{ab} and its negation       2 C(n, a) C(n-a, b)  (a != b)     same as ``vab``
========  ============================  ================================  =======================

Everything here depends on the kind and the dimension only, in exact integer arithmetic; the
class codec and the decoder are :class:`lscindex.systems.VectorSystem`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lscindex._checks import check_int
from lscindex.errors import ConfigError

__all__ = ["DEFAULT_KINDS", "KINDS_HELP", "KindSpec", "count_vectors", "n_min", "parse_kind"]

# The paper's three systems and the sign-symmetric V21: what `lscindex systems` compares.
DEFAULT_KINDS = ("v11", "v21", "v21s", "v22")
KINDS_HELP = (
    "v11 (alias an), v21, v22, any v<a><b> with digits a >= 1, b >= 0, "
    "and sign-symmetric v<a><b>s with a != b (e.g. v21s)"
)
_KIND_RE = re.compile(r"^v(\d)(\d)(s?)$")
_ALIASES = {"an": "v11"}


@dataclass(frozen=True)
class KindSpec:
    """A parsed system kind: ``a`` plus-ones, ``b`` minus-ones, ``symmetric`` adds the negation."""

    name: str
    a: int
    b: int
    symmetric: bool

    def count(self, dim: int) -> int:
        """Exact number of vectors in ``dim`` dimensions (Python int; 0 below ``a + b``)."""
        if dim < self.a + self.b:
            return 0
        half = math.comb(dim, self.a) * math.comb(dim - self.a, self.b)
        return 2 * half if self.symmetric else half

    def n_min(self, n_classes: int) -> int:
        """Smallest dimension holding ``n_classes`` vectors (bisection on exact counts)."""
        lo = self.a + self.b  # smallest dim with at least one vector
        if self.count(lo) >= n_classes:
            return lo
        hi = lo
        while self.count(hi) < n_classes:
            hi *= 2
        # invariant: count(lo) < n_classes <= count(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.count(mid) >= n_classes:
                hi = mid
            else:
                lo = mid
        return hi

    def mcs(self, dim: int) -> float:
        """Cosine of the closest pair of distinct vectors in ``dim`` dims (nan for one vector)."""
        pair = (self.a, self.b)
        dots = [_max_dot(dim, pair, pair, same=True)]
        if self.symmetric:
            dots.append(_max_dot(dim, pair, (self.b, self.a), same=False))
        found = [d for d in dots if d is not None]
        return max(found) / (self.a + self.b) if found else float("nan")


def parse_kind(kind: str) -> KindSpec:
    """Parse a kind name such as ``"v21"``, ``"an"`` or ``"v21s"``.

    Raises:
        ConfigError: unknown kind (the message lists the valid ones).

    Example:
        >>> parse_kind("an")
        KindSpec(name='v11', a=1, b=1, symmetric=False)
    """
    if not isinstance(kind, str):
        raise ConfigError(f"kind must be a string such as 'v21', got {kind!r}")
    canonical = _ALIASES.get(kind.strip().lower(), kind.strip().lower())
    match = _KIND_RE.match(canonical)
    if match is None:
        raise ConfigError(f"unknown vector system kind {kind!r}; use one of: {KINDS_HELP}")
    a, b, sym = int(match.group(1)), int(match.group(2)), bool(match.group(3))
    if a < 1:
        raise ConfigError(
            f"unknown vector system kind {kind!r}: it needs at least one +1 entry; "
            f"use v{b}{a} instead (the mirror image) or one of: {KINDS_HELP}"
        )
    if sym and a == b:
        raise ConfigError(
            f"kind {kind!r}: v{a}{b} is already sign-symmetric (V = -V); use 'v{a}{b}'"
        )
    return KindSpec(canonical, a, b, sym)


def count_vectors(kind: str, dim: int) -> int:
    """Exact number of vectors of ``kind`` in ``dim`` dimensions (Python int, any size).

    Example:
        >>> count_vectors("v21", 14)
        1092
    """
    return parse_kind(kind).count(check_int("dim", dim, minimum=1))


def n_min(kind: str, n_classes: int) -> int:
    """Smallest dimension whose system of ``kind`` holds ``n_classes`` vectors (exact integers).

    Raises:
        ConfigError: unknown kind or ``n_classes < 1``.

    Example:
        >>> n_min("v21", 1000), n_min("v21", 600_000), n_min("v11", 1000)
        (14, 108, 33)
    """
    spec = parse_kind(kind)
    return spec.n_min(check_int("n_classes", n_classes, minimum=1))


def _max_dot(dim: int, first: tuple[int, int], second: tuple[int, int], same: bool) -> int | None:
    """Largest dot product between v in V^{first} and w in V^{second} (distinct when ``same``).

    Enumerates the overlap counts (v+w+, v+w-, v-w+, v-w-); the remaining non-zeros of each
    vector must fit on the other's zeros. None when no such pair exists.
    """
    a, b = first
    a2, b2 = second
    best = None
    for pp in range(min(a, a2) + 1):
        for pm in range(min(a - pp, b2) + 1):
            for mp in range(min(b, a2 - pp) + 1):
                for mm in range(min(b - mp, b2 - pm) + 1):
                    free = (dim - a - b) - (a2 - pp - mp) - (b2 - pm - mm)
                    if free < 0 or (same and pp == a and mm == b):
                        continue
                    dot = pp + mm - pm - mp
                    best = dot if best is None else max(best, dot)
    return best
