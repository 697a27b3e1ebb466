"""Vectors already paid for, keyed by (embedding configuration, sha256 of the text).

Looked up before every endpoint call and written right after each successful one (its own
commit), so a run that fails half-way has still banked what it was charged for.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from rag_pipeline.core.batching import batched
from rag_pipeline.core.db import embedding_cache
from rag_pipeline.core.generations import dense_part
from rag_pipeline.core.records import insert_for, now

def _key(embedding: str) -> str:
    # Keyed by the dense configuration alone: turning keyword vectors on builds a new index
    # generation from the same dense vectors, without an embedding call.
    return dense_part(embedding)


def lookup(engine: Engine, embedding: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
    """text hash -> its float32 vector. Arrays, not lists: a list of 384 Python floats takes
    12 KB, the array 1.6 KB, and a run's write step holds every vector of its 1,000 documents."""
    embedding = _key(embedding)
    wanted = list(dict.fromkeys(hashes))
    found: dict[str, np.ndarray] = {}
    with engine.connect() as conn:
        for part in batched(wanted):
            rows = conn.execute(
                sa.select(embedding_cache.c.text_sha256, embedding_cache.c.vector).where(
                    (embedding_cache.c.embedding == embedding) & embedding_cache.c.text_sha256.in_(part)
                )
            )
            for digest, blob in rows:
                found[digest] = np.frombuffer(blob, dtype=np.float32)
    return found


def store(engine: Engine, embedding: str, vectors: Mapping[str, Sequence[float]]) -> None:
    if not vectors:
        return
    embedding = _key(embedding)
    ts = now()
    values = [
        {
            "embedding": embedding, "text_sha256": digest, "dimensions": len(vector),
            # float32: what Qdrant stores anyway, and half the bytes of the JSON floats.
            "vector": np.asarray(vector, dtype=np.float32).tobytes(), "created_at": ts,
        }
        for digest, vector in vectors.items()
    ]
    with engine.begin() as conn:
        # Two runs embedding the same new text at once both write it; the first one wins.
        conn.execute(insert_for(conn, embedding_cache).on_conflict_do_nothing(), values)

