"""Embedded Qdrant loads its folder with vectors as float32 arrays instead of Python floats.

`QdrantClient(path=...)` reads every stored point into the process that opens the folder, and
qdrant-client's loader collects each vector as a list of Python floats (32 bytes a number)
before stacking them into a float64 array. Measured on 16,500 points of 384 dimensions: the
process grew by 421 MB and took 1.06 s to open the folder; with each vector turned into a
float32 array as it is read, 176 MB and 0.79 s, with the same search results. Every run
process that writes opens the folder, so this is most of a run's memory at a few thousand
documents. A Qdrant server (QDRANT_URL) keeps its points out of our processes altogether.

Only the points handed to the loader change; what is stored on disk does not.

Keyword (sparse) search: qdrant-client's local mode scores a sparse query against every point
with a pure-Python merge of the two sorted index lists, asserting both sorted first, for every
point: ~1 s per query at 2,000 chunks, twice per hybrid query. `sparse_scores` gives the same
scores (float32 dot product over the shared indices; -inf, or 0 for the queries that ask, where
nothing is shared) by finding each of the query's few terms in the point's sorted indices by
bisection.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Iterable

import numpy as np

_installed = False


def _compact(vector: Any) -> Any:
    if isinstance(vector, list) and vector and isinstance(vector[0], float):
        return np.asarray(vector, dtype=np.float32)
    return vector


def sparse_scores(query: Any, vectors: list, empty_is_zero: bool = False) -> np.ndarray:
    """What qdrant-client's `calculate_distance_sparse` returns, without its per-point merge:
    each of the query's few terms is found by bisection in the point's sorted indices (C code),
    and nothing is kept between queries (a per-point dict was faster still, but cost ~5 KB a
    point: 500 MB at 100,000 chunks)."""
    terms = list(zip(query.indices, query.values))
    missing = np.float32(0.0) if empty_is_zero else np.float32("-inf")
    scores = np.empty(len(vectors), dtype=np.float32)
    for n, vector in enumerate(vectors):
        indices = vector.indices
        size = len(indices)
        total, shared = 0.0, False
        for index, value in terms:
            at = bisect_left(indices, index)
            if at < size and indices[at] == index:
                total += value * vector.values[at]
                shared = True
        scores[n] = total if shared else missing
    return scores


def install() -> bool:
    """Wrap the local loader once; False if this qdrant-client has no such loader."""
    global _installed
    if _installed:
        return True
    try:
        from qdrant_client.local import local_collection, persistence
    except ImportError:
        return False
    load = getattr(persistence.CollectionPersistence, "load", None)
    # The loader names an unnamed vector "" itself; a dict of named vectors is what it expects.
    default_name = getattr(local_collection, "DEFAULT_VECTOR_NAME", None)
    if load is None or default_name is None:
        return False

    def compact_load(self: Any) -> Iterable[Any]:
        for point in load(self):
            vector = point.vector
            if isinstance(vector, list):
                point.vector = {default_name: _compact(vector)}
            elif isinstance(vector, dict):
                point.vector = {name: _compact(v) for name, v in vector.items()}
            yield point

    persistence.CollectionPersistence.load = compact_load
    if hasattr(local_collection, "calculate_distance_sparse"):
        local_collection.calculate_distance_sparse = sparse_scores
    _installed = True
    return True
