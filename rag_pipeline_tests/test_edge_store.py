"""The embedded vector store on Qdrant Edge (core/qdrant_edge_store.py), real shards on disk:
the same answers as qdrant-client's local mode, aliases, durability, one process per folder,
and the migration of a local-mode folder."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from qdrant_client import QdrantClient
from qdrant_client.http import models as qm

from rag_pipeline.core import sparse
from rag_pipeline.core.qdrant_edge_store import EdgeClient, EdgeError, StoreBusy, is_store
from rag_pipeline.core.vectorstore import SearchFilter, VectorStore, VectorStoreError, is_embedded, open_client

DIM = 16
WORDS = [f"w{i}" for i in range(60)] + ["ERR-4012", "zeppelin", "vacation", "rollback"]
REPO = Path(__file__).resolve().parents[1]


def _corpus(n: int = 120) -> tuple[list[str], list[list[float]], list[dict]]:
    rnd = random.Random(17)
    ids = [str(uuid.UUID(int=rnd.getrandbits(128))) for _ in range(n)]
    vectors = [[rnd.uniform(-1, 1) for _ in range(DIM)] for _ in range(n)]
    payloads = []
    for i in range(n):
        kb = f"kb{i % 3}"
        folder = ["policies/", "policies/hr/"] if i % 4 == 0 else ["runbooks/"]
        path = folder[-1] + f"f{i}.{'md' if i % 2 else 'pdf'}"
        payloads.append({
            "document_id": f"doc{i // 2}", "chunk_index": i % 2, "knowledge_base": kb, "source_path": path,
            "folders": folder, "file_type": "md" if i % 2 else "pdf", "version": "v1",
            # Each text its own length, so BM25 scores rarely tie (tied points may rank either way).
            "text": " ".join(rnd.choices(WORDS, k=rnd.randint(3, 12)) + [f"fill{i}n{j}" for j in range(i)]), "meta": {"team": "a" if i % 5 else "b"},
            "page": float("nan") if i == 3 else i,
        })
    return ids, vectors, payloads


def _fill(client, name: str = "c") -> VectorStore:  # noqa: ANN001
    store = VectorStore(client, name, keyword=True)
    store.ensure_collection(DIM)
    ids, vectors, payloads = _corpus()
    store.upsert(ids, vectors, payloads, batch=50)
    return store


def _ranked(hits) -> list[tuple[str, int, float]]:  # noqa: ANN001
    return [(h.document_id, h.chunk_index, round(h.score, 4)) for h in hits]


def _by_score(hits) -> tuple[list[float], list[tuple[str, int, float]]]:  # noqa: ANN001
    """The scores in order, and the points ranked by score, except those tied at the last score
    (the cut at k takes either of them)."""
    ranked = sorted(_ranked(hits), key=lambda r: (-r[2], r[:2]))
    last = ranked[-1][2] if ranked else None
    return [r[2] for r in ranked], [r for r in ranked if r[2] != last]


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect")
def test_search_answers_as_local_mode_did(tmp_path: Path):
    """Dense, keyword (BM25 with Qdrant's IDF) and hybrid (RRF) search and every filter the
    pipeline sends give the ranking qdrant-client's local mode gave on the same points."""
    local = _fill(QdrantClient(path=str(tmp_path / "local")))
    edge = _fill(open_client(None, tmp_path / "vectors"))
    assert is_embedded(edge.client) and not is_embedded(local.client)
    rnd = random.Random(5)
    filters = [
        None, SearchFilter(knowledge_base="kb1"), SearchFilter(path_prefix="policies/hr/"),
        SearchFilter(path_prefix="runbooks/f1.md"), SearchFilter(file_types=("MD",)),
        SearchFilter(metadata={"team": "b"}), SearchFilter(knowledge_base="kb0", path_prefix="policies"),
    ]
    compared = 0
    for query_text in ["ERR-4012 rollback", "zeppelin w3 w7", "vacation", "w1 w2 w3 w4"]:
        dense = [rnd.uniform(-1, 1) for _ in range(DIM)]
        keyword = sparse.query_vector(query_text)
        for where in filters:
            for mode in ("dense", "keyword", "hybrid"):
                kwargs = dict(dense=dense, keyword=keyword, k=8, mode=mode, where=where,
                              exclude_documents={"doc1", "doc7"}, dense_floor=None)
                got, expected = edge.query(**kwargs), local.query(**kwargs)
                # Equal scores (BM25 of the same terms, RRF of the same ranks) may come in either
                # order: the rankings are compared score by score.
                assert _by_score(got) == _by_score(expected), (mode, where, query_text)
                compared += bool(expected)
    assert compared > 40
    # Payloads come back as written (NaN is stored as null, as a server's JSON does).
    hit = edge.query(dense=None, keyword=sparse.query_vector("zeppelin"), k=1, mode="keyword")[0]
    assert hit.path and hit.text and hit.meta in ({"team": "a"}, {"team": "b"}) and hit.file_type in ("md", "pdf")
    assert edge.points_of(["doc0", "doc1"]) == local.points_of(["doc0", "doc1"])
    nan_is_null = lambda points: sorted((i, {**p, "page": None if p["page"] != p["page"] else p["page"]}) for i, p in points)  # noqa: E731
    assert nan_is_null(edge.iter_points()) == nan_is_null(local.iter_points())
    assert edge.count(document_id="doc3") == local.count(document_id="doc3") == 2
    edge.delete_document("doc3")
    local.delete_document("doc3")
    assert edge.count() == local.count() == 118
    # The pipeline's payload indexes exist on the embedded store now (local mode had none).
    assert set(edge.client.get_collection("c").payload_schema) >= {"document_id", "knowledge_base", "folders"}
    local.close()
    edge.close()


def test_aliases_switch_in_one_replacement_and_survive_reopen(tmp_path: Path):
    client = EdgeClient(tmp_path / "v")
    for name in ("gen_a", "gen_b"):
        client.create_collection(name, vectors_config=qm.VectorParams(size=2, distance=qm.Distance.COSINE))
    client.upsert("gen_a", points=[qm.PointStruct(id=1, vector=[1.0, 0.0], payload={"g": "a"})])
    client.upsert("gen_b", points=[qm.PointStruct(id=2, vector=[1.0, 0.0], payload={"g": "b"})])
    create = lambda target: qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=target, alias_name="live"))  # noqa: E731
    delete = qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name="live"))
    client.update_collection_aliases(change_aliases_operations=[create("gen_a")])
    assert client.query_points("live", query=[1.0, 0.0]).points[0].payload == {"g": "a"}
    assert client.collection_exists("live") and "live" not in {c.name for c in client.get_collections().collections}
    before = (tmp_path / "v" / "aliases.json").stat().st_ino
    # All or nothing: an operation that fails leaves the alias where it was.
    with pytest.raises(EdgeError):
        client.update_collection_aliases(change_aliases_operations=[delete, create("missing")])
    assert [(a.alias_name, a.collection_name) for a in client.get_aliases().aliases] == [("live", "gen_a")]
    client.update_collection_aliases(change_aliases_operations=[delete, create("gen_b")])
    # A new file renamed over the old one: a reader sees the old aliases or the new, never a part.
    assert (tmp_path / "v" / "aliases.json").stat().st_ino != before
    assert client.query_points("live", query=[1.0, 0.0]).points[0].payload == {"g": "b"}
    client.close()
    client = EdgeClient(tmp_path / "v")
    assert [(a.alias_name, a.collection_name) for a in client.get_aliases().aliases] == [("live", "gen_b")]
    # Dropping a collection drops its aliases, as Qdrant does.
    client.delete_collection("gen_b")
    assert client.get_aliases().aliases == [] and not client.collection_exists("live")
    assert [c.name for c in client.get_collections().collections] == ["gen_a"]
    client.close()


