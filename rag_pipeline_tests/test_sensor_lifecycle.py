"""Deletions, renames and hand-off through the real sensor, partitions and runs."""

from __future__ import annotations

import psycopg
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, build_sensor_context

from rag_pipeline.cli import search_many
from rag_pipeline.core import planning, records
from rag_pipeline.core.db import get_engine
from rag_pipeline.core.identity import document_id
from rag_pipeline.definitions import build_definitions
from rag_pipeline.defs import orchestrator
from rag_pipeline.settings import Settings
from rag_pipeline_tests.helpers import execute, tick_and_run, write_files

FILES = {
    "a.txt": b"Lighthouses guide ships along dangerous rocky coasts at night.",
    "b.txt": b"Beekeepers harvest honey from wooden hives in late summer.",
    "c.txt": b"Cartographers drew sea monsters on the edges of old maps.",
}


def _paths_found(settings: Settings, query: str) -> set[str]:
    # Dense scores are cosines, so a threshold means "similar"; hybrid ones are fused ranks.
    [hits] = search_many(settings, [(query, None)], k=5, mode="dense")
    return {h["path"] for h in hits if h["score"] > 0.2}


def _metadata(instance: DagsterInstance, key: str, asset: str = "document_embeddings") -> dict:
    [record] = instance.fetch_materializations(
        AssetRecordsFilter(AssetKey(asset), asset_partitions=[key]), limit=1
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
        result = _tick(defs, instance, cursor=first.cursor)
        moved = "kb/maps.txt"
        # The partitions changed in the tick itself, before any run; the purge goes first, ahead
        # of the index run in the queue too.
        assert instance.get_dynamic_partitions("documents") == ["kb/a.txt", moved]
        assert [r.job_name for r in result.run_requests] == ["purge_deleted", "index_documents"]
        assert result.run_requests[0].tags["dagster/priority"] > result.run_requests[1].tags.get("dagster/priority", "0")
        # Tombstoned in the tick: out of search before its purge run has even started.
        assert _paths_found(settings, "beekeepers honey hives") == set()
        sent = sum(embedding_server.texts.values())
        runs = [execute(defs, instance, r) for r in result.run_requests]
        assert sum(embedding_server.texts.values()) == sent  # (searches below embed their queries)

        assert _paths_found(settings, "beekeepers honey hives") == set()
        assert _paths_found(settings, "cartographers sea monsters maps") == {"maps.txt"}
        meta = _metadata(instance, moved, "chunk_vectors")
        assert meta["status"] == "processed" and meta["embedded"] == 0 and meta["cache_hits"] == meta["chunks"] >= 1
        assert _metadata(instance, moved)["points"] == meta["chunks"]

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
        partitions = instance.get_dynamic_partitions("documents")
    [request] = result.run_requests
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a separate session
        rows = dict(conn.execute("SELECT partition_key, status FROM documents").fetchall())
    assert set(partitions) == set(rows) and set(rows.values()) == {"pending"}
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
        assert {_metadata(instance, k)["status"] for k in keys} == {"skipped"}

        engine = get_engine(settings.database_url)
        ids = [ref.id for ref in records.refs_by_key(engine, keys).values()]
        assert records.request_again(engine, ids) == len(keys)
        assert job.execute_in_process(instance=instance, tags=backfill_tags).success
        assert embedding_server.requests == requests
        for key in keys:
            meta = _metadata(instance, key, "chunk_vectors")
            assert meta["status"] == "processed" and meta["cache_hits"] == meta["chunks"] and meta["embedded"] == 0
            assert _metadata(instance, key)["status"] == "processed"


def _tick(defs, instance: DagsterInstance, cursor: str | None = None):  # noqa: ANN001, ANN202
    """One sensor evaluation whose runs are never executed (as if they were lost)."""
    with build_sensor_context(instance=instance, resources=defs.resources, cursor=cursor) as ctx:
        return defs.resolve_sensor_def("inbox_sensor")(ctx)


def _age_requests(engine, seconds: int = 3600) -> None:  # noqa: ANN001
    import datetime as dt

    from rag_pipeline.core.db import documents

    with engine.begin() as conn:
        conn.execute(documents.update().values(requested_at=records.now() - dt.timedelta(seconds=seconds)))


def test_late_and_abandoned_documents_are_reported_parked_and_retried(rag_env, monkeypatch, capsys):
    """The stale-processing reconciler, replaced: a document whose runs keep getting lost is
    reported late once, handed to at most RAG_MAX_ATTEMPTS runs, then parked with a reason
    (the dead letter) until `retry` re-drives it."""
    import time

    from rag_pipeline import cli

    # Lost runs are noticed by age; here the test ages the hand-offs itself.
    monkeypatch.setattr(planning, "LOST_AFTER", planning.REREQUEST_AFTER)
    monkeypatch.setenv("RAG_OVERDUE_SECONDS", "1")
    monkeypatch.setenv("RAG_MAX_ATTEMPTS", "2")
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", {"a.txt": FILES["a.txt"]})
    doc = document_id("kb", "a.txt")
    engine = get_engine(settings.database_url)
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        assert len(_tick(defs, instance).run_requests) == 1  # attempt 1: its run is lost
        time.sleep(1.5)
        [late] = _tick(defs, instance).asset_events
        assert (late.check_name, late.partition, late.passed, late.severity.value) == ("indexed_in_time", "kb/a.txt", False, "WARN")
        assert "not indexed 1 s after upload" in late.description
        assert _tick(defs, instance).asset_events == []  # reported once, not every tick
        _age_requests(engine)
        assert len(_tick(defs, instance).run_requests) == 1  # attempt 2: lost too
        # Its last run may still be working on it: not parked before it is due again.
        assert _tick(defs, instance).asset_events == []
        assert records.get_documents(engine, [doc])[doc].status == records.PENDING
        _age_requests(engine)
        parked = _tick(defs, instance)
        assert parked.run_requests == [] and [e.severity.value for e in parked.asset_events] == ["ERROR"]
        row = records.get_documents(engine, [doc])[doc]
        assert row.status == records.FAILED and row.error == "gave up after 2 runs"

        capsys.readouterr()
        assert cli.main(["status", "--failed", "--json"]) == 0
        import json

        dead = json.loads(capsys.readouterr().out)["documents"]
        assert [(d["path"], d["error"]) for d in dead] == [("a.txt", "gave up after 2 runs")]
        assert cli.main(["retry", "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == {"requeued": 1}

        _, [run] = tick_and_run(defs, instance)
        [fresh] = [e for e in run.get_asset_check_evaluations() if e.check_name == "indexed_in_time"]
        assert fresh.passed and fresh.partition == "kb/a.txt"
        assert records.get_documents(engine, [doc])[doc].status == records.INDEXED


def test_an_outage_fails_the_run_but_leaves_documents_waiting_without_spending_attempts(rag_env, embedding_server):
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", FILES)
    defs = build_definitions(settings)
    engine = get_engine(settings.database_url)
    with DagsterInstance.get() as instance:
        [request] = _tick(defs, instance).run_requests
        embedding_server.set_faults(status_rate=1.0, statuses=(503,))
        try:
            result = defs.resolve_job_def("index_documents").execute_in_process(
                instance=instance, tags=dict(request.tags), raise_on_error=False
            )
        finally:
            embedding_server.set_faults()
        assert not result.success
        rows = records.list_documents(engine)
        assert {r.status for r in rows} == {records.PENDING}
        assert all(r.error.startswith("waiting: InternalServerError") for r in rows)
        assert {r.attempts for r in rows} == {0}  # the hand-off was refunded: not their fault
        # The next hand-off (the sensor's re-request, or Dagster's run retry) indexes them.
        assert defs.resolve_job_def("index_documents").execute_in_process(instance=instance, tags=dict(request.tags)).success
        assert {r.status for r in records.list_documents(engine)} == {records.INDEXED}


def _one_upload():  # noqa: ANN202
    """a.txt in the inbox: its document id, our engine, the definitions."""
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", {"a.txt": FILES["a.txt"]})
    return document_id("kb", "a.txt"), get_engine(settings.database_url), build_definitions(settings)


def test_a_ui_backfill_redrives_parked_documents(rag_env):
    doc, engine, defs = _one_upload()
    with DagsterInstance.get() as instance:
        _tick(defs, instance)  # registered and requested; its run is lost
        assert [r.id for r in records.park(engine, [doc], 1)] == [doc]  # the dead letter
        # What the UI launches for a backfill of that partition: the parked document is indexed.
        tags = {"dagster/asset_partition_range_start": "kb/a.txt", "dagster/asset_partition_range_end": "kb/a.txt"}
        assert defs.resolve_job_def("index_documents").execute_in_process(instance=instance, tags=tags).success
    assert records.get_documents(engine, [doc])[doc].status == records.INDEXED


def test_a_document_a_run_still_holds_is_not_parked_and_runs_are_only_asked_when_needed(rag_env, monkeypatch):

    monkeypatch.setenv("RAG_MAX_ATTEMPTS", "1")
    doc, engine, defs = _one_upload()
    asked: list[str] = []
    held: set[str] = set()
    real = orchestrator.documents_in_active_runs

    def documents_in_active_runs(instance, partition_order):  # noqa: ANN001, ANN202
        asked.append("runs")
        return real(instance, partition_order) | held

    monkeypatch.setattr(orchestrator, "documents_in_active_runs", documents_in_active_runs)
    monkeypatch.setattr(planning, "LOST_AFTER", planning.REREQUEST_AFTER)  # aged by the test
    with DagsterInstance.get() as instance:
        first = _tick(defs, instance)  # registered and requested once; its run is lost
        assert asked == ["runs"]
        idle = _tick(defs, instance, cursor=first.cursor)
        assert idle.skip_reason and asked == ["runs"]  # nothing due: runs not asked
        _age_requests(engine)
        held.add("kb/a.txt")  # a run (a UI backfill, say) holds it after all
        assert _tick(defs, instance, cursor=first.cursor).run_requests == []
        assert records.get_documents(engine, [doc])[doc].status == records.PENDING and asked == ["runs"] * 2
        held.clear()
        parked = _tick(defs, instance, cursor=first.cursor)
        assert parked.run_requests == [] and [e.severity.value for e in parked.asset_events] == ["ERROR"]
        assert records.get_documents(engine, [doc])[doc].status == records.FAILED


def test_the_sensor_rests_four_times_its_last_tick_before_walking_the_inbox_again(rag_env, monkeypatch):
    """rag-dagster-daemon offers a tick every second; over 100,000 files a tick takes about one."""
    import json
    import time

    from rag_pipeline.defs import sensors

    monkeypatch.setattr(sensors, "RESTLESS_TICK", 0.25)  # rag_env keeps other tests from resting
    settings = Settings.from_env()
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        first, _ = tick_and_run(defs, instance)
        walked = json.loads(first.cursor)
        assert walked["ticked_at"] <= time.time() and walked["tick_seconds"] >= 0
        write_files(settings.inbox_dir, "kb", {"a.txt": FILES["a.txt"]})
        time.sleep(settings.settle_seconds + 0.1)
        # An inbox that cannot be watched (a network file system): its walks are what rest.
        walked["watch"] = ""
        slow = json.dumps({**walked, "ticked_at": time.time(), "tick_seconds": 2.0})
        rested, runs = tick_and_run(defs, instance, cursor=slow)
        assert "resting" in rested.skip_reason.skip_message and not runs and rested.cursor == slow
        assert records.list_documents(get_engine(settings.database_url)) == []  # not even looked at
        due = json.dumps({**walked, "ticked_at": time.time() - 10.5, "tick_seconds": 2.0})
        result, runs = tick_and_run(defs, instance, cursor=due)
        assert len(runs) == 1 and json.loads(result.cursor)["ticked_at"] > walked["ticked_at"]
