"""The repository's dagster.yaml, as production uses it: Dagster's runs, events and schedules in
PostgreSQL (psycopg2 scheme), and a sensor-requested run completes against it."""

from __future__ import annotations

import pytest
from dagster import DagsterInstance, SensorResult

from rag_pipeline.definitions import build_definitions
from rag_pipeline.defs.storage import PooledPostgresEventLogStorage
from rag_pipeline.devtools.topology import production_home
from rag_pipeline.settings import Settings
from rag_pipeline_tests.helpers import assert_run_succeeded, tick_and_run, write_files

def test_repo_dagster_yaml_runs_on_postgres(rag_env, pg_url, tmp_path, monkeypatch):
    for key, value in production_home(tmp_path / "prod_home", pg_url).items():
        monkeypatch.setenv(key, value)

    settings = Settings.from_env()
    write_files(settings.inbox_dir, "ops", {"runbook.md": b"# Pager\n\nEscalate to the on-call lead after 15 minutes."})
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        storage = type(instance.run_storage).__name__
        assert storage == "PooledPostgresRunStorage"
        events = instance.event_log_storage
        assert isinstance(events, PooledPostgresEventLogStorage) and events._engine.dialect.driver == "psycopg2"
        with events._engine.connect() as conn:
            # Dagster's bookkeeping commits without waiting for the disk; a pooled connection is reused.
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
            first = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with events._engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() == first
        # The run and schedule storages keep their connections too (upstream opens one per call),
        # with the same settings.
        for storage in (instance.run_storage, instance.schedule_storage):
            backends = set()
            for _ in range(3):
                with storage.connect() as conn:
                    assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
                    backends.add(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar())
            assert len(backends) == 1, type(storage).__name__
        assert type(instance.schedule_storage).__name__ == "PooledPostgresScheduleStorage"
        result, runs = tick_and_run(defs, instance)
        assert isinstance(result, SensorResult) and len(runs) == 1
        run = instance.get_run_by_id(runs[0].run_id)
        assert_run_succeeded(run, instance)
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


def test_a_runs_check_evaluations_are_written_together_in_order(rag_env, pg_url, tmp_path, monkeypatch):
    """Each of a run's per-document evaluations lands on its own execution row, pointing at its
    own event, after its step's start and before the step's materializations; all of a step's
    evaluations in one transaction instead of one each."""
    import sqlalchemy as sa

    for key, value in production_home(tmp_path / "prod_home", pg_url).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", raising=False)
    settings = Settings.from_env()
    docs = {f"note{i:02d}.txt": f"Keeper {i} logged the storm of night {i}.".encode() for i in range(12)}
    write_files(settings.inbox_dir, "ops", docs)
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        _, runs = tick_and_run(defs, instance)
        [run_id] = [r.run_id for r in runs]
        keys = set(instance.get_dynamic_partitions("documents"))
        engine = instance.event_log_storage._engine
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT x.check_name, x.partition, x.execution_status, e.dagster_event_type, e.step_key, "
                "e.id, e.event FROM asset_check_executions x JOIN event_logs e ON e.id = x.evaluation_event_storage_id "
                "WHERE x.run_id = :run"), {"run": run_id}).all()
            steps = {
                step: (start, first_materialization, success)
                for step, start, first_materialization, success in conn.execute(sa.text(
                    "SELECT step_key, min(id) FILTER (WHERE dagster_event_type = 'STEP_START'), "
                    "min(id) FILTER (WHERE dagster_event_type = 'ASSET_MATERIALIZATION'), "
                    "min(id) FILTER (WHERE dagster_event_type = 'STEP_SUCCESS') "
                    "FROM event_logs WHERE run_id = :run GROUP BY step_key"), {"run": run_id})
            }
            # One "planned" event per asset for the run's 12 documents, by the storage's own
            # answer (no DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS in the environment).
            planned = conn.execute(sa.text(
                "SELECT count(*) FROM event_logs WHERE run_id = :run AND dagster_event_type = 'ASSET_MATERIALIZATION_PLANNED'"),
                {"run": run_id}).scalar()
            transactions = dict(conn.execute(sa.text(
                "SELECT step_key, count(DISTINCT xmin::text) FROM event_logs "
                "WHERE run_id = :run AND dagster_event_type = 'ASSET_CHECK_EVALUATION' GROUP BY step_key"), {"run": run_id}).all())
    by_check: dict[str, set[str]] = {}
    for check, partition, status, event_type, step, event_id, body in rows:
        assert status == "SUCCEEDED" and event_type == "ASSET_CHECK_EVALUATION", (check, partition, status)
        assert f'"{check}"' in body
        start, first_materialization, success = steps[step]
        if partition is not None:  # per document, yielded before the step's materializations
            assert f'"{partition}"' in body  # the row points at its own event
            assert start < event_id < first_materialization < success, (check, step, event_id, steps)
        by_check.setdefault(check, set()).add(partition)
    assert by_check == {
        "parsed": keys, "points_match_chunks": keys, "indexed_in_time": keys, "chunks_within_token_limit": {None},
    }
    # One transaction per check and step (Dagster's own writes: one per evaluation, 12 and 24).
    assert transactions == {"source_document": 1, "document_chunks": 1, "document_embeddings": 2}
    assert planned == 4


