"""FAISS index over the assigned targets of a vector system: the decode path far above n_min.

:meth:`lscindex.systems.VectorSystem.decode` switches to it when enumerating the system is slower
than a search (few vectors owned by classes), and finishes rows with it that sit among very many
unowned vectors. FAISS is imported when the first index is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from lscindex.errors import ConfigError
from lscindex.systems import Decoded

if TYPE_CHECKING:
    import faiss

    from lscindex.systems import VectorSystem

__all__ = ["TargetIndex"]


class TargetIndex:
    """FAISS index over the materialised targets of a system's classes (row i is class i).

    ``index_type="flat"`` (``IndexFlatIP``) is exact and gives the same top-k as
    :meth:`VectorSystem.decode` (ties aside); ``"hnsw"`` (``IndexHNSWFlat``, inner product) is
    approximate. It holds an (n_classes, dim) float32 matrix: the path for dims far above n_min.

    Example:
        >>> system = VectorSystem.create("v21", 1000, dim=40)
        >>> index = TargetIndex(system)
        >>> index.search(system.targets([3]), k=2).ids[0, 0]
        np.int64(3)
    """

    def __init__(
        self,
        system: VectorSystem,
        *,
        index_type: str = "flat",
        hnsw_m: int = 32,
        ef_search: int = 128,
        chunk_size: int = 65536,
    ) -> None:
        import faiss

        self.system = system
        self.index_type = index_type
        if index_type == "flat":
            self.index: faiss.Index = faiss.IndexFlatIP(system.dim)
        elif index_type == "hnsw":
            index = faiss.IndexHNSWFlat(system.dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = ef_search
            self.index = index
        else:
            raise ConfigError(f"index_type must be 'flat' or 'hnsw', got {index_type!r}")
        for start in range(0, system.n_classes, chunk_size):
            stop = min(start + chunk_size, system.n_classes)
            self.index.add(system.targets(np.arange(start, stop)))

    def search(self, embeddings: Any, k: int = 1) -> Decoded:
        """Same contract as :meth:`VectorSystem.decode`, answered by FAISS."""
        system = self.system
        e = system._check_embeddings(embeddings)
        k = system._check_k(k)
        norms = np.linalg.norm(e, axis=1, keepdims=True)
        query = np.ascontiguousarray(e / np.maximum(norms, np.finfo(np.float32).tiny))
        if self.index_type == "hnsw":
            self.index.hnsw.efSearch = max(self.index.hnsw.efSearch, k)  # type: ignore[attr-defined]
        scores, ids = self.index.search(query, k)
        return Decoded(
            ids=ids.astype(np.int64),
            scores=scores.astype(np.float32),
            novel=system.is_novel(e),
        )
