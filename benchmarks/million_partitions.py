"""Dagster's storage at a million document partitions: what degrades, measured (issue 18, item 5).

    python benchmarks/million_partitions.py                            # 100,000, 300,000, 1,000,000
    python benchmarks/million_partitions.py --sizes 2000,5000 --json /tmp/m.json   # a smoke run
    python benchmarks/million_partitions.py --pg postgresql://postgres@127.0.0.1:5432/postgres --keep

Nothing is embedded. A fresh PostgreSQL database (`rag_bench_million_<pid>`, dropped at the end
unless --keep) holds Dagster's storage, configured as the repository's dagster.yaml configures
it (PooledPostgresEventLogStorage, dagster-postgres run and schedule storage, the queued run
coordinator), and our own tables. At each size, growing the same database, the script writes
what an ingest of that many documents leaves behind, in the shape the pipeline writes it:

  - a `documents` row per document, indexed (COPY);
  - a partition per document in the `documents` dynamic partitions definition, through
    `instance.add_dynamic_partitions` in slices of 10,000 (as planning adds them);
  - one finished run per 2,500 documents (RAG_DOCS_PER_RUN) with the partition range tags, and
    its planned events: one ASSET_MATERIALIZATION_PLANNED per asset stored through Dagster's
    `store_event`, one ASSET_CHECK_EVALUATION_PLANNED per partitioned check;
  - per document, a materialization of each of the four assets (source_document,
    document_chunks, chunk_vectors, document_embeddings) with the metadata and data-version
    tags a run attaches, and the three per-document check evaluations (parsed,
    points_match_chunks, indexed_in_time) with their `asset_check_executions` rows in the
    state a run leaves them (succeeded).

The per-document events are the rows Dagster's `store_event_batch` writes (`event_logs`, the
`dagster/data_version` row of `asset_event_tags`, the asset's `asset_keys` entry through
Dagster's own `store_asset_event`), serialized once per asset from real EventLogEntry objects
and copied per document with its key, path, id and versions substituted; Dagster reads them
back as its own (the smoke test checks). Written with COPY: storing seven million events one by
one would take longer than everything measured. Writing is setup and reported as such.

Then, at each size (median of several repetitions where a repetition is cheap):

  sensor      the partition work of a tick: every partition key read (`partition_keys()`),
              1,000 keys added and deleted again, and whole `planning.evaluate_inbox` ticks
              over an in-memory source listing every document (its listing costs nothing
              here; a folder's or a bucket's listing comes on top): unchanged with the
              previous listing's digest (idle), unchanged without it (compared row by row),
              and with one new upload (registered, partition added, run planned)
  run         a RunRequest of the sensor (partition range tags) made into a queued run by the
              daemon's own code (`_submit_run_request`, in process, code location in process)
              for a range of 100 documents and of 2,500 (a full run); then
              `documents_in_active_runs` with those runs queued
  UI          `assetNodeOrError { partitionStats assetPartitionStatuses }` of
              document_embeddings through Dagster's GraphQL in process (as
              test_partitions_ui.py): after partitions changed (Dagster's status cache is keyed
              by a hash of every partition key, so any new upload makes it rebuild) and warm
  backfill    `launchPartitionBackfill` of every partition of chunk_vectors and
              document_embeddings, no daemon running; canceled, and its row's size reported
  storage     pg_total_relation_size of every table; MB per 1,000 documents, Dagster's and ours
  memory      peak RSS of this process

Development sizes first (`--sizes 2000,5000`): a million documents write ~20 GB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import io
import json
import logging
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Sequence

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KB = "bench"
DOCS_PER_RUN = 2_500
PARTITION_SLICE = 10_000
ASSETS = ("source_document", "document_chunks", "chunk_vectors", "document_embeddings")
# The partitioned checks each document gets an evaluation of, by the asset they check.
CHECKS = (("source_document", "parsed"), ("document_embeddings", "points_match_chunks"),
          ("document_embeddings", "indexed_in_time"))
JOB = "index_documents"
sys.path.insert(0, str(Path(__file__).resolve().parent))
# The queries and table names the 100,000-document benchmark measures with, the same here.
from ingest import CANCEL_BACKFILL, LAUNCH_BACKFILL, OUR_TABLES, fresh_database  # noqa: E402
from ingest import PARTITION_STATUS as STATUS  # noqa: E402

MTIME_NS = 1_796_000_000_000_000_000
# Placeholders in the serialized templates, replaced per document: JSON-safe, found nowhere else.
P_KEY, P_PATH, P_ID, P_RUN, P_VERSION, P_DATA = "@@KEY@@", "@@PATH@@", "@@ID@@", "@@RUN@@", "@@VER@@", "@@DATA@@"


def doc_path(i: int) -> str:
    return f"part{i // 1000:04d}/doc{i:07d}.txt"


def doc_version(i: int) -> str:
    return hashlib.sha256(b"v%d" % i).hexdigest()


def doc_size(i: int) -> int:
    return 1024 + (i * 7919) % 5120


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def median_of(reps: int, fn: Callable[[], object]) -> float:
    return statistics.median(timed(fn)[0] for _ in range(reps))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the events a run writes, as templates -----------------------------------------------------


def _metadata(asset: str) -> dict:
    """What a run attaches to one document's materialization of `asset`: the step's figures
    (Dagster merges them into every partition's), then the document's own (as of
    benchmarks/ingest.py's pipeline runs, whose events average 3.8 KB)."""
    from dagster import MetadataValue

    naming = {"knowledge_base": KB, "path": P_PATH, "document_id": P_ID, "status": "processed", "version": P_VERSION}
    if asset == "source_document":
        return {"source": "folder /srv/landing", "documents_processed": DOCS_PER_RUN, **naming, "bytes": 4096,
                "characters": 4096, "sections": 1, "parser": "text", "title": "", "seconds": 0.0003, "encoding": "utf-8"}
    if asset == "document_chunks":
        preview = "| chunk | tokens | heading | page | text |\n|---:|---:|---|---:|---|\n" + "".join(
            f"| {n} | 300 |  |  | {'words of the chunk text ' * 6} |\n" for n in range(2))
        return {"documents_processed": DOCS_PER_RUN, "chunker": "tok:cl100k_base:400:60", **naming, "chunks": 2,
                "tokens": 489, "max_chunk_tokens": 321, "seconds": 0.0005, "preview": MetadataValue.md(preview)}
    if asset == "chunk_vectors":
        return {"documents_processed": DOCS_PER_RUN, "model": "text-embedding-3-small", "embedding_calls": 45,
                "texts_embedded": 5748, "embed_seconds": 8.97, "cache_hits": 0, **naming, "chunks": 2, "embedded": 2}
    return {"documents_processed": DOCS_PER_RUN, "write_seconds_batch": 4.11, "collection": "rag_chunks__f6a067780ab9",
            "search_reads": "rag_chunks__f6a067780ab9", "switched_search": False, "documents_left_to_reembed": 0,
            **naming, "points": 5, "seconds_since_upload": 87.2}


def _tags(asset: str) -> dict[str, str]:
    tags = {"dagster/code_version": f"{asset}-code", "dagster/data_version": P_DATA}
    upstream = {"document_chunks": "source_document", "chunk_vectors": "document_chunks",
                "document_embeddings": "chunk_vectors"}.get(asset)
    if upstream:
        tags[f"dagster/input_data_version/{upstream}"] = P_DATA
        tags[f"dagster/input_event_pointer/{upstream}"] = "1"
    return tags


def _entry(step: str, event_type: str, data: object, message: str, run_id: str = P_RUN):  # noqa: ANN202
    from dagster._core.definitions.dependency import NodeHandle
    from dagster._core.events import DagsterEvent
    from dagster._core.events.log import EventLogEntry
    from dagster._core.execution.plan.handle import StepHandle

    event = DagsterEvent(
        event_type_value=event_type, job_name=JOB, step_handle=StepHandle(NodeHandle(step, None)),
        step_kind_value="COMPUTE", event_specific_data=data, message=message, pid=4242,
        logging_tags={"job_name": JOB, "op_name": step, "resource_fn_name": "None", "resource_name": "None",
                      "run_id": run_id, "step_key": step},
    )
    return EventLogEntry(error_info=None, level=logging.DEBUG, user_message=message, run_id=run_id,
                         timestamp=time.time(), step_key=step, job_name=JOB, dagster_event=event)


def materialization_template(asset: str) -> str:
    from dagster import AssetMaterialization
    from dagster._core.events import StepMaterializationData
    from dagster._serdes import serialize_value

    materialization = AssetMaterialization(asset_key=asset, partition=P_KEY, metadata=_metadata(asset), tags=_tags(asset))
    return serialize_value(_entry(asset, "ASSET_MATERIALIZATION", StepMaterializationData(materialization),
                                  f"Materialized value {asset}."))


def check_template(asset: str, check: str) -> str:
    from dagster import AssetCheckEvaluation, AssetCheckSeverity, AssetKey
    from dagster._core.events import DagsterEventType
    from dagster._serdes import serialize_value

    description = f"{KB}/{P_PATH}: passed"
    evaluation = AssetCheckEvaluation(
        asset_key=AssetKey(asset), check_name=check, passed=True, severity=AssetCheckSeverity.ERROR,
        description=description, partition=P_KEY,
        metadata={"knowledge_base": KB, "path": P_PATH, "document_id": P_ID},
    )
    return serialize_value(_entry(asset, DagsterEventType.ASSET_CHECK_EVALUATION.value, evaluation,
                                  f"Asset check '{check}' on '{asset}' passed. Description: '{description}'"))


class Templates:
    def __init__(self) -> None:
        self.materialization = {asset: materialization_template(asset) for asset in ASSETS}
        self.check = {(asset, check): check_template(asset, check) for asset, check in CHECKS}


def fill(template: str, *, key: str, path: str, doc_id: str, run_id: str, version: str) -> str:
    return (template.replace(P_KEY, key).replace(P_PATH, path).replace(P_ID, doc_id).replace(P_RUN, run_id)
            .replace(P_VERSION, version).replace(P_DATA, version))


# --- writing what an ingest of N documents leaves behind --------------------------------------


class Corpus:
    """The synthetic documents, written cumulatively: documents [0, written) exist."""

    def __init__(self, instance, db_url: str) -> None:  # noqa: ANN001
        self.instance, self.db_url = instance, db_url
        self.templates = Templates()
        self.written = 0
        self.setup_seconds: dict[str, float] = {}

    def grow(self, target: int) -> dict[str, float]:
        seconds = {"documents": 0.0, "partitions": 0.0, "runs_and_events": 0.0}
        with psycopg.connect(self.db_url) as conn:
            for start in range(self.written, target, DOCS_PER_RUN):
                stop = min(target, start + DOCS_PER_RUN)
                seconds["documents"] += timed(lambda: self._documents(conn, start, stop))[0]
                seconds["partitions"] += timed(lambda: self._partitions(start, stop))[0]
                seconds["runs_and_events"] += timed(lambda: self._run(conn, start, stop))[0]
        self.written = target
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            started = time.perf_counter()
            conn.execute("ANALYZE")  # as autovacuum would, long before an operator looks
            seconds["analyze"] = time.perf_counter() - started
        return seconds

    def _documents(self, conn, start: int, stop: int) -> None:  # noqa: ANN001
        from rag_pipeline.core.identity import document_id, partition_key

        at = dt.datetime.now(dt.timezone.utc)
        columns = ("id, knowledge_base, path, version, size_bytes, mtime_ns, status, attempts, indexed_version, "
                   "indexed_config, chunk_count, detected_at, updated_at, indexed_at, revision, indexed_chunker, "
                   "registered_at, partition_key")
        with conn.cursor().copy(f"COPY documents ({columns}) FROM STDIN") as copy:
            for i in range(start, stop):
                path, version = doc_path(i), doc_version(i)
                copy.write_row((document_id(KB, path), KB, path, version, doc_size(i), MTIME_NS + i, "indexed", 0,
                                version, "bench-config", 2, at, at, at, 1, "tok:cl100k_base:400:60", at,
                                partition_key(KB, path)))
        conn.commit()

    def _partitions(self, start: int, stop: int) -> None:
        from rag_pipeline.core.identity import partition_key
        from rag_pipeline.defs.partitions import documents_partitions

        keys = [partition_key(KB, doc_path(i)) for i in range(start, stop)]
        for slice_start in range(0, len(keys), PARTITION_SLICE):
            self.instance.add_dynamic_partitions(documents_partitions.name, keys[slice_start:slice_start + PARTITION_SLICE])

    def _run(self, conn, start: int, stop: int) -> None:  # noqa: ANN001
        """One finished run over documents [start, stop), with its planned events, and every
        document's materializations and check evaluations."""
        from dagster import AssetKey
        from dagster._core.events import AssetMaterializationPlannedData, DagsterEventType
        from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
        from dagster._core.utils import make_new_run_id
        from dagster._serdes import deserialize_value, serialize_value

        from rag_pipeline.core.identity import document_id, partition_key
        from rag_pipeline.defs.dagster_internals import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
        from rag_pipeline.defs.orchestrator import DOCUMENTS_TAG, REQUEST_TAG
        from rag_pipeline.defs.partitions import documents_partitions

        from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationPlanned

        docs = [(partition_key(KB, doc_path(i)), doc_path(i), document_id(KB, doc_path(i)), doc_version(i))
                for i in range(start, stop)]
        keys = [d[0] for d in docs]
        run_id = make_new_run_id()
        self.instance.add_run(DagsterRun(
            job_name=JOB, run_id=run_id, status=DagsterRunStatus.SUCCESS,
            tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1],
                  DOCUMENTS_TAG: str(len(keys)), REQUEST_TAG: f"sensor-{uuid.uuid4().hex[:16]}"},
        ))
        subset = documents_partitions.empty_subset().with_partition_keys(keys)
        storage = self.instance.event_log_storage
        # Planned events through Dagster's own path: they move each asset's last planned id.
        for asset in ASSETS:
            storage.store_event(_entry(asset, DagsterEventType.ASSET_MATERIALIZATION_PLANNED.value,
                                       AssetMaterializationPlannedData(AssetKey(asset), partitions_subset=subset),
                                       f"{JOB} intends to materialize asset {asset}", run_id=run_id))
        planned_checks = [
            serialize_value(_entry(asset, DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED.value,
                                   AssetCheckEvaluationPlanned(asset_key=AssetKey(asset), check_name=check,
                                                               partitions_subset=subset),
                                   f"{JOB} intends to execute asset check {check} on asset {asset}", run_id=run_id))
            for asset, check in CHECKS
        ]
        at = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # Dagster stores naive UTC
        rows: list[tuple] = []
        tags: list[tuple] = []
        executions: list[tuple] = []
        last: dict[str, int] = {}
        first_id = self._reserve_ids(conn, "event_logs", len(planned_checks) + len(docs) * (len(ASSETS) + len(CHECKS)))
        next_id = first_id
        for (asset, check), event in zip(CHECKS, planned_checks):
            rows.append((next_id, run_id, event, "ASSET_CHECK_EVALUATION_PLANNED", at, asset, json.dumps([asset]), None))
            next_id += 1
        for asset in ASSETS:
            template = self.templates.materialization[asset]
            asset_key = json.dumps([asset])
            for key, path, doc_id, version in docs:
                event = fill(template, key=key, path=path, doc_id=doc_id, run_id=run_id, version=version)
                rows.append((next_id, run_id, event, "ASSET_MATERIALIZATION", at, asset, asset_key, key))
                tags.append((next_id, asset_key, "dagster/data_version", version, at))
                last[asset] = next_id
                next_id += 1
        for (asset, check) in CHECKS:
            template = self.templates.check[(asset, check)]
            asset_key = json.dumps([asset])
            for key, path, doc_id, version in docs:
                event = fill(template, key=key, path=path, doc_id=doc_id, run_id=run_id, version=version)
                rows.append((next_id, run_id, event, "ASSET_CHECK_EVALUATION", at, asset, asset_key, key))
                executions.append((asset_key, check, key, run_id, "SUCCEEDED", event, at, next_id, at))
                next_id += 1
        cur = conn.cursor()
        with cur.copy("COPY event_logs (id, run_id, event, dagster_event_type, timestamp, step_key, asset_key, "
                      "partition) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        with cur.copy("COPY asset_event_tags (event_id, asset_key, key, value, event_timestamp) FROM STDIN") as copy:
            for row in tags:
                copy.write_row(row)
        with cur.copy("COPY asset_check_executions (asset_key, check_name, partition, run_id, execution_status, "
                      "evaluation_event, evaluation_event_timestamp, evaluation_event_storage_id, create_timestamp) "
                      "FROM STDIN") as copy:
            for row in executions:
                copy.write_row(row)
        conn.commit()
        # Each asset's entry points at its last materialization, through Dagster's own update.
        by_id = {row[0]: row[2] for row in rows if row[0] in set(last.values())}
        for asset, event_id in last.items():
            storage.store_asset_event(deserialize_value(by_id[event_id]), event_id)

    @staticmethod
    def _reserve_ids(conn, table: str, n: int) -> int:  # noqa: ANN001
        """The first of n consecutive ids of `table`'s sequence (this process is its only writer)."""
        seq = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,)).fetchone()[0]
        first = conn.execute("SELECT nextval(%s)", (seq,)).fetchone()[0]
        conn.execute("SELECT setval(%s, %s)", (seq, first + n - 1))
        return int(first)


