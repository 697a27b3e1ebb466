"""Faults that are nobody's document's fault make documents wait; faults in a document's own
content park that document with the reason."""

from __future__ import annotations

import time

import numpy as np
import openai
import pytest

from rag_pipeline.core import pipeline, records
from rag_pipeline.core.embedding import EndpointError, OpenAIEmbedder
from rag_pipeline.devtools.embedding_server import EmbeddingServer
from rag_pipeline_tests.integrity_rig import EMBEDDING


def _status(rig, doc_id: str):  # noqa: ANN001, ANN202
    row = records.get_documents(rig.engine, [doc_id])[doc_id]
    return row.status, row.error


def test_bad_credentials_fail_the_run_fast_and_park_nothing(rig):
    doc = rig.write("kb", "doc.txt", "Herons stand still in the shallows waiting for fish.")
    rig.prepare([doc])
    with EmbeddingServer(dimensions=256, api_key="the-right-key") as guarded:
        embedder = OpenAIEmbedder("test-embed", 256, "a-wrong-key", guarded.base_url, max_retries=0)
        try:
            with pytest.raises(EndpointError, match="rejected the credentials \\(401\\): check OPENAI_API_KEY"):
                pipeline.embed(rig.engine, rig.store, [doc], embedder=embedder, chunker=rig.chunker, embedding=EMBEDDING)
        finally:
            embedder.close()
        assert guarded.requests == 1  # failed fast: a 401 is not retried
    assert _status(rig, doc) == (records.PENDING, None)  # waiting, not blamed
    assert rig.index([doc]) == {doc: "processed"}  # the right endpoint indexes it


@pytest.mark.parametrize("answer", ["shuffled", "base64"])
def test_vectors_come_back_in_input_order_however_the_answer_is_shaped(answer):
    # The embedder reads the response body itself (not the client's typed parse): items out of
    # index order and base64 vectors are both valid answers and must give the same vectors.
    texts = [f"text number {i} about herons and tides" for i in range(7)]
    with EmbeddingServer(dimensions=64) as server:
        expected = np.asarray(server.embedder.embed(texts), dtype=np.float32)
        server.set_faults(answer=answer)
        embedder = OpenAIEmbedder("test-embed", 64, "sk-test", server.base_url, max_retries=0, batch_size=3)
        try:
            got = embedder.embed(texts)
        finally:
            embedder.close()
    assert len(got) == len(texts) and all(isinstance(x, float) for x in got[0])
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), expected, rtol=0, atol=1e-7)


def test_an_answer_that_is_not_embeddings_is_one_clear_error():
    with EmbeddingServer(dimensions=64) as server:
        server.set_faults(answer="not_embeddings")
        embedder = OpenAIEmbedder("test-embed", 64, "sk-test", server.base_url, max_retries=0)
        try:
            with pytest.raises(EndpointError, match="answered with something other than embeddings"):
                embedder.embed(["one text"])
        finally:
            embedder.close()


def test_a_text_the_endpoint_refuses_parks_only_its_document(rig):
    names = ["one", "two", "poison", "four"]
    docs = [rig.write("kb", f"{name}.txt", f"{name} is a perfectly ordinary document.") for name in names]
    rig.prepare(docs)
    # All four texts go in one request; the endpoint refuses it because of one of them.
    rig.server.set_faults(refuse_marker="poison")
    outcomes = {o.document_id: o for o in rig.embed(docs)}
    poison = docs[2]
    assert outcomes[poison].status == "failed" and "refused the text: 400" in outcomes[poison].reason
    assert _status(rig, poison)[0] == records.FAILED and "too long" in _status(rig, poison)[1]
    assert {outcomes[d].status for d in docs if d != poison} == {"processed"}
    rig.assert_invariants()


def test_endpoint_outage_makes_documents_wait_then_index(rig):
    docs = [rig.write("kb", f"d{i}.txt", f"Outage test document {i} about tidal pools.") for i in range(3)]
    rig.prepare(docs)
    rig.server.set_faults(status_rate=1.0, statuses=(503,))  # down
    with pytest.raises(openai.InternalServerError):
        rig.embed(docs)
    assert {_status(rig, d) for d in docs} == {(records.PENDING, None)}  # waiting, not bad input
    rig.server.set_faults()  # back
    assert rig.index(docs) == dict.fromkeys(docs, "processed")
    rig.assert_converged()


