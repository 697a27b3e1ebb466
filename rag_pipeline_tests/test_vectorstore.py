"""Embedded Qdrant through the real qdrant-client: what a reopened folder holds and costs."""

from __future__ import annotations

import random
import tracemalloc
import uuid
from pathlib import Path

import numpy as np

from rag_pipeline.core.vectorstore import VectorStore, open_client

DIM, POINTS = 384, 3000


def test_a_reopened_folder_holds_float32_vectors_answers_the_same_and_takes_new_points(tmp_path: Path):
    rnd = random.Random(7)
    ids = [str(uuid.UUID(int=rnd.getrandbits(128))) for _ in range(POINTS)]
    vectors = [[rnd.uniform(-1, 1) for _ in range(DIM)] for _ in ids]
    payloads = [{"document_id": f"doc{i // 3}", "version": "v1", "text": f"chunk {i}"} for i in range(POINTS)]
    queries = [[rnd.uniform(-1, 1) for _ in range(DIM)] for _ in range(5)]

    store = VectorStore(open_client(None, tmp_path / "q"), "c")
    store.ensure_collection(DIM)
    store.upsert(ids, vectors, payloads)
    before = [[(h.document_id, round(h.score, 5)) for h in store.search(q, k=5)] for q in queries]
    store.close()
    del vectors

    tracemalloc.start()
    store = VectorStore(open_client(None, tmp_path / "q"), "c")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stacked = store.client._client.collections["c"].vectors[""]
    assert stacked.dtype == np.float32 and stacked.shape == (POINTS, DIM)
    # qdrant-client's own loader holds every vector as Python floats first: 3,000 x 384 x 24
    # bytes of float objects alone, 27.6 MB (its traced peak: 49 MB). Compact: 18 MB, the
    # pickled rows and float32 arrays.
    assert peak < POINTS * DIM * 24, f"{peak / 2**20:.1f} MB traced while opening"
    assert [[(h.document_id, round(h.score, 5)) for h in store.search(q, k=5)] for q in queries] == before

    # Writes after the load land in the same float32 array and survive another reopen.
    extra = str(uuid.uuid4())
    store.upsert([extra], [queries[0]], [{"document_id": "new", "version": "v1", "text": "new"}])
    assert store.search(queries[0], k=1)[0].document_id == "new"
    store.close()
    store = VectorStore(open_client(None, tmp_path / "q"), "c")
    assert store.count() == POINTS + 1 and store.search(queries[0], k=1)[0].document_id == "new"
    store.close()


def test_search_leaves_out_excluded_documents_in_the_query_or_after_it(tmp_path: Path, monkeypatch):
    """A few tombstoned documents are a filter in the query; after a mass deletion, too many for
    a filter, the hits are filtered and the search asks for more until it has k."""
    from rag_pipeline.core import vectorstore

    rnd = random.Random(3)
    store = VectorStore(open_client(None, tmp_path / "q"), "c")
    store.ensure_collection(8)
    ids = [str(uuid.UUID(int=rnd.getrandbits(128))) for _ in range(60)]
    store.upsert(ids, [[rnd.uniform(-1, 1) for _ in range(8)] for _ in ids],
                 [{"document_id": f"doc{i % 20}", "text": str(i)} for i in range(60)])
    query = [rnd.uniform(-1, 1) for _ in range(8)]
    everything = [h.document_id for h in store.search(query, k=60)]
    gone = set(everything[:45])  # the best hits belong to deleted documents
    expected = [d for d in everything if d not in gone][:3]
    assert [h.document_id for h in store.search(query, k=3, exclude_documents=gone)] == expected
    monkeypatch.setattr(vectorstore, "EXCLUDE_IN_QUERY", 2)
    assert [h.document_id for h in store.search(query, k=3, exclude_documents=gone)] == expected
    assert store.search(query, k=3, exclude_documents={f"doc{i}" for i in range(20)}) == []
    store.close()
