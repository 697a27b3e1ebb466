"""Dagster's PostgreSQL event log, with a connection pool.

dagster-postgres opens a fresh connection for every event it stores (NullPool), so that an
idle instance holds none. A run over 200 documents stores about 2,000 events (a materialization
per asset and partition, the per-document checks, planned events), and a new PostgreSQL
connection costs far more than the insert: measured here, 55 ms per stored asset event with
NullPool and synchronous commit, 7 ms pooled, 3.7 ms pooled with `synchronous_commit=off` (set
in dagster.yaml for Dagster's bookkeeping only). This class keeps a few connections per process
(storing one event can nest a second), checked before use so a restarted database costs a
reconnect, not a failed run. It also remembers which of Dagster's tables exist: the event log
asks before every asset event (profiled at a quarter of a run's event storage) and tables are
created by migrations, never dropped under a running instance.

A step blocked on a pool slot re-tries its claim every `claim_recheck_seconds` (Dagster backs
off from 1 s towards 15 s, and the slot of our one-writer vector-store pool then sat idle for
seconds between runs; a claim is one indexed query).

Every partition key: Dagster reads them all, in order, wherever it resolves a range or hashes the
keys into its partition status cache's identity, several times for one operation; a run's
creation read them 7 times (4 assets, 3 partitioned checks). Measured with
benchmarks/million_partitions.py: one read took 0.22 s at 100,000 documents, and creating a run
of 100 documents 3.4 s. Here the keys are read once per change: each read first asks for the
partitions' count and highest id (one index scan), which any addition or deletion changes (ids
only grow), and the keys are read again only when that changed: a run of 100 documents was
created in 1.45 s at 1,000,000 documents, 16.9 s with every key read per call. A process holds one copy of the
keys of each partitions definition it has read (about 100 bytes a key).

Statistics of the tables a run writes per document are refreshed when a process opens the
storage and they have fallen behind (see `refresh_stale_statistics`).

Asset checks: a run over 1,000 documents evaluates each per-document check 1,000 times. Dagster
stores each evaluation alone (an insert, a NOTIFY and an update, each on its own connection
checkout): profiled at a quarter of a run process's CPU. Here evaluations made inside a run are
held and written together, in one transaction, before the next event of any other kind (the
step's materializations or its end), so the event log keeps their order. And when a run is
created Dagster writes one planned row per check and partition, each holding the whole planned
event with every partition key of the run: 1,000 copies of a 40 KB event per check per run
(asset_check_executions reached 638 MB at 5,000 documents, its rows written by the daemon that
serialized each copy). Each row here holds the event for its own partition.
"""

from __future__ import annotations

import json
import logging
import threading
from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterator, Mapping, Sequence

from dagster import DagsterEventType, Field, IntSource
from dagster_postgres.event_log import PostgresEventLogStorage
from dagster_postgres.run_storage import PostgresRunStorage
from dagster_postgres.schedule_storage import PostgresScheduleStorage
from dagster_postgres.utils import create_pg_engine, get_token_provider_from_config, pg_config, pg_url_from_config
from sqlalchemy import text
from sqlalchemy.engine import Engine

from rag_pipeline import embedded_pg
from rag_pipeline.defs import tuning
from rag_pipeline.defs.dagster_internals import (
    AssetCheckExecutionRecordStatus,
    AssetCheckExecutionsTable,
    ConfigurableClassData,
    EventLogEntry,
    SqlEventLogStorageTable,
    copy,
    serialize_value,
)

# Tables that gain rows per document and are then looked up by key, per document.
PER_DOCUMENT_TABLES = ("asset_check_executions", "event_logs", "asset_event_tags", "dynamic_partitions")