WRITER = textwrap.dedent("""
    import os, signal, sys, uuid
    from rag_pipeline.core.vectorstore import VectorStore, open_client
    store = VectorStore(open_client(None, sys.argv[1]), "c", keyword=True)
    store.ensure_collection(4)
    for batch in range(5):
        ids = [str(uuid.UUID(int=batch * 1000 + i + 1)) for i in range(100)]
        store.upsert(ids, [[1.0, float(i), 0.0, 1.0] for i in range(100)],
                     [{"document_id": f"d{batch}", "text": f"word{i} batch{batch}"} for i in range(100)])
    store.delete_document("d0")
    print("acknowledged", flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush
    store.close()
""")


@pytest.mark.parametrize("end", ["close", "kill"])
def test_acknowledged_writes_survive_a_reopen_and_a_killed_writer(tmp_path: Path, end: str):
    out = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path / "v"), end], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert "acknowledged" in out.stdout, out.stderr[-2000:]
    assert out.returncode == (-signal.SIGKILL if end == "kill" else 0)
    store = VectorStore(open_client(None, tmp_path / "v", lock_wait=5), "c", keyword=True)
    assert store.count() == 400 and store.count(document_id="d0") == 0
    hits = store.query(dense=None, keyword=sparse.query_vector("word3 batch4"), k=3, mode="keyword")
    assert hits[0].document_id == "d4" and hits[0].text == "word3 batch4"
    store.close()


