"""Embedded Qdrant loads its folder with vectors as float32 arrays instead of Python floats.

`QdrantClient(path=...)` reads every stored point into the process that opens the folder, and
qdrant-client's loader collects each vector as a list of Python floats (32 bytes a number)
before stacking them into a float64 array. Measured on 16,500 points of 384 dimensions: the
process grew by 421 MB and took 1.06 s to open the folder; with each vector turned into a
float32 array as it is read, 176 MB and 0.79 s, with the same search results. Every run
process that writes opens the folder, so this is most of a run's memory at a few thousand
documents. A Qdrant server (QDRANT_URL) keeps its points out of our processes altogether.

Only the points handed to the loader change; what is stored on disk does not.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

_installed = False


def _compact(vector: Any) -> Any:
    if isinstance(vector, list) and vector and isinstance(vector[0], float):
        return np.asarray(vector, dtype=np.float32)
    return vector


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
    _installed = True
    return True