def test_planned_check_rows_hold_their_own_partition(tmp_path, pg_url, monkeypatch):
    """Dagster's planned row for each (check, partition) of a run carried the whole run's
    partition list: 1,000 copies of a 40 KB event per check for a run of 1,000 documents."""
    import time

    import sqlalchemy as sa
    from dagster import AssetCheckKey, AssetKey, DagsterEvent, DagsterEventType
    from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationPlanned
    from dagster._core.definitions.partitions.subset import DefaultPartitionsSubset
    from dagster._core.events.log import EventLogEntry
    from dagster._serdes import deserialize_value

    for key, value in production_home(tmp_path / "prod_home", pg_url).items():
        monkeypatch.setenv(key, value)
    keys = [f"doc-{i:04d}-" + "x" * 40 for i in range(300)]
    planned = AssetCheckEvaluationPlanned(
        asset_key=AssetKey("document_embeddings"), check_name="points_match_chunks",
        partitions_subset=DefaultPartitionsSubset(set(keys)),
    )
    event = EventLogEntry(
        error_info=None, level=10, user_message="", run_id="run-1", timestamp=time.time(),
        dagster_event=DagsterEvent(DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED.value, "index_documents",
                                   event_specific_data=planned),
    )
    from rag_pipeline.defs import storage as storage_module

    serialized = []
    real_serialize = storage_module.serialize_value
    monkeypatch.setattr(storage_module, "serialize_value", lambda value: serialized.append(1) or real_serialize(value))
    with DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        storage.store_event_batch([event])
        with storage._engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT partition, execution_status, evaluation_event FROM asset_check_executions")).all()
        history = storage.get_asset_check_execution_history(AssetCheckKey(AssetKey("document_embeddings"), "points_match_chunks"), limit=1000)
    # The event is serialized around a marker and checked on the first key, not once per row.
    assert len(serialized) == 2
    assert sorted(r.partition for r in rows) == keys and {r.execution_status for r in rows} == {"PLANNED"}
    for partition, _, body in rows:
        stored = deserialize_value(body, EventLogEntry).dagster_event.event_specific_data
        assert set(stored.partitions_subset.get_partition_keys()) == {partition}
    # Dagster's rows would hold 300 x 300 keys; these hold one each.
    assert sum(len(body) for *_, body in rows) < 300 * 2000
    assert len(history) == 300