# --- the sensor's source: every document listed, in memory --------------------------------------


class ListedSource:
    """A landing zone whose listing is every synthetic document (and the uploads added by
    `upload`); its listing costs nothing, so a tick's figure is the pipeline's work alone."""

    hashed_on_detection = True
    concurrent_reads = 1
    unit = "files"

    def __init__(self) -> None:
        from rag_pipeline.core.sources import Scan

        self.scan = Scan({}, [], set(), [])
        self.content: dict[tuple[str, str], bytes] = {}

    def extend(self, start: int, stop: int) -> None:
        from rag_pipeline.core.sources import FileStat

        for i in range(start, stop):
            path = doc_path(i)
            self.scan.files[(KB, path)] = FileStat(KB, path, doc_size(i), MTIME_NS + i)

    def upload(self, path: str, data: bytes) -> None:  # noqa: D401 - the source protocol's name
        from rag_pipeline.core.sources import FileStat

        self.scan.files[(KB, path)] = FileStat(KB, path, len(data), time.time_ns())
        self.content[(KB, path)] = data

    def list(self, *, min_age_seconds: float = 0.0, max_file_bytes: int | None = None):  # noqa: ANN201
        return self.scan

    def open(self, knowledge_base: str, path: str, *, token: str | None = None):  # noqa: ANN201
        return io.BytesIO(self.content[(knowledge_base, path)])

    def describe(self) -> str:
        return "in-memory listing"

    def probe(self) -> None:
        return None