def refresh_stale_statistics(engine: Engine, tables: tuple[str, ...] = PER_DOCUMENT_TABLES) -> list[str]:
    """ANALYZE those of `tables` changed by more than a tenth since their last analysis.

    A large drop grows these tables faster than autovacuum re-analyzes them (it looks once a
    minute). On stale statistics PostgreSQL answered each check evaluation's UPDATE of
    asset_check_executions through the wrong index, walking every earlier evaluation of the
    check: 1.3 ms at 5,000 documents and growing with the corpus, 0.04 ms once analyzed.
    Each run process opens the storage, so during an ingest this runs every few runs.
    Returns the tables analyzed; never fails the caller (another process may hold the lock)."""
    analyzed = []
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT relname FROM pg_stat_user_tables WHERE relname = ANY(:tables) "
                    "AND n_mod_since_analyze > GREATEST(1000, n_live_tup / 10)"
                ),
                {"tables": list(tables)},
            ).scalars().all()
            conn.execute(text("SET lock_timeout = '200ms'"))
            try:
                for table in rows:
                    conn.execute(text(f'ANALYZE "{table}"'))  # names from the fixed list above
                    analyzed.append(table)
            finally:  # the connection goes back to the pool
                conn.execute(text("RESET lock_timeout"))
    except Exception:  # a concurrent ANALYZE, a restarting database: the next process does it
        logging.getLogger(__name__).debug("statistics refresh skipped", exc_info=True)
    return analyzed