def test_held_check_evaluations_survive_a_failed_write(tmp_path, pg_url, monkeypatch):
    """A flush that fails keeps the evaluations held; the next one writes them, once each."""
    import time

    import pytest
    import sqlalchemy as sa
    from dagster import AssetCheckEvaluation, AssetKey, DagsterEvent, DagsterEventType
    from dagster._core.events.log import EventLogEntry

    for key, value in production_home(tmp_path / "prod_home", pg_url).items():
        monkeypatch.setenv(key, value)

    def evaluation(partition: str) -> EventLogEntry:
        data = AssetCheckEvaluation(asset_key=AssetKey("document_embeddings"), check_name="points_match_chunks",
                                    passed=True, partition=partition)
        return EventLogEntry(error_info=None, level=10, user_message="", run_id="run-1", timestamp=time.time(),
                             dagster_event=DagsterEvent(DagsterEventType.ASSET_CHECK_EVALUATION.value, "index_documents",
                                                        event_specific_data=data))

    with DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        storage.store_event(evaluation("a"))
        storage.store_event(evaluation("b"))
        real = storage._connect
        monkeypatch.setattr(storage, "_connect", lambda: (_ for _ in ()).throw(RuntimeError("db blip")))
        with pytest.raises(RuntimeError, match="db blip"):
            storage.flush_check_evaluations()
        assert len(storage._held_checks) == 2
        monkeypatch.setattr(storage, "_connect", real)
        storage.flush_check_evaluations()
        with storage._engine.connect() as conn:
            events = conn.execute(sa.text("SELECT count(*) FROM event_logs WHERE run_id = 'run-1'")).scalar()
            rows = conn.execute(sa.text(
                "SELECT partition, execution_status FROM asset_check_executions WHERE run_id = 'run-1' ORDER BY 1")).all()
    assert events == 2 and [tuple(r) for r in rows] == [("a", "SUCCEEDED"), ("b", "SUCCEEDED")]


def test_held_check_evaluations_land_as_dagsters_own_updates_would(tmp_path, pg_url, monkeypatch):
    """The held evaluations update their planned rows in one statement; the result is what
    Dagster's per-row updates give: status and event per partition, the last of two
    evaluations kept, and an evaluation with no planned row (or no partition) inserted."""
    import time

    import sqlalchemy as sa
    from dagster import AssetCheckEvaluation, AssetCheckKey, AssetKey, DagsterEvent, DagsterEventType
    from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationPlanned
    from dagster._core.definitions.partitions.subset import DefaultPartitionsSubset
    from dagster._core.events.log import EventLogEntry
    from dagster._serdes import deserialize_value

    for key, value in production_home(tmp_path / "prod_home", pg_url).items():
        monkeypatch.setenv(key, value)
    asset, check = AssetKey("document_embeddings"), "points_match_chunks"

    def entry(data, kind: DagsterEventType) -> EventLogEntry:
        return EventLogEntry(error_info=None, level=10, user_message="", run_id="run-1", timestamp=time.time(),
                             dagster_event=DagsterEvent(kind.value, "index_documents", event_specific_data=data))

    def evaluation(partition: str | None, passed: bool, note: str) -> EventLogEntry:
        data = AssetCheckEvaluation(asset_key=asset, check_name=check, passed=passed, partition=partition,
                                    description=note)
        return entry(data, DagsterEventType.ASSET_CHECK_EVALUATION)

    planned = AssetCheckEvaluationPlanned(asset_key=asset, check_name=check,
                                          partitions_subset=DefaultPartitionsSubset({"a", "b", "c"}))
    with DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        storage.store_event_batch([entry(planned, DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED)])
        for event in (evaluation("a", False, "a first"), evaluation("b", False, "b"), evaluation("a", True, "a last"),
                      evaluation("z", True, "z unplanned"), evaluation(None, True, "whole")):
            storage.store_event(event)
        updates: list[str] = []
        sa.event.listen(storage._engine, "before_cursor_execute",
                        lambda conn, cursor, statement, *rest: updates.append(statement) if statement.startswith("UPDATE") else None)
        storage.flush_check_evaluations()
        with storage._engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT x.partition, x.execution_status, x.evaluation_event, e.event FROM asset_check_executions x "
                "LEFT JOIN event_logs e ON e.id = x.evaluation_event_storage_id WHERE x.run_id = 'run-1'")).all()
        history = storage.get_asset_check_execution_history(AssetCheckKey(asset, check), limit=10)
    by_partition = {r.partition: r for r in rows}
    assert {p: r.execution_status for p, r in by_partition.items()} == {
        "a": "SUCCEEDED", "b": "FAILED", "c": "PLANNED", "z": "SUCCEEDED", None: "SUCCEEDED"}
    notes = {p: deserialize_value(r.evaluation_event, EventLogEntry).dagster_event.event_specific_data.description
             for p, r in by_partition.items() if p != "c"}
    assert notes == {"a": "a last", "b": "b", "z": "z unplanned", None: "whole"}
    assert all(r.evaluation_event == r.event for p, r in by_partition.items() if p != "c")  # points at its own event
    # One for the planned partitions together; Dagster's own for the unplanned and the unpartitioned ones.
    assert len(updates) == 3 and sum(u.startswith("UPDATE asset_check_executions AS t") for u in updates) == 1
    assert len(history) == 5