# --- the measurements -------------------------------------------------------------------------


class Workspace:
    """The project's definitions loaded in this process, as the webserver and daemon load them
    from the code server: Dagster's GraphQL and the daemon's run submission run against it."""

    def __init__(self, instance) -> None:  # noqa: ANN001
        from dagster._core.remote_origin import InProcessCodeLocationOrigin
        from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
        from dagster._core.workspace.context import WorkspaceProcessContext
        from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

        origin = InProcessCodeLocationOrigin(
            LoadableTargetOrigin(module_name="rag_pipeline.definitions", attribute="defs"), location_name="rag_pipeline"
        )
        self.process = WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin))

    def graphql(self, query: str, **variables: object) -> dict:
        from dagster_graphql.test.utils import execute_dagster_graphql

        result = execute_dagster_graphql(self.process.create_request_context(), query, variables)
        if result.errors:
            raise RuntimeError(f"GraphQL: {result.errors}")
        return result.data

    def sensor(self):  # noqa: ANN201
        [location] = [e.code_location for e in self.process.create_request_context().get_code_location_entries().values()]
        [repository] = location.get_repositories().values()
        return next(s for s in repository.get_sensors() if s.name.endswith("_sensor") and "rag/source" not in (s.tags or {}))

    def submit(self, request) -> str:  # noqa: ANN001
        """The daemon's path from a sensor's RunRequest to a queued run."""
        from dagster._core.utils import make_new_run_id
        from dagster._daemon.sensor import _submit_run_request

        run_id = make_new_run_id()
        result = _submit_run_request(run_id, request, self.process, self.sensor(), {}, logging.getLogger("bench"), None)
        if result.error_info is not None:
            raise RuntimeError(result.error_info.to_string())
        return run_id

    def close(self) -> None:
        self.process.__exit__(None, None, None)


