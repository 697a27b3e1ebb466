"""The embedded vector store (Qdrant Edge) through VectorStore: what a reopened folder holds."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

from rag_pipeline.core.vectorstore import VectorStore, open_client

DIM, POINTS = 384, 1000


def test_a_reopened_folder_answers_the_same_and_takes_new_points(tmp_path: Path):
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

    store = VectorStore(open_client(None, tmp_path / "q"), "c")
    assert store.count() == POINTS
    assert [[(h.document_id, round(h.score, 5)) for h in store.search(q, k=5)] for q in queries] == before

    # Writes after the reopen survive another one.
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


def test_embedded_keyword_search_ranks_by_bm25_with_idf(tmp_path: Path):
    from rag_pipeline.core import sparse

    store = VectorStore(open_client(None, tmp_path / "q"), "c", keyword=True)
    store.ensure_collection(4)
    texts = ["common words here and ERR-4012", "common words here", "common words there", "rare zeppelin common"]
    ids = [str(uuid.UUID(int=i + 1)) for i in range(len(texts))]
    store.upsert(ids, [[1.0, 0.0, 0.0, float(i)] for i in range(len(texts))],
                 [{"document_id": f"d{i}", "text": t, "version": "v"} for i, t in enumerate(texts)])
    hits = store.query(dense=None, keyword=sparse.query_vector("zeppelin common"), k=4, mode="keyword")
    # "zeppelin" is in one chunk: its IDF outweighs "common", which every chunk has.
    assert hits[0].document_id == "d3" and len(hits) == 4
    assert store.query(dense=None, keyword=sparse.query_vector("err-4012"), k=4, mode="keyword")[0].document_id == "d0"
    assert store.query(dense=None, keyword=sparse.query_vector("nothing matches"), k=4, mode="keyword") == []
    store.close()


def test_points_of_more_documents_than_a_statement_slice_finds_every_point(tmp_path: Path):
    """An audit confirming a large set of problem documents asks for their points in bounded
    filters (`batched` slices), and every document's points come back."""
    import uuid

    from rag_pipeline.core.batching import BATCH

    store = VectorStore(open_client(None, tmp_path / "q"), "c")
    store.ensure_collection(4)
    docs = [f"doc{i:05d}" for i in range(BATCH + 300)]
    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, d)) for d in docs]
    store.upsert(ids, [[1.0, 0.0, 0.0, float(i)] for i in range(len(docs))],
                 [{"document_id": d, "version": "v1", "text": d} for d in docs])
    asked: list[int] = []
    scroll = store.client.scroll

    def counted_scroll(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - the real scroll, its filter's size noted
        asked.append(len(kwargs["scroll_filter"].must[0].match.any))
        return scroll(*args, **kwargs)

    store.client.scroll = counted_scroll
    found = store.points_of(docs + ["absent"])
    assert found["absent"] == {} and all(found[d] == {p: "v1"} for d, p in zip(docs, ids))
    assert len(asked) >= 2 and max(asked) <= BATCH
    store.client.close()
