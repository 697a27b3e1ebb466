"""Deletions, renames and hand-off through the real sensor, partitions and runs."""

from __future__ import annotations

import psycopg
from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DeleteDynamicPartitionsRequest,
    build_sensor_context,
)

from rag_pipeline.cli import search_many
from rag_pipeline.core import records
from rag_pipeline.core.db import get_engine
from rag_pipeline.core.identity import document_id
from rag_pipeline.definitions import build_definitions
from rag_pipeline.settings import Settings
from rag_pipeline_tests.helpers import tick_and_run, write_files

FILES = {
    "a.txt": b"Lighthouses guide ships along dangerous rocky coasts at night.",
    "b.txt": b"Beekeepers harvest honey from wooden hives in late summer.",
    "c.txt": b"Cartographers drew sea monsters on the edges of old maps.",
}


def _paths_found(settings: Settings, query: str) -> set[str]:
    [hits] = search_many(settings, [(query, None)], k=5)
    return {h["path"] for h in hits if h["score"] > 0.2}


def _embedding_metadata(instance: DagsterInstance, doc_id: str) -> dict:
    [record] = instance.fetch_materializations(
        AssetRecordsFilter(AssetKey("document_embeddings"), asset_partitions=[doc_id]), limit=1
    ).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def test_deleted_and_renamed_uploads_leave_search_and_the_ui_in_one_tick(rag_env, embedding_server):
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", FILES)
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        first, _ = tick_and_run(defs, instance)
        assert _paths_found(settings, "beekeepers honey hives") == {"b.txt"}
        sent = sum(embedding_server.texts.values())

        # b.txt deleted, c.txt renamed: one tick retires both old partitions, adds the new one,
        # purges, and indexes the renamed file without sending any text to the endpoint.
        (settings.inbox_dir / "kb" / "b.txt").unlink()
        (settings.inbox_dir / "kb" / "c.txt").rename(settings.inbox_dir / "kb" / "maps.txt")
        result, runs = tick_and_run(defs, instance, cursor=first.cursor)
        assert sum(embedding_server.texts.values()) == sent  # (searches below embed their queries)
        gone = {document_id("kb", "b.txt"), document_id("kb", "c.txt")}
        moved = document_id("kb", "maps.txt")
        [added] = [r for r in result.dynamic_partitions_requests if isinstance(r, AddDynamicPartitionsRequest)]
        [deleted] = [r for r in result.dynamic_partitions_requests if isinstance(r, DeleteDynamicPartitionsRequest)]
        assert list(added.partition_keys) == [moved] and set(deleted.partition_keys) == gone
        assert sorted(r.job_name for r in result.run_requests) == ["index_documents", "purge_deleted"]
        assert set(instance.get_dynamic_partitions("documents")) == {document_id("kb", "a.txt"), moved}

        assert _paths_found(settings, "beekeepers honey hives") == set()
        assert _paths_found(settings, "cartographers sea monsters maps") == {"maps.txt"}
        meta = _embedding_metadata(instance, moved)
        assert meta["status"] == "processed" and meta["embedded"] == 0 and meta["cache_hits"] == meta["points"] >= 1

        engine = get_engine(settings.database_url)
        assert {r.path: r.status for r in records.list_documents(engine)} == {"a.txt": "indexed", "maps.txt": "indexed"}
        # Nothing left to do on the next tick: no ghost purge, no partition churn.
        again, runs = tick_and_run(defs, instance, cursor=result.cursor)
        assert again.skip_reason and not runs


def test_sensor_hands_off_only_committed_rows(rag_env, pg_url):
    """The post-mortem queued work before its rows were committed. Here, by the time the sensor
    returns a run request, every document it names is visible to any other connection."""
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", FILES)
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        sensor = defs.resolve_sensor_def("inbox_sensor")
        with build_sensor_context(instance=instance, resources=defs.resources) as ctx:
            result = sensor(ctx)
    [request] = result.run_requests
    [partitions] = result.dynamic_partitions_requests
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a separate session
        rows = dict(conn.execute("SELECT id, status FROM documents").fetchall())
    assert set(partitions.partition_keys) == set(rows) and set(rows.values()) == {"pending"}
    assert request.tags["dagster/asset_partition_range_start"] in rows
    assert request.tags["dagster/asset_partition_range_end"] in rows


def test_backfills_reuse_work_and_the_embedding_cache(rag_env, embedding_server):
    """A single-run backfill over every document (what the UI launches) redoes nothing for
    indexed documents, and a forced rebuild gets every vector from the cache."""
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", FILES)
    defs = build_definitions(settings)
    job = defs.resolve_job_def("index_documents")
    with DagsterInstance.get() as instance:
        tick_and_run(defs, instance)
        keys = instance.get_dynamic_partitions("documents")
        backfill_tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
        requests = embedding_server.requests
        assert job.execute_in_process(instance=instance, tags=backfill_tags).success
        assert embedding_server.requests == requests
        assert {_embedding_metadata(instance, k)["status"] for k in keys} == {"skipped"}

        assert records.request_again(get_engine(settings.database_url), keys) == len(keys)
        assert job.execute_in_process(instance=instance, tags=backfill_tags).success
        assert embedding_server.requests == requests
        for key in keys:
            meta = _embedding_metadata(instance, key)
            assert meta["status"] == "processed" and meta["cache_hits"] == meta["points"] and meta["embedded"] == 0
