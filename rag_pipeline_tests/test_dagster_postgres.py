"""The repository's dagster.yaml, as production uses it: Dagster's runs, events and schedules in
PostgreSQL (psycopg2 scheme), and a sensor-requested run completes against it."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

from dagster import DagsterInstance, DagsterRunStatus, SensorResult

from rag_pipeline.definitions import build_definitions
from rag_pipeline.settings import Settings
from rag_pipeline_tests.helpers import tick_and_run, write_files

REPO = Path(__file__).resolve().parent.parent


def test_repo_dagster_yaml_runs_on_postgres(rag_env, pg_url, tmp_path, monkeypatch):
    home = tmp_path / "prod_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    url = urlparse(pg_url)
    for key, value in {
        "DAGSTER_HOME": str(home), "DAGSTER_PG_USER": url.username or "postgres", "DAGSTER_PG_PASSWORD": url.password or "",
        "DAGSTER_PG_HOST": url.hostname, "DAGSTER_PG_PORT": str(url.port or 5432),
        "DAGSTER_PG_DB": url.path.lstrip("/"),
    }.items():
        monkeypatch.setenv(key, value)

    settings = Settings.from_env()
    write_files(settings.inbox_dir, "ops", {"runbook.md": b"# Pager\n\nEscalate to the on-call lead after 15 minutes."})
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        storage = type(instance.run_storage).__name__
        assert storage == "PostgresRunStorage"
        assert instance.event_log_storage._engine.dialect.driver == "psycopg2"
        result, runs = tick_and_run(defs, instance)
        assert isinstance(result, SensorResult) and len(runs) == 1
        run = instance.get_run_by_id(runs[0].run_id)
        assert run.status == DagsterRunStatus.SUCCESS
        # The run's events (including per-partition materializations) are in PostgreSQL.
        keys = instance.get_materialized_partitions(__import__("dagster").AssetKey("document_embeddings"))
        assert len(keys) == 1
        assert instance.get_dynamic_partitions("documents") == list(keys)
        # The vector-store step took a slot of its pool (limit 1 from dagster.yaml) and gave it back.
        pool = instance.event_log_storage.get_concurrency_info("rag_vector_store")
        assert pool.slot_count == 1 and pool.active_slot_count == 0, pool