class PooledPostgresEventLogStorage(PostgresEventLogStorage):
    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
        pool_size: int = 2,
        max_overflow: int = 3,
        claim_recheck_seconds: float = 0.5,
        check_batch_size: int = 1000,
    ) -> None:
        # Every process that stores a run's events or creates runs builds this storage (from
        # dagster.yaml): the Dagster settings our runs need go in with it (defs/tuning.py).
        tuning.install()
        # On the data folder's embedded server (the default), the first process starts it.
        embedded_pg.ensure_for_url(postgres_url)
        # Before the parent's __init__, which may store nothing but does call our overrides.
        self._held_checks: list[EventLogEntry] = []
        self._held_lock = threading.RLock()
        self._check_batch_size = check_batch_size
        self._shared = threading.local()
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)
        self._engine.dispose()
        self._engine = create_pg_engine(
            self.postgres_url, token_provider, isolation_level="AUTOCOMMIT", pool_size=pool_size,
            max_overflow=max_overflow, pool_pre_ping=True, pool_recycle=1800,
        )
        self._tables_present: set[str] = set()
        self._partition_keys: dict[str, tuple[tuple[int, int], list[str]]] = {}
        self._partition_keys_lock = threading.Lock()
        self._claim_recheck_seconds = claim_recheck_seconds
        refresh_stale_statistics(self._engine)

    def claim_concurrency_slot(self, concurrency_key: str, run_id: str, step_key: str, priority: int | None = None):
        status = super().claim_concurrency_slot(concurrency_key, run_id, step_key, priority)
        if status.is_claimed or status.sleep_interval is not None:
            return status
        return status.with_sleep_interval(self._claim_recheck_seconds)

    def dispose(self) -> None:
        try:
            self.flush_check_evaluations()
        finally:
            # A disposed instance leaves no session behind (NullPool never had any to leave).
            super().dispose()
            self._engine.dispose()

    # -- check evaluations made in a run, written together -------------------------------------

    def store_event(self, event: EventLogEntry) -> None:
        if _held_back(event):
            with self._held_lock:
                self._held_checks.append(event)
                if len(self._held_checks) >= self._check_batch_size:
                    self.flush_check_evaluations()
            return
        if self._held_checks:  # held ones go first: the event log keeps the order they came in
            self.flush_check_evaluations()
        super().store_event(event)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        if self._held_checks:
            self.flush_check_evaluations()
        if not events or {e.get_dagster_event().event_type for e in events} != {DagsterEventType.ASSET_MATERIALIZATION}:
            return super().store_event_batch(events)
        # dagster-postgres's own path for a batch of materializations, but its events are
        # inserted as one executemany of a statement compiled once, instead of one INSERT with
        # a VALUES row per event compiled anew for every batch: 5% of a run of 2,000 documents.
        events = [e for e in events if not e.get_dagster_event().is_asset_failed_to_materialize]
        if not events:
            return
        with self._connect() as conn:
            ids = conn.execute(_INSERT_EVENTS, [self._event_to_row(e) for e in events]).scalars().all()
        with self.index_transaction() as conn:
            self._store_asset_event_tags(conn, events, ids)
            self._store_asset_event(conn, events[-1], ids[-1])  # the asset's row names its latest

    def flush_check_evaluations(self) -> None:
        """Write the held evaluations: one insert into the event log (committed at once, so
        their ids become visible in order), then their execution rows in one UPDATE joined to
        the batch (Dagster updates each row alone: 6,000 updates were 13% of a `rag-pipeline
        run` of 2,000 documents, compiled and sent one by one). An evaluation without a partition,
        or whose planned row is missing, takes Dagster's own per-row update, which inserts the
        row. A failed insert keeps them held for the next try. Held evaluations of a run
        process killed outright are lost with it, as its step is: the retried run evaluates
        again."""
        with self._held_lock:
            events = self._held_checks
            if not events:
                return
            rows = [self._event_to_row(event) for event in events]  # each event serialized once
            with self._connect() as conn:
                ids = conn.execute(_INSERT_EVENTS, rows).scalars().all()
            self._held_checks = []
            stored = [(event, int(i), row["event"]) for event, i, row in zip(events, ids, rows)]
            try:
                with self.index_transaction() as conn, self._sharing(conn):
                    for event, event_id, _ in self._update_check_rows(conn, stored):
                        self.store_asset_check_event(event, event_id)
            except Exception:
                logging.getLogger(__name__).warning("check evaluations updated one by one", exc_info=True)
                for event, event_id, _ in stored:
                    self.store_asset_check_event(event, event_id)

    def _update_check_rows(self, conn: Any, stored: list[tuple[EventLogEntry, int, str]]) -> list:
        """What Dagster's per-evaluation update does, for every partitioned evaluation at once;
        returns those it did not update. Of several evaluations of one check and partition
        in a run, the last is kept, as Dagster's updates in turn would leave it."""
        latest: dict[tuple, int] = {}
        for position, (event, _, _) in enumerate(stored):
            evaluation = event.dagster_event.event_specific_data  # type: ignore[union-attr]
            if evaluation.partition is not None:
                key = (evaluation.asset_key.to_string(), evaluation.check_name, event.run_id, evaluation.partition)
                latest[key] = position
        if not latest:
            return stored
        params: dict[str, list] = {name: [] for name in _CHECK_UPDATE_COLUMNS}
        for (asset_key, check_name, run_id, partition), position in latest.items():
            event, event_id, serialized = stored[position]
            evaluation = event.dagster_event.event_specific_data  # type: ignore[union-attr]
            target = evaluation.target_materialization_data
            status = AssetCheckExecutionRecordStatus.SUCCEEDED if evaluation.passed else AssetCheckExecutionRecordStatus.FAILED
            row = (position, asset_key, check_name, run_id, partition, status.value, serialized,
                   self._event_insert_timestamp(event), event_id, target.storage_id if target else None)
            for name, value in zip(_CHECK_UPDATE_COLUMNS, row):
                params[name].append(value)
        updated = set(conn.execute(_CHECK_UPDATE, params).scalars().all())
        kept = set(latest.values())
        # Left: the unpartitioned, and the last of a partition whose planned row was missing
        # (the earlier evaluations of a partition are superseded: their events stay in the log).
        return [
            one for p, one in enumerate(stored)
            if one[0].dagster_event.event_specific_data.partition is None or (p in kept and p not in updated)  # type: ignore[union-attr]
        ]

    @contextmanager
    def _sharing(self, conn: Any) -> Iterator[None]:
        previous, self._shared.conn = getattr(self._shared, "conn", None), conn
        try:
            yield
        finally:
            self._shared.conn = previous

    def index_connection(self) -> ContextManager[Any]:
        conn = getattr(self._shared, "conn", None)
        return nullcontext(conn) if conn is not None else super().index_connection()

    def _store_asset_check_evaluation_planned(self, event: EventLogEntry, event_id: int | None) -> None:
        """Dagster's rows (one per partition, in one insert), each with its own partition's event."""
        planned = event.dagster_event.event_specific_data  # type: ignore[union-attr]
        subset = planned.partitions_subset
        if subset is None or len(subset) <= 1:
            return super()._store_asset_check_evaluation_planned(event, event_id)

        def own(key: str) -> str:
            one = copy(planned, partitions_subset=subset.empty_subset().with_partition_keys([key]))
            return serialize_value(event._replace(dagster_event=event.dagster_event._replace(event_specific_data=one)))

        keys = list(subset.get_partition_keys())
        # Each row's event differs from the others by its key alone: serialized once around a
        # marker, the key put in its place (serializing a copy per partition was 5% of a
        # 2,000-document run's CPU). Checked against the real serialization of the first key.
        template = own(_KEY_MARKER)
        quoted = json.dumps(_KEY_MARKER)

        def fill(key: str) -> str:
            return template.replace(quoted, json.dumps(key))

        if template.count(quoted) != 1 or fill(keys[0]) != own(keys[0]):
            fill = own  # noqa: F811  (a serialization this shortcut does not fit)

        common = dict(
            asset_key=planned.asset_key.to_string(), check_name=planned.check_name, run_id=event.run_id,
            execution_status=AssetCheckExecutionRecordStatus.PLANNED.value,
            evaluation_event_timestamp=self._event_insert_timestamp(event), evaluation_event_storage_id=event_id,
        )
        with self.index_connection() as conn:
            # An executemany of one cached statement: a VALUES row per partition is compiled anew.
            conn.execute(AssetCheckExecutionsTable.insert(), [dict(common, partition=key, evaluation_event=fill(key)) for key in keys])

    @property
    def supports_partition_subset_in_asset_materialization_planned_events(self) -> bool:
        # A run over N document partitions otherwise stores N "materialization planned" events
        # per asset at creation, each resolving the range by reading every partition key:
        # profiled as the daemon's main cost while it queued a 5,000-document drop. With this
        # it stores one per asset, naming the range (upstream reads the same answer from the
        # DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS environment variable). What it gives
        # up, Dagster marking the partitions failed when a whole run fails, our own status,
        # checks and retries cover.
        return True

    def get_dynamic_partitions(self, partitions_def_name: str) -> Sequence[str]:
        """Every key of the definition, in order; read from storage only when the keys changed."""
        with self.index_connection() as conn:
            # The version is read before the keys: a change between the two leaves a newer list
            # under an older version, which the next call re-reads; never the other way round.
            count, last_id = conn.execute(
                text("SELECT count(*), coalesce(max(id), 0) FROM dynamic_partitions WHERE partitions_def_name = :name"),
                {"name": partitions_def_name},
            ).one()
        version = (int(count), int(last_id))
        cached = self._partition_keys.get(partitions_def_name)
        if cached is None or cached[0] != version:
            keys = list(super().get_dynamic_partitions(partitions_def_name))
            with self._partition_keys_lock:
                self._partition_keys[partitions_def_name] = cached = (version, keys)
        return list(cached[1])  # a copy: a caller may change its list, never ours

    def has_table(self, table_name: str) -> bool:
        if table_name not in self._tables_present and super().has_table(table_name):
            self._tables_present.add(table_name)
        return table_name in self._tables_present

    @classmethod
    def config_type(cls) -> Mapping[str, Any]:
        return {
            **pg_config(),
            "pool_size": Field(IntSource, is_required=False, default_value=2,
                               description="Connections kept open per process."),
            "max_overflow": Field(IntSource, is_required=False, default_value=3,
                                  description="Extra connections while several threads store events at once."),
            "claim_recheck_seconds": Field(float, is_required=False, default_value=0.5,
                                           description="How often a step blocked on a pool slot claims again."),
            "check_batch_size": Field(IntSource, is_required=False, default_value=1000,
                                      description="Check evaluations of a run held back and written together, at most."),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> "PooledPostgresEventLogStorage":
        return cls(
            pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            inst_data=inst_data,
            token_provider=get_token_provider_from_config(config_value),
            pool_size=config_value.get("pool_size", 2),
            max_overflow=config_value.get("max_overflow", 3),
            claim_recheck_seconds=config_value.get("claim_recheck_seconds", 0.5),
            check_batch_size=config_value.get("check_batch_size", 1000),
        )


class _Pooled:
    """dagster-postgres's run or schedule storage, with a small connection pool. Upstream opens a
    new connection for every call (NullPool), so that an idle instance holds none; but the
    daemon (queue, sensors, run monitoring), the code server and every run call these storages
    several times a second. Measured with benchmarks/ingest.py at 2,000 documents: 2,028 new
    connections to PostgreSQL, whose backend start-ups made most of its 12-15 CPU seconds
    (its statements took 2.7 s). Checked before use (a restarted database costs a reconnect)."""

    def __init__(self, postgres_url: str, should_autocreate_tables: bool = True,
                 inst_data: ConfigurableClassData | None = None, token_provider: Any = None) -> None:
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)  # type: ignore[call-arg]
        self._engine.dispose()
        self._engine = create_pg_engine(
            self.postgres_url, token_provider, isolation_level="AUTOCOMMIT", pool_size=2, max_overflow=3,
            pool_pre_ping=True, pool_recycle=1800,
        )

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]):  # noqa: ANN206
        # Upstream's builds its own class by name; this builds the configured one.
        return cls(pg_url_from_config(config_value), config_value.get("should_autocreate_tables", True), inst_data,
                   get_token_provider_from_config(config_value))

    def dispose(self) -> None:
        upstream = getattr(super(), "dispose", None)
        if upstream is not None:
            upstream()
        self._engine.dispose()  # a disposed instance leaves no session behind