def measure_sensor(instance, engine, source: ListedSource, settings, size: int, reps: int) -> dict:  # noqa: ANN001
    from rag_pipeline.core import planning
    from rag_pipeline.defs import sensors
    from rag_pipeline.defs.orchestrator import DagsterOrchestrator
    from rag_pipeline.defs.partitions import documents_partitions

    orchestrator = DagsterOrchestrator(instance)
    figures: dict = {}
    keys = orchestrator.partition_keys()
    assert len(keys) >= size, (len(keys), size)
    figures["partition_keys_s"] = median_of(reps, orchestrator.partition_keys)
    adds, deletes = [], []
    for rep in range(reps):
        extra = [f"{KB}/extra/s{size}/r{rep}/k{j:04d}.txt" for j in range(1_000)]
        adds.append(timed(lambda: orchestrator.add_partitions(extra))[0])
        # One statement per key, as planning retires partitions (`delete_partition`).
        deletes.append(timed(lambda: [orchestrator.delete_partition(k) for k in extra])[0])
    figures["add_1000_partitions_s"] = statistics.median(adds)
    figures["delete_1000_partitions_s"] = statistics.median(deletes)
    assert len(instance.get_dynamic_partitions(documents_partitions.name)) == len(keys)

    def tick(previous_digest: str | None):  # noqa: ANN202
        # As the sensor calls it once its cursor says the keys are readable.
        return planning.evaluate_inbox(
            orchestrator, engine, source, settings.policy, max_file_bytes=settings.max_file_bytes,
            previous_digest=previous_digest, budget=sensors.TICK_BUDGET, migrate_keys=False,
        )

    walls, digest = [], None
    for _ in range(reps):
        wall, plan = timed(lambda: tick(None))
        walls.append(wall)
        assert not plan.found.new and not plan.found.changed and plan.found.unchanged >= size, plan.found
        digest = plan.found.listing_digest
    figures["tick_compared_s"] = statistics.median(walls)
    figures["tick_compared_phases"] = {k: round(v, 3) for k, v in plan.found.seconds.items()}
    walls = []
    for _ in range(reps):
        wall, plan = timed(lambda: tick(digest))
        walls.append(wall)
        assert not plan.run_requests and plan.found.unchanged >= size
    figures["tick_idle_s"] = statistics.median(walls)
    figures["tick_idle_phases"] = {k: round(v, 3) for k, v in plan.found.seconds.items()}
    walls = []
    for rep in range(reps):
        source.upload(f"new/s{size}/upload{rep}.txt", b"A new upload among many: %d." % rep)
        wall, plan = timed(lambda: tick(digest))
        walls.append(wall)
        assert plan.added_partitions == 1 and len(plan.run_requests) == 1, (plan.added_partitions, plan.run_requests)
        digest = plan.found.listing_digest
    figures["tick_one_upload_s"] = statistics.median(walls)
    figures["tick_one_upload_phases"] = {k: round(v, 3) for k, v in plan.found.seconds.items()}
    return figures


