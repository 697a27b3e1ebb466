"""PostgreSQL restarted in the middle of a run (a private cluster, really restarted): the run
either carries on over fresh connections or fails cleanly; nothing is half-written, and the
documents are indexed once the database is back."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from rag_pipeline.core import db as core_db
from rag_pipeline.core import faults, records
from rag_pipeline.core.audit import audit_all, repair
from rag_pipeline.core.db import dispose_engine, open_engine
from rag_pipeline.core.embedding import OpenAIEmbedder
from rag_pipeline.core.vectorstore import VectorStore, open_client
from rag_pipeline_tests.integrity_rig import Rig
from rag_pipeline_tests.private_pg import private_cluster

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster():
    yield from private_cluster(max_connections=50)


@pytest.fixture
def pg_rig(cluster, embedding_server, tmp_path):
    core_db._migrated.clear()  # a fresh cluster on a port an earlier test used: migrate again
    store = VectorStore(open_client(None, tmp_path / "qdrant"), "test_chunks")
    embedder = OpenAIEmbedder("test-embed", 256, "sk-test", embedding_server.base_url, max_retries=2, batch_size=8)
    (tmp_path / "inbox").mkdir()
    yield Rig(open_engine(cluster.url), store, embedder, tmp_path / "inbox", embedding_server,
              texts_before=Counter(embedding_server.texts))
    embedding_server.release()
    embedder.close()
    store.close()
    dispose_engine(cluster.url)


def _prepared(rig: Rig) -> list[str]:
    docs = [rig.write("kb", f"d{i}.txt", f"Restart test {i}: beavers build dams of sticks and mud.") for i in range(3)]
    rig.prepare(docs)
    return docs


def test_restart_while_the_run_waits_on_the_endpoint(pg_rig, cluster):
    docs = _prepared(pg_rig)
    pg_rig.server.hold_next(1)
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(out=pg_rig.embed(docs)), daemon=True)
    thread.start()
    assert pg_rig.server.wait_until_held()
    cluster.restart()  # every pooled connection of the run is now dead
    pg_rig.server.release()
    thread.join(60)
    # Pre-ping replaces the dead connections: the run simply carries on.
    assert [o.status for o in box["out"]] == ["processed"] * 3
    pg_rig.assert_converged()


def test_restart_inside_the_locked_write(pg_rig, cluster):
    docs = _prepared(pg_rig)
    real_upsert = pg_rig.store.upsert

    def upsert_then_lose_the_database(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        real_upsert(*args, **kwargs)
        cluster.restart()  # the switch's transaction dies after the points were written

    pg_rig.store.upsert = upsert_then_lose_the_database
    with pytest.raises(Exception) as caught:
        pg_rig.embed(docs)
    assert faults.is_infrastructure(caught.value), repr(caught.value)
    pg_rig.store.upsert = real_upsert
    # Nothing switched: the documents are pending, their new points are the in-flight version's
    # (the retry rewrites the same ids), and every point still has its chunk row.
    assert {r.status for r in records.list_documents(pg_rig.engine)} == {records.PENDING}
    pg_rig.assert_invariants()
    sent = sum(pg_rig.sent_texts().values())
    assert {o.status for o in pg_rig.embed(docs)} == {"processed"}
    assert sum(pg_rig.sent_texts().values()) == sent  # the retry's vectors came from the cache
    pg_rig.assert_converged()


def test_losing_the_database_while_retiring_the_old_version_never_loses_the_served_one(pg_rig, cluster):
    """The database goes away just as the old chunk set's points are being deleted. Whatever the
    database then says is served must be whole in Qdrant."""
    doc = pg_rig.write("kb", "doc.txt", "Otters crack shellfish on stones they keep in a pocket of skin.")
    pg_rig.settle()
    pg_rig.write("kb", "doc.txt", "Otters crack shellfish on stones, and hold hands while asleep.")
    pg_rig.prepare([doc])
    real_delete = pg_rig.store.delete_ids

    def lose_the_database_then_delete(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        cluster.restart()
        real_delete(*args, **kwargs)

    pg_rig.store.delete_ids = lose_the_database_then_delete
    try:
        pg_rig.embed([doc])
    except Exception as exc:  # the retirement's own transaction may fail: that is allowed
        assert faults.is_infrastructure(exc), repr(exc)
    pg_rig.store.delete_ids = real_delete
    pg_rig.assert_invariants()  # every served chunk has its point
    row = records.get_documents(pg_rig.engine, [doc])[doc]
    assert row.indexed_version == row.version  # the switch had committed before the retirement
    # What the interrupted retirement left (old points: orphans; old rows), `verify --repair` removes.
    report = audit_all(pg_rig.engine, pg_rig.store)
    repair(pg_rig.engine, pg_rig.store, report)
    pg_rig.settle()
    pg_rig.assert_converged()