class PooledPostgresRunStorage(_Pooled, PostgresRunStorage):
    """dagster-postgres's run storage with a connection pool."""


class PooledPostgresScheduleStorage(_Pooled, PostgresScheduleStorage):
    """dagster-postgres's schedule storage with a connection pool."""


class _EmbeddedServerFirst:
    """Starts the data folder's embedded server, if the storage's URL names one, before
    dagster-postgres's storage connects: any process may be the first to open the instance
    (`dagster dev`, the daemon, a run worker). The config is dagster-postgres's own."""

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]):  # noqa: ANN206
        embedded_pg.ensure_for_url(pg_url_from_config(config_value))
        # `inst_data` names this class, so every process the instance is handed to (run
        # workers) starts the server too.
        return super().from_config_value(inst_data, config_value)  # type: ignore[misc]


class EmbeddedPostgresRunStorage(_EmbeddedServerFirst, PooledPostgresRunStorage):
    """The pooled run storage on the embedded server."""


class EmbeddedPostgresScheduleStorage(_EmbeddedServerFirst, PooledPostgresScheduleStorage):
    """The pooled schedule storage on the embedded server."""


_KEY_MARKER = "rag-pipeline:partition-key-marker"

# Events inserted in order, their ids returned in that order (SQLAlchemy's insertmanyvalues).
_INSERT_EVENTS = SqlEventLogStorageTable.insert().returning(SqlEventLogStorageTable.c.id, sort_by_parameter_order=True)