def test_flaky_endpoint_429_500_and_hangs_everything_indexed_once(rig):
    flaky = OpenAIEmbedder("test-embed", 256, "sk-test", rig.server.base_url, timeout=1.0, max_retries=8, batch_size=4)
    rig.embedder = flaky
    try:
        for i in range(8):
            rig.write("kb", f"f{i}.txt", " ".join(f"flaky{i}w{j}" for j in range(60)))
        rig.server.set_faults(status_rate=0.3, statuses=(429, 500, 503), hang_rate=0.1, hang_seconds=3.0, seed=7)
        rig.settle()
        assert rig.server.failures > 0
    finally:
        rig.server.set_faults()
        flaky.close()
    rig.assert_converged()
    assert len(records.list_documents(rig.engine)) == 8
    sent = rig.sent_texts()
    assert sent and max(sent.values()) == 1  # a retried request never duplicated a vector


def test_qdrant_unreachable_fails_cleanly_and_nothing_is_half_written(rig):
    from qdrant_client import QdrantClient

    from rag_pipeline.core import faults
    from rag_pipeline.core.vectorstore import VectorStore

    doc = rig.write("kb", "doc.txt", "Puffins nest in burrows on windswept cliffs.")
    rig.settle()
    served = rig.point_ids(doc)
    rig.write("kb", "doc.txt", "Puffins nest in burrows on windswept cliffs, and fish for sand eels.")
    rig.prepare([doc])
    # Nothing listens on this port: every call fails after the client's timeout. The collection
    # check is skipped so the failure lands where it can hurt: the upsert inside the locked switch.
    down = VectorStore(QdrantClient(url="http://127.0.0.1:9", timeout=2), "test_chunks")
    down.ensure_collection = lambda dimensions: None
    with pytest.raises(Exception) as caught:
        pipeline.embed(rig.engine, down, [doc], embedder=rig.embedder, chunker=rig.chunker, embedding=EMBEDDING)
    assert faults.is_infrastructure(caught.value), repr(caught.value)
    row = records.get_documents(rig.engine, [doc])[doc]
    assert row.status == records.PENDING and row.indexed_version != row.version  # not switched
    assert rig.point_ids(doc) == served  # the served version is untouched
    rig.assert_invariants()
    assert rig.index([doc]) == {doc: "processed"}  # Qdrant back: indexed, vectors from the cache
    rig.assert_converged()


def test_a_step_keeps_two_batches_at_the_endpoint_and_embeds_each_text_once(rig):
    """While the endpoint holds one batch, the step's second batch is already there; every text
    is embedded once and cached, whichever batch finished first; the calls are all counted."""
    import threading

    docs = [rig.write("kb", f"p{i}.txt", " ".join(f"pool{i}word{j}" for j in range(120))) for i in range(4)]
    rig.prepare(docs)
    rig.server.hold_next(1)
    calls, requests = rig.embedder.calls, rig.server.requests
    done: list = []
    step = threading.Thread(target=lambda: done.append(pipeline.compute_vectors(
        rig.engine, docs, embedder=rig.embedder, chunker=rig.chunker, embedding=EMBEDDING, batch_size=4, requests=2)))
    step.start()
    try:
        assert rig.server.wait_until_held(1, timeout=30)
        deadline = time.monotonic() + 10
        while rig.server.requests < requests + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert rig.server.requests >= requests + 2, "no second batch while the first was held"
    finally:
        rig.server.release()
        step.join(60)
    computed = done[0]
    outcomes = computed.outcomes
    texts = set(computed.frame["text"])
    assert len(texts) > 8 and rig.sent_texts() == dict.fromkeys(texts, 1)
    assert rig.embedder.calls - calls == rig.server.requests - requests == -(-len(texts) // 4)
    assert {o.status for o in outcomes} <= {"processed", "skipped"} and not [o for o in outcomes if o.status == "failed"]
    assert rig.index(docs) == dict.fromkeys(docs, "processed")


def test_with_two_batches_in_flight_a_rejected_key_still_fails_the_step_at_once(rig):
    docs = [rig.write("kb", f"k{i}.txt", " ".join(f"heron{i}word{j}" for j in range(120))) for i in range(4)]
    rig.prepare(docs)
    with EmbeddingServer(dimensions=256, api_key="the-right-key") as guarded:
        embedder = OpenAIEmbedder("test-embed", 256, "a-wrong-key", guarded.base_url, max_retries=0, batch_size=2)
        try:
            with pytest.raises(EndpointError, match="rejected the credentials"):
                pipeline.compute_vectors(rig.engine, docs, embedder=embedder, chunker=rig.chunker, embedding=EMBEDDING,
                                         batch_size=2, requests=2)
        finally:
            embedder.close()
        # Tens of batches were queued; only those already in flight reached the endpoint.
        assert guarded.requests <= 3, guarded.requests