HOLDER = textwrap.dedent("""
    import sys
    from rag_pipeline.core.vectorstore import open_client
    client = open_client(None, sys.argv[1])
    print("holding", flush=True)
    sys.stdin.readline()
    client.close()
    print("released", flush=True)
    sys.stdin.readline()
""")


def test_a_second_process_waits_for_the_folder_and_gets_it_when_released(tmp_path: Path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "v")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "holding"
        # Busy is a clear, catchable error: at once for the client, after the wait for open_client.
        with pytest.raises(StoreBusy):
            EdgeClient(tmp_path / "v")
        with pytest.raises(VectorStoreError, match="busy in another process"):
            open_client(None, tmp_path / "v", lock_wait=0.3)
        holder.stdin.write("\n")
        holder.stdin.flush()
        started = time.monotonic()
        client = open_client(None, tmp_path / "v", lock_wait=60)
        assert holder.stdout.readline().strip() == "released"
        assert time.monotonic() - started < 30
        assert client.get_collections().collections == []
        client.close()
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(30)


def _legacy_folder(path: Path) -> dict[str, int]:
    """What an older version left in `<data>/qdrant`: a generation with keyword vectors behind
    the alias, and a pre-generation collection."""
    client = QdrantClient(path=str(path))
    gen = _fill(client, "rag_chunks__0123456789ab")
    client.create_collection("old_plain", vectors_config=qm.VectorParams(size=3, distance=qm.Distance.COSINE))
    client.upsert("old_plain", points=[qm.PointStruct(id=i, vector=[1.0, i, 0.0], payload={"n": i}) for i in range(1, 31)])
    client.update_collection_aliases(change_aliases_operations=[
        qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=gen.collection, alias_name="rag_chunks"))
    ])
    counts = {c.name: client.count(c.name).count for c in client.get_collections().collections}
    client.close()
    return counts


def test_a_legacy_local_folder_is_copied_on_first_open_with_equal_counts(tmp_path: Path):
    from rag_pipeline.settings import Settings

    data = tmp_path / "data"
    counts = _legacy_folder(data / "qdrant")
    settings = Settings.from_env({"RAG_DATA_DIR": str(data)})
    assert settings.qdrant_path == data / "vectors" and settings.legacy_qdrant_path == data / "qdrant"
    query = [random.Random(5).uniform(-1, 1) for _ in range(DIM)]
    legacy = VectorStore(QdrantClient(path=str(data / "qdrant")), "rag_chunks__0123456789ab", keyword=True)
    expected = _by_score(legacy.query(dense=query, keyword=sparse.query_vector("zeppelin"), k=5, dense_floor=None))
    legacy.close()

    client = open_client(None, settings.qdrant_path, legacy=settings.legacy_qdrant_path)
    assert {c.name: client.count(c.name).count for c in client.get_collections().collections} == counts
    assert [(a.alias_name, a.collection_name) for a in client.get_aliases().aliases] == [("rag_chunks", "rag_chunks__0123456789ab")]
    store = VectorStore(client, "rag_chunks__0123456789ab", keyword=True)
    assert store.has_keyword_vectors()
    assert _by_score(store.query(dense=query, keyword=sparse.query_vector("zeppelin"), k=5, dense_floor=None)) == expected
    client.close()
    note = json.loads((data / "vectors" / "store.json").read_text())
    assert note["migrated_from"] == str(data / "qdrant") and note["collections"] == counts
    # Copied once: the old folder is left as it was, and a later open reads the store only.
    assert (data / "qdrant" / "meta.json").is_file()
    client = open_client(None, settings.qdrant_path, legacy=settings.legacy_qdrant_path)
    assert client.count("rag_chunks").count == counts["rag_chunks__0123456789ab"]
    client.close()


