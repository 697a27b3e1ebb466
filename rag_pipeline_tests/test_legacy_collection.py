"""Upgrading an index built before generations: its points live in a real collection named
like the alias (RAG_COLLECTION). Search and writes go on using it, with the configuration its
documents were indexed with, until a new embedding configuration replaces it; then search moves
to the alias and the old collection is dropped. Real PostgreSQL, embedded Qdrant, openai over HTTP."""

from __future__ import annotations

import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from qdrant_client.http import models as qm

from rag_pipeline.cli import main as cli_main, search_many
from rag_pipeline.core import generations
from rag_pipeline.core.db import get_engine, index_generations
from rag_pipeline.core.vectorstore import open_client
from rag_pipeline.definitions import build_definitions
from rag_pipeline.settings import Settings
from rag_pipeline_tests.helpers import FORMAT_FILES, assert_run_succeeded, tick_and_run, write_files

QUERY = "igneous rock from cooling lava"


def _make_legacy(settings: Settings, engine) -> int:  # noqa: ANN001
    """Turn the index into what a version before generations left: the points in a collection
    named like the alias, no alias, no generation rows."""
    client = open_client(None, settings.qdrant_path)
    try:
        built = generations.aliased_collection(client, settings.collection)
        info = client.get_collection(built)
        points, _ = client.scroll(built, limit=10_000, with_vectors=True, with_payload=True)
        client.update_collection_aliases(change_aliases_operations=[
            qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=settings.collection))
        ])
        client.create_collection(settings.collection, vectors_config=info.config.params.vectors)
        # Dense vectors only: keyword vectors came with generations.
        client.upsert(settings.collection, [
            qm.PointStruct(id=p.id, vector=p.vector[""] if isinstance(p.vector, dict) else p.vector, payload=p.payload)
            for p in points
        ])
        client.delete_collection(built)
    finally:
        client.close()
    with engine.begin() as conn:
        conn.execute(sa.delete(index_generations))
    return len(points)


def _top(settings: Settings) -> str | None:
    [hits] = search_many(settings, [(QUERY, "kb")], k=1)
    return hits[0]["path"] if hits else None


def _collections(settings: Settings) -> tuple[set[str], str | None]:
    client = open_client(None, settings.qdrant_path)
    try:
        return {c.name for c in client.get_collections().collections}, generations.aliased_collection(client, settings.collection)
    finally:
        client.close()


def test_pre_generation_collection_is_adopted_then_replaced(rag_env, embedding_server, monkeypatch):
    old = Settings.from_env()
    write_files(old.inbox_dir, "kb", FORMAT_FILES)
    engine = get_engine(old.database_url)
    with DagsterInstance.get() as instance:
        tick_and_run(build_definitions(old), instance)
        points = _make_legacy(old, engine)
        assert points > 0 and _collections(old) == ({old.collection}, None)

        # After the upgrade: search reads the legacy collection, new uploads are written to it.
        assert _top(old) == "papers/geology.pdf"
        write_files(old.inbox_dir, "kb", {"later.txt": b"Obsidian is volcanic glass that cools too fast to crystallize."})
        tick_and_run(build_definitions(old), instance)
        [hits] = search_many(old, [("volcanic glass obsidian", "kb")], k=1)
        assert hits[0]["path"] == "later.txt"
        assert _collections(old) == ({old.collection}, None)
        with engine.connect() as conn:
            [adopted] = conn.execute(sa.select(index_generations)).all()
        assert (adopted.collection, adopted.state, adopted.embedding) == (old.collection, "serving", old.embedding_spec.fingerprint)
        assert cli_main(["verify"]) == 0

        # A new model: built beside the legacy collection, which serves until the switch.
        monkeypatch.setenv("RAG_EMBEDDING_MODEL", "test-embed-3")
        monkeypatch.setenv("RAG_EMBEDDING_DIMENSIONS", "64")
        new = Settings.from_env()
        keys = list(instance.get_dynamic_partitions("documents"))
        job = build_definitions(new).resolve_job_def("index_documents")
        result = job.execute_in_process(
            instance=instance, raise_on_error=False,
            asset_selection=[AssetKey("chunk_vectors"), AssetKey("document_embeddings")],
            tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
        )
        assert_run_succeeded(result)
        target = generations.collection_name(new.collection, new.embedding_spec.fingerprint)
        assert _collections(new) == ({target}, target)
        assert _top(new) == "papers/geology.pdf"
        assert cli_main(["verify"]) == 0
