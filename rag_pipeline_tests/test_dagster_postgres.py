"""The repository's dagster.yaml, as production uses it: Dagster's runs, events and schedules in
PostgreSQL (psycopg2 scheme), and a sensor-requested run completes against it."""

from __future__ import annotations

from dagster import DagsterInstance, DagsterRunStatus, SensorResult

from rag_pipeline.definitions import build_definitions
from rag_pipeline.defs.storage import PooledPostgresEventLogStorage
from rag_pipeline.devtools.topology import production_home
from rag_pipeline.settings import Settings
from rag_pipeline_tests.helpers import tick_and_run, write_files

def test_repo_dagster_yaml_runs_on_postgres(rag_env, pg_url, tmp_path, monkeypatch):
    for key, value in production_home(tmp_path / "prod_home", pg_url).items():
        monkeypatch.setenv(key, value)

    settings = Settings.from_env()
    write_files(settings.inbox_dir, "ops", {"runbook.md": b"# Pager\n\nEscalate to the on-call lead after 15 minutes."})
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        storage = type(instance.run_storage).__name__
        assert storage == "PostgresRunStorage"
        events = instance.event_log_storage
        assert isinstance(events, PooledPostgresEventLogStorage) and events._engine.dialect.driver == "psycopg2"
        with events._engine.connect() as conn:
            # Dagster's bookkeeping commits without waiting for the disk; a pooled connection is reused.
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
            first = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with events._engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == first
        result, runs = tick_and_run(defs, instance)
        assert isinstance(result, SensorResult) and len(runs) == 1
        run = instance.get_run_by_id(runs[0].run_id)
        assert run.status == DagsterRunStatus.SUCCESS
        # The run's events (including per-partition materializations) are in PostgreSQL.
        keys = instance.get_materialized_partitions(__import__("dagster").AssetKey("document_embeddings"))
        assert len(keys) == 1
        assert instance.get_dynamic_partitions("documents") == list(keys)
        # The embedding step took a slot of its pool (RAG_EMBED_CONCURRENCY) and gave it back.
        pool = instance.event_log_storage.get_concurrency_info("rag_embedding_endpoint")
        assert pool.slot_count == settings.embed_concurrency and pool.active_slot_count == 0, pool


def test_stale_statistics_of_per_document_tables_are_refreshed(tmp_path, pg_url, monkeypatch):
    """A big drop grows Dagster's per-document tables faster than autovacuum analyzes them; on
    stale statistics each check evaluation's UPDATE walked every earlier evaluation. A process
    opening the storage analyzes the tables that fell behind, and only those."""
    import time

    from rag_pipeline.defs.storage import refresh_stale_statistics

    for key, value in production_home(tmp_path / "prod_home", pg_url).items():
        monkeypatch.setenv(key, value)
    with DagsterInstance.get() as instance:
        engine = instance.event_log_storage._engine
        refresh_stale_statistics(engine)
        instance.add_dynamic_partitions("documents", [f"doc-{i:05d}" for i in range(3000)])
        deadline = time.monotonic() + 10
        analyzed: list[str] = []
        while time.monotonic() < deadline and not analyzed:  # table statistics are reported asynchronously
            analyzed = refresh_stale_statistics(engine)
            time.sleep(0.2)
        assert analyzed == ["dynamic_partitions"]
        assert refresh_stale_statistics(engine) == []
        with engine.connect() as conn:
            # A failed ANALYZE or not, the pooled connection keeps the server's lock timeout.
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "0"