def test_a_legacy_folder_named_by_qdrant_path_is_refused_with_the_command_to_copy_it(tmp_path: Path, capsys):
    from rag_pipeline.cli import main

    counts = _legacy_folder(tmp_path / "old")
    with pytest.raises(VectorStoreError, match="rag-pipeline vectors migrate --from"):
        open_client(None, tmp_path / "old")
    assert not is_store(tmp_path / "old")
    env = {"RAG_DATA_DIR": str(tmp_path / "data"), "QDRANT_PATH": str(tmp_path / "new")}
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert main(["vectors", "migrate", "--from", str(tmp_path / "old"), "--json"]) == 0
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out = json.loads(capsys.readouterr().out)
    assert out["collections"] == counts and out["to"] == str(tmp_path / "new")
    client = open_client(None, tmp_path / "new")
    assert {c.name: client.count(c.name).count for c in client.get_collections().collections} == counts
    client.close()


def test_optimize_vacuums_and_builds_hnsw_on_demand_with_the_same_answers(tmp_path: Path):
    store = _fill(open_client(None, tmp_path / "v"))
    query = [random.Random(9).uniform(-1, 1) for _ in range(DIM)]
    before = _ranked(store.query(dense=query, k=5, mode="dense", dense_floor=None))
    store.client.optimize("c")
    assert _ranked(store.query(dense=query, k=5, mode="dense", dense_floor=None)) == before
    store.client.optimize("c", hnsw=True)
    # 120 points are under any HNSW threshold: the segment stays plain and exact.
    assert _ranked(store.query(dense=query, k=5, mode="dense", dense_floor=None)) == before
    store.close()
    store = VectorStore(open_client(None, tmp_path / "v"), "c", keyword=True)
    assert store.count() == 120 and _ranked(store.query(dense=query, k=5, mode="dense", dense_floor=None)) == before
    store.close()


def _answers(store: VectorStore) -> list:
    """Every mode under a few filters, ranked by score (see `_by_score`)."""
    rnd = random.Random(23)
    out = []
    for query_text in ["ERR-4012 rollback", "zeppelin w3 w7", "w1 w2 w3 w4"]:
        dense = [rnd.uniform(-1, 1) for _ in range(DIM)]
        for where in (None, SearchFilter(knowledge_base="kb1"), SearchFilter(path_prefix="policies/hr/")):
            for mode in ("dense", "keyword", "hybrid"):
                out.append(_by_score(store.query(
                    dense=dense, keyword=sparse.query_vector(query_text), k=8, mode=mode, where=where, dense_floor=None,
                )))
    return out


def _segments(path: Path) -> tuple[int, int]:
    """(points, indexed vectors) of collection c, read with the shard's own layout."""
    import qdrant_edge as qe

    shard = qe.EdgeShard.load(str(path / "collections" / "c"))
    try:
        info = shard.info()
        return info.points_count, info.indexed_vectors_count
    finally:
        shard.close()