def test_partition_keys_are_read_again_only_when_they_changed(pg_url, tmp_path, monkeypatch):
    """Dagster reads every partition key several times per operation (7 times to create one
    run); the storage reads them once per change. Two instances stand for two processes: what
    one adds or deletes, the other sees at its next read."""
    from dagster_postgres.event_log import PostgresEventLogStorage

    for key, value in production_home(tmp_path / "prod_home", pg_url).items():
        monkeypatch.setenv(key, value)
    reads = []
    upstream = PostgresEventLogStorage.get_dynamic_partitions

    def counted(self, name):  # noqa: ANN001, ANN202
        reads.append(name)
        return upstream(self, name)

    monkeypatch.setattr(PostgresEventLogStorage, "get_dynamic_partitions", counted)
    with DagsterInstance.get() as reader, DagsterInstance.get() as writer:
        writer.add_dynamic_partitions("documents", ["kb/a.txt", "kb/b.txt", "kb/c.txt"])
        assert reader.get_dynamic_partitions("documents") == ["kb/a.txt", "kb/b.txt", "kb/c.txt"]
        for _ in range(5):
            keys = reader.get_dynamic_partitions("documents")
        assert len(reads) == 1, "unchanged keys are not read again"
        keys.append("kb/not-a-partition.txt")  # a caller's list is its own
        assert reader.get_dynamic_partitions("documents") == ["kb/a.txt", "kb/b.txt", "kb/c.txt"]

        writer.add_dynamic_partitions("documents", ["kb/d.txt"])
        assert reader.get_dynamic_partitions("documents")[-1] == "kb/d.txt"
        writer.delete_dynamic_partition("documents", "kb/b.txt")
        assert reader.get_dynamic_partitions("documents") == ["kb/a.txt", "kb/c.txt", "kb/d.txt"]
        # Deleted and added again: the same count as before, the key now last in the order.
        writer.delete_dynamic_partition("documents", "kb/a.txt")
        writer.add_dynamic_partitions("documents", ["kb/a.txt"])
        assert reader.get_dynamic_partitions("documents") == ["kb/c.txt", "kb/d.txt", "kb/a.txt"]
        # The last key deleted, another added: the count is unchanged, the highest id is not.
        writer.delete_dynamic_partition("documents", "kb/a.txt")
        writer.add_dynamic_partitions("documents", ["kb/e.txt"])
        assert reader.get_dynamic_partitions("documents") == ["kb/c.txt", "kb/d.txt", "kb/e.txt"]
        assert reader.get_dynamic_partitions("other") == []


def test_the_daemon_looks_at_the_run_queue_every_half_second(rag_env, pg_url, tmp_path, monkeypatch):
    """dagster.yaml's PromptRunCoordinator: Dagster's queue with its concurrency settings, and a
    dequeue interval Dagster's own coordinator can only give in whole seconds."""
    from dagster._daemon.controller import create_daemon_of_type
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    from rag_pipeline.defs.run_coordinator import PromptRunCoordinator

    for key, value in production_home(tmp_path / "prod_home", pg_url).items():
        monkeypatch.setenv(key, value)
    with DagsterInstance.get() as instance:
        assert isinstance(instance.run_coordinator, PromptRunCoordinator)
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 1
        daemon = create_daemon_of_type(QueuedRunCoordinatorDaemon.daemon_type(), instance)
        assert daemon.interval_seconds == 0.5
    from dagster._serdes import ConfigurableClassData

    with pytest.raises(ValueError, match="dequeue_interval_seconds must be above 0, got 0"):
        PromptRunCoordinator.from_config_value(ConfigurableClassData("m", "c", "{}"), {"dequeue_interval_seconds": 0})