def measure_ui(workspace: Workspace, orchestrator, size: int, reps: int) -> dict:  # noqa: ANN001
    key = {"path": ["document_embeddings"]}

    def status() -> dict:
        return workspace.graphql(STATUS, key=key)["assetNodeOrError"]["partitionStats"]

    # Partitions were added since the last query: Dagster's cache is keyed by every key's hash.
    rebuilds = [timed(status)[0]]
    marker = f"{KB}/extra/ui{size}.txt"
    orchestrator.add_partitions([marker])
    rebuilds.append(timed(status)[0])
    orchestrator.delete_partition(marker)
    rebuilds.append(timed(status)[0])
    warm = median_of(reps, status)
    stats = status()
    assert stats["numMaterialized"] >= size and stats["numPartitions"] >= size, stats
    return {"status_after_partition_change_s": statistics.median(rebuilds), "status_first_s": rebuilds[0],
            "status_warm_s": warm, "partition_stats": stats}


def read_back(instance, size: int) -> dict:  # noqa: ANN001
    """Dagster reads the written rows as its own: the last document's materialization with its
    metadata, and its check's execution record."""
    from dagster import AssetCheckKey, AssetKey, AssetRecordsFilter
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
    from dagster._core.storage.event_log.base import PartitionKeyFilter

    from rag_pipeline.core.identity import partition_key

    key = partition_key(KB, doc_path(size - 1))
    [record] = instance.fetch_materializations(
        AssetRecordsFilter(AssetKey("document_embeddings"), asset_partitions=[key]), limit=1).records
    metadata = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    assert metadata["path"] == doc_path(size - 1) and record.asset_materialization.tags["dagster/data_version"] == doc_version(size - 1)
    [execution] = instance.event_log_storage.get_asset_check_execution_history(
        AssetCheckKey(AssetKey("document_embeddings"), "indexed_in_time"), limit=1,
        partition_filter=PartitionKeyFilter(key=key))
    assert execution.status == AssetCheckExecutionRecordStatus.SUCCEEDED, execution.status
    assert execution.event.dagster_event.asset_check_evaluation_data.partition == key
    return {"read_back": key}