def test_a_writer_compacts_segments_and_search_answers_exactly_as_before(tmp_path: Path, monkeypatch):
    """A writer's close turns segments past COMPACT_AT_KB into immutable ones searched through
    int8 vectors rescored with the originals: the same points, the same scores, every mode."""
    from rag_pipeline.core import qdrant_edge_store

    monkeypatch.setattr(qdrant_edge_store, "COMPACT_AT_KB", 1)  # 120 points of 16 dimensions: 8 KB
    store = _fill(open_client(None, tmp_path / "v"))
    appendable = _answers(store)
    assert store.client.get_collection("c").points_count == 120
    store.close()
    assert _segments(tmp_path / "v") == (120, 240)  # dense and keyword vectors of every point indexed
    import qdrant_edge as qe

    shard = qe.EdgeShard.load(str(tmp_path / "v" / "collections" / "c"))
    # The payload indexes are mapped from their files, not read into RAM at every open.
    assert all(i.params.memory == qe.Memory.Cold for i in shard.info().payload_schema.values())
    assert len(shard.info().payload_schema) >= 5
    shard.close()
    store = VectorStore(open_client(None, tmp_path / "v"), "c", keyword=True)
    assert _answers(store) == appendable
    # A writer that stays open compacts every COMPACT_EVERY points, not only at its close.
    monkeypatch.setattr(qdrant_edge_store, "COMPACT_EVERY", 10)
    ids, vectors, payloads = _corpus(130)
    for i in range(120, 130):
        store.upsert(ids[i:i + 1], vectors[i:i + 1], payloads[i:i + 1])
    assert store.client.get_collection("c").points_count == 130
    assert store.client._shard("c").info().indexed_vectors_count == 260
    store.delete_document("doc60")
    store.delete_document("doc61")
    store.delete_document("doc62")
    store.delete_document("doc63")
    store.delete_document("doc64")
    # Points written after compaction land in an appendable segment and are found with the rest.
    ids, vectors, payloads = _corpus(130)
    store.upsert(ids[120:], vectors[120:], payloads[120:])
    store.delete_document("doc3")
    assert store.count() == 128
    store.close()
    store = VectorStore(open_client(None, tmp_path / "v"), "c", keyword=True)
    assert store.count() == 128 and store.count(document_id="doc62") == 2
    store.close()


def test_a_store_of_the_earlier_layout_is_compacted_by_its_next_writer(tmp_path: Path, monkeypatch):
    import qdrant_edge as qe

    from rag_pipeline.core import qdrant_edge_store

    def earlier(dense, sparse, *, hnsw):  # noqa: ANN001, ANN202 - the layout before compaction
        return qe.EdgeConfig(
            vectors={n: qe.EdgeVectorParams(size=s, distance=qe.Distance.Cosine) for n, (s, _) in dense.items()},
            sparse_vectors={n: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf) for n in sparse},
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=qdrant_edge_store.NO_AUTO_INDEX_KB),
        )

    with monkeypatch.context() as m:
        m.setattr(qdrant_edge_store, "layout", earlier)
        m.setattr(EdgeClient, "_edge_config", lambda self, name, hnsw=None: None)  # loads as stored
        store = _fill(open_client(None, tmp_path / "v"))
        before = _answers(store)
        store.close()
    # Appendable: only the keyword vectors are indexed (the inverted index rebuilt in RAM).
    assert _segments(tmp_path / "v") == (120, 120)
    monkeypatch.setattr(qdrant_edge_store, "COMPACT_AT_KB", 1)
    # A reader changes nothing; the next writer's close compacts.
    reader = VectorStore(open_client(None, tmp_path / "v"), "c", keyword=True)
    assert _answers(reader) == before
    reader.close()
    assert _segments(tmp_path / "v") == (120, 120)
    writer = VectorStore(open_client(None, tmp_path / "v"), "c", keyword=True)
    ids, vectors, payloads = _corpus()
    writer.upsert(ids[:1], vectors[:1], payloads[:1])  # rewritten as it was: the answers stay
    writer.close()
    assert _segments(tmp_path / "v") == (120, 240)
    store = VectorStore(open_client(None, tmp_path / "v"), "c", keyword=True)
    assert _answers(store) == before
    # A graph an operator built is kept by every later open.
    store.client.optimize("c", hnsw=True)
    store.close()
    config = json.loads((tmp_path / "v" / "collections" / "c" / "edge_config.json").read_text())
    assert config["hnsw_config"]["m"] == 16
    store = VectorStore(open_client(None, tmp_path / "v"), "c", keyword=True)
    store.upsert(ids[:1], vectors[:1], payloads[:1])
    store.close()
    config = json.loads((tmp_path / "v" / "collections" / "c" / "edge_config.json").read_text())
    assert config["hnsw_config"]["m"] == 16 and config["quantization_config"]