# The bulk form of Dagster's `_update_asset_check_evaluation` (sql_event_log.py): the same
# columns set, matched by its unique index (asset key, check, run, partition).
_CHECK_UPDATE_COLUMNS = ("ord", "asset_key", "check_name", "run_id", "part", "status", "event", "ts", "event_id", "mat_id")
_CHECK_UPDATE = text(
    "UPDATE asset_check_executions AS t SET execution_status = v.status, evaluation_event = v.event, "
    "evaluation_event_timestamp = v.ts, evaluation_event_storage_id = v.event_id, "
    "materialization_event_storage_id = v.mat_id "
    "FROM unnest(CAST(:ord AS int[]), CAST(:asset_key AS text[]), CAST(:check_name AS text[]), "
    "CAST(:run_id AS text[]), CAST(:part AS text[]), CAST(:status AS text[]), CAST(:event AS text[]), "
    "CAST(:ts AS timestamp[]), CAST(:event_id AS bigint[]), CAST(:mat_id AS bigint[])) "
    "AS v(ord, asset_key, check_name, run_id, part, status, event, ts, event_id, mat_id) "
    "WHERE t.asset_key = v.asset_key AND t.check_name = v.check_name AND t.run_id = v.run_id "
    "AND t.partition = v.part RETURNING v.ord"
)


def _held_back(event: EventLogEntry) -> bool:
    # Only a run's: the sensor's evaluations (no run) are written at once, as Dagster does.
    return bool(event.run_id) and event.is_dagster_event and event.dagster_event_type == DagsterEventType.ASSET_CHECK_EVALUATION