def measure_partitions_page(workspace: Workspace, size: int) -> dict:
    """What the asset's Partitions tab loads first: every partition key of the asset."""
    query = """
    query Keys($key: AssetKeyInput!) {
      assetNodeOrError(assetKey: $key) { ... on AssetNode { partitionKeysByDimension { partitionKeys } } }
    }"""
    wall, data = timed(lambda: workspace.graphql(query, key={"path": ["document_embeddings"]}))
    [dimension] = data["assetNodeOrError"]["partitionKeysByDimension"]
    assert len(dimension["partitionKeys"]) >= size
    return {"partition_keys_page_s": wall}


def measure_backfill(workspace: Workspace, db_url: str) -> dict:
    wall, data = timed(lambda: workspace.graphql(LAUNCH_BACKFILL, params={
        "assetSelection": [{"path": ["chunk_vectors"]}, {"path": ["document_embeddings"]}], "allPartitions": True,
        "title": "benchmark: backfill creation"}))
    launched = data["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        return {"backfill_create_s": wall, "backfill_error": launched.get("message", launched["__typename"])[:300]}
    backfill_id = launched["backfillId"]
    workspace.graphql(CANCEL_BACKFILL, id=backfill_id)
    with psycopg.connect(db_url, autocommit=True) as conn:
        [size] = conn.execute("SELECT pg_column_size(body) FROM bulk_actions WHERE key = %s", (backfill_id,)).fetchone()
        # No daemon finishes canceling it: the row goes, so the next size measures its own.
        conn.execute("DELETE FROM bulk_actions WHERE key = %s", (backfill_id,))
    return {"backfill_create_s": wall, "backfill_row_mb": size / 2**20}


def measure_runs(workspace: Workspace, instance, reps: int) -> dict:  # noqa: ANN001
    from rag_pipeline.defs.orchestrator import DagsterOrchestrator, index_request

    orchestrator = DagsterOrchestrator(instance)
    order = orchestrator.partition_keys()
    created: list[str] = []
    held: set[str] = set()
    figures: dict = {}
    for docs, repeat in ((100, reps), (DOCS_PER_RUN, 1)):
        walls = []
        for rep in range(repeat):
            # Ranges in the middle of the order, where a range's ends are looked up the slowest.
            first = max(0, len(order) // 2 - docs + rep * 100)
            held.update(order[first:first + docs])
            request = index_request(order[first:first + docs], f"bench-{uuid.uuid4().hex[:16]}")
            wall, run_id = timed(lambda: workspace.submit(request))
            walls.append(wall)
            created.append(run_id)
        figures[f"run_create_{docs}_s"] = statistics.median(walls)
    storage = instance.event_log_storage
    if hasattr(storage, "_partition_keys"):
        # The same run creation with every key read on every call, as Dagster's own storage does.
        from dagster_postgres.event_log import PostgresEventLogStorage

        storage.get_dynamic_partitions = PostgresEventLogStorage.get_dynamic_partitions.__get__(storage)
        try:
            first = max(0, len(order) // 2 - 100 + reps * 100)
            held.update(order[first:first + 100])
            request = index_request(order[first:first + 100], f"bench-{uuid.uuid4().hex[:16]}")
            wall, run_id = timed(lambda: workspace.submit(request))
            created.append(run_id)
            figures["run_create_100_keys_read_per_call_s"] = wall
        finally:
            del storage.get_dynamic_partitions
    run = instance.get_run_by_id(created[0])
    assert run is not None and run.status.value == "QUEUED", run
    # Planning's question with those runs queued: which documents do they hold?
    busy_walls = []
    for _ in range(reps):
        wall, busy = timed(lambda: orchestrator.documents_in_active_runs(functools.cache(orchestrator.partition_keys)))
        busy_walls.append(wall)
    assert busy == held, (len(busy), len(held))
    figures["documents_in_active_runs_s"] = statistics.median(busy_walls)
    for run_id in created:  # the next size starts with no run in progress
        instance.delete_run(run_id)
    return figures


def measure_storage(db_url: str, size: int) -> dict:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT relname, pg_total_relation_size(oid) FROM pg_class "
                            "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace").fetchall()
    ours = sum(s for name, s in rows if name in OUR_TABLES)
    dagster = sum(s for name, s in rows if name not in OUR_TABLES)
    return {"dagster_mb": dagster / 2**20, "ours_mb": ours / 2**20,
            "dagster_mb_per_1000": dagster / 2**20 / size * 1000, "ours_mb_per_1000": ours / 2**20 / size * 1000,
            "tables_mb": {name: round(s / 2**20, 1) for name, s in sorted(rows, key=lambda r: -r[1])[:8]}}


# --- the whole ----------------------------------------------------------------------------------


ROWS = [
    ("setup: write documents, partitions, events (s)", "setup_s", "{:.0f}"),
    ("partition_keys() (s)", "partition_keys_s", "{:.2f}"),
    ("add 1,000 partitions (s)", "add_1000_partitions_s", "{:.2f}"),
    ("delete 1,000 partitions (s)", "delete_1000_partitions_s", "{:.2f}"),
    ("tick, idle: listing digest unchanged (s)", "tick_idle_s", "{:.2f}"),
    ("tick, unchanged, compared row by row (s)", "tick_compared_s", "{:.2f}"),
    ("tick, one new upload (s)", "tick_one_upload_s", "{:.2f}"),
    ("run created from RunRequest, 100 docs (s)", "run_create_100_s", "{:.2f}"),
    ("  as Dagster reads keys (every call) (s)", "run_create_100_keys_read_per_call_s", "{:.2f}"),
    ("run created from RunRequest, 2,500 docs (s)", "run_create_2500_s", "{:.2f}"),
    ("documents_in_active_runs, runs queued (s)", "documents_in_active_runs_s", "{:.2f}"),
    ("UI status after a partition change (s)", "status_after_partition_change_s", "{:.2f}"),
    ("UI status, warm (s)", "status_warm_s", "{:.2f}"),
    ("UI partition keys of the asset (s)", "partition_keys_page_s", "{:.2f}"),
    ("backfill of every partition, created (s)", "backfill_create_s", "{:.2f}"),
    ("  its row in bulk_actions (MB)", "backfill_row_mb", "{:.1f}"),
    ("Dagster storage (MB)", "dagster_mb", "{:.0f}"),
    ("  per 1,000 documents (MB)", "dagster_mb_per_1000", "{:.2f}"),
    ("our tables (MB)", "ours_mb", "{:.0f}"),
    ("  per 1,000 documents (MB)", "ours_mb_per_1000", "{:.2f}"),
    ("peak RSS of this process (MB)", "peak_rss_mb", "{:.0f}"),
]


def table(results: dict[str, dict]) -> str:
    sizes = list(results)
    lines = [f"{'':46}" + "".join(f"{int(s):>14,}" for s in sizes)]
    for label, key, fmt in ROWS:
        cells = [results[s].get(key) for s in sizes]
        lines.append(f"{label:46}" + "".join(f"{fmt.format(c) if c is not None else '-':>14}" for c in cells))
    return "\n".join(lines)


def run(sizes: Sequence[int], admin_url: str, reps: int, keep: bool, workdir: Path, partial: Path | None) -> dict:
    database = f"rag_bench_million_{os.getpid()}"
    db_url = fresh_database(admin_url, database)
    try:
        return _run(sizes, db_url, reps, workdir, partial)
    finally:
        if keep:
            print(f"kept database {database}", file=sys.stderr)
        else:
            drop_database(admin_url, database)


def _run(sizes: Sequence[int], db_url: str, reps: int, workdir: Path, partial: Path | None) -> dict:
    from rag_pipeline.devtools.topology import production_home

    env = {
        "DATABASE_URL": db_url, "RAG_DATA_DIR": str(workdir / "data"), "RAG_INBOX_DIR": str(workdir / "inbox"),
        "QDRANT_PATH": str(workdir / "qdrant"), "RAG_EMBEDDER": "openai", "RAG_EMBEDDING_MODEL": "bench-embed",
        "RAG_EMBEDDING_DIMENSIONS": "384", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "OPENAI_API_KEY": "sk-bench-not-a-secret", "RAG_SETTLE_SECONDS": "0",
        **production_home(workdir / "home", db_url),
    }
    os.environ.update(env)
    from dagster import DagsterInstance

    from rag_pipeline.core import planning
    from rag_pipeline.core.db import open_engine
    from rag_pipeline.defs.orchestrator import DagsterOrchestrator
    from rag_pipeline.settings import Settings

    settings = Settings.from_env(env)
    engine = open_engine(db_url)
    # No run requested here is ever launched: ticks see them as in progress, not as lost, and
    # never hand their documents out again (a million documents take longer to write than
    # REREQUEST_AFTER).
    planning.LOST_AFTER = planning.REREQUEST_AFTER = dt.timedelta(days=1)
    results: dict = {"sizes": {}, "load": os.getloadavg()[0]}
    with DagsterInstance.get() as instance:
        corpus = Corpus(instance, db_url)
        source = ListedSource()
        workspace = Workspace(instance)
        try:
            for size in sizes:
                started, listed = time.perf_counter(), corpus.written
                setup = corpus.grow(size)
                source.extend(listed, size)
                figures: dict = {"setup_s": time.perf_counter() - started, "setup_phases_s": setup}
                print(f"{size:,}: written in {figures['setup_s']:.0f} s "
                      f"({', '.join(f'{k} {v:.0f}' for k, v in setup.items())})", file=sys.stderr, flush=True)
                results["sizes"][str(size)] = figures
                steps = [
                    ("read back", lambda: read_back(instance, size)),
                    ("sensor", lambda: measure_sensor(instance, engine, source, settings, size, reps)),
                    ("UI status", lambda: measure_ui(workspace, DagsterOrchestrator(instance), size, reps)),
                    ("UI partition keys", lambda: measure_partitions_page(workspace, size)),
                    ("backfill", lambda: measure_backfill(workspace, db_url)),
                    ("runs", lambda: measure_runs(workspace, instance, reps)),
                    ("storage", lambda: measure_storage(db_url, size)),
                ]
                for name, step in steps:
                    wall, step_figures = timed(step)
                    figures.update(step_figures)
                    # A run at a million documents takes most of an hour: what is done is kept.
                    print(f"{size:,}: {name} ({wall:.0f} s)", file=sys.stderr, flush=True)
                    if partial is not None:
                        partial.write_text(json.dumps(results, indent=2))
                figures["peak_rss_mb"] = peak_rss_mb()
                figures["load"] = os.getloadavg()[0]
                print(f"{size:,}: measured in {time.perf_counter() - started - figures['setup_s']:.0f} s",
                      file=sys.stderr, flush=True)
        finally:
            workspace.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,300000,1000000", help="document counts, ascending (cumulative)")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres", help="an admin URL of the server")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the cheap measurements (median)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if sizes != sorted(sizes):
        raise SystemExit("--sizes must be ascending: the database grows from one to the next")
    workdir = Path(tempfile.mkdtemp(prefix="rag-million-"))
    try:
        results = run(sizes, args.pg, args.reps, args.keep, workdir, args.json)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"Dagster storage at {', '.join(f'{s:,}' for s in sizes)} document partitions "
          f"(load {results['load']:.1f} at the start; medians of {args.reps} where repeated)")
    print(table(results["sizes"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
