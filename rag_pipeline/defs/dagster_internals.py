"""Every use of Dagster's private API (`dagster._*`), in one place, each with what it buys.

Dagster promises nothing about these across releases. The imports below are the only ones of
`dagster._*` in the project (a test checks), and `OVERRIDES` names the upstream code that each
of our replacements or subclass overrides was written against: its location, the sha256 of its
source in the Dagster release named, who depends on it and the measured gain. `drifted()`
compares them with the installed Dagster; `test_dagster_internals.py` fails when an upgrade
changed any, so an upgrade forces a review of that override instead of breaking it silently.

The replaced functions live here too (the pool-wait fix and the daemon's sensor loop); the
event log storage subclass lives in `defs/storage.py`, as Dagster's configurable-class
extension point wants, with its upstream methods registered below.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import time
from dataclasses import dataclass

# Used by defs/failures.py: a run, created finished, that records failed partitions.
from dagster._core.events import (  # noqa: F401  (re-exported)
    AssetMaterializationPlannedData,
    DagsterEvent,
    DagsterEventBatchMetadata,
    generate_event_batch_id,
)
# Used by defs/storage.py: the pooled event log with held check evaluations.
from dagster._core.events.log import EventLogEntry  # noqa: F401
# Used by defs/assets.py: a step's per-partition metadata added at once.
from dagster._core.execution.context.metadata_logging import AssetMetadataHandle, OutputMetadataAccumulator
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
# Used by defs/run_launcher.py: run monitoring's worker health from our heartbeats.
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus  # noqa: F401
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus  # noqa: F401
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable, SqlEventLogStorageTable  # noqa: F401
# Used by defs/orchestrator.py (a run over a partition range) and defs/failures.py.
from dagster._core.storage.tags import (  # noqa: F401
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    MAX_RETRIES_TAG,
    WILL_RETRY_TAG,
)
from dagster._core.utils import make_new_run_id  # noqa: F401
from dagster._record import copy  # noqa: F401
from dagster._serdes import ConfigurableClassData, serialize_value  # noqa: F401

WRITTEN_AGAINST = "1.13.27"


@dataclass(frozen=True)
class Override:
    """Upstream code one of ours replaces, extends or relies on."""

    target: str  # "module:qualified.name"
    sha256: str  # of inspect.getsource(target) in Dagster WRITTEN_AGAINST
    ours: str  # where our side lives
    gain: str  # what it buys, measured

    def current_sha256(self) -> str | None:
        module, _, name = self.target.partition(":")
        obj = importlib.import_module(module)
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
            # Once installed, the attribute is ours: the drift check is about upstream's code.
            obj = _REPLACED.get(obj, obj)
            obj = obj.fget if isinstance(obj, property) else obj
            return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()
        except (AttributeError, OSError, TypeError):
            return None


_STORAGE_GAIN = (
    "pooled connections: 55 ms -> 3.7 ms per stored asset event; check evaluations written "
    "together: a quarter of a run process's CPU at 1,000 documents, and their execution rows "
    "updated in one statement: 13% of a `rag-pipeline run` at 2,000 documents; materializations inserted by "
    "a statement compiled once: 5% of it; one planned check row per "
    "partition: asset_check_executions 638 MB -> its events' own size at 5,000 documents; partition "
    "keys read once per change: creating a run at 1,000,000 documents 16.9 s -> 1.45 s"
)
# Resolved through the subclass we extend, so code moved between it and its bases counts too.
_PG = "dagster_postgres.event_log.event_log:PostgresEventLogStorage"

OVERRIDES: tuple[Override, ...] = (
    Override(
        "dagster._core.execution.plan.instance_concurrency_context:InstanceConcurrencyContext.interval_to_next_pending_claim_check",
        "d9b44ab68eb41a99a2991cb72bdd4103cf91dec98fd3f12adf60f03941c1cc37",
        "dagster_internals.install_pool_wait",
        "a step waiting for a pool slot sleeps: a waiting run used a core (4 CPU seconds in 4 s), "
        "now under 1.5 s of it (test_pool_wait); pays once max_concurrent_runs > 1",
    ),
    Override(
        "dagster._daemon.sensor:execute_sensor_iteration_loop",
        "7960241886e0ccbf53ed04945740e9168ad3161cae17f3b202fb4196336656c0",
        "dagster_internals.set_sensor_loop (rag-dagster-daemon)",
        "the daemon looks for due sensors every 0.5 s, not 5 s: the run for one modified document "
        "was queued 4.8 s after the write, of 10.7 s until searchable, at 5,000 documents",
    ),
    *(
        Override(target, sha, "defs/run_coordinator.py PromptRunCoordinator (dagster.yaml)",
                 "a queued run waits 0-0.5 s for the dequeuer, not 0-1 s (Dagster's interval is whole seconds): "
                 "with the settle-time wait in the listing, one modified document searchable in 2.9 s (median of 8; "
                 "max 3.5) at 2,000 documents, 4.25 s before both")
        for target, sha in {
            # The daemon's dequeue interval is this property, handed to an IntervalDaemon...
            "dagster._daemon.controller:create_daemon_of_type": "9cb9c4e5e9346e0194ef8cdd411a2db62488705249706cf40573c1d850aa5c3c",
            # ...which waits between looks in slices of 0.5 s.
            "dagster._daemon.daemon:IntervalDaemon.core_loop": "c9eb0982aae8656a129252a92a0b1e36bb172297654997aa6c0dae1fbd9a3ba6",
            "dagster._core.run_coordinator.queued_run_coordinator:QueuedRunCoordinator.from_config_value": "65422d8b42e4e4f7a968c0a6247177e5b970ed25e09db078a0d499fc819c24c3",
            "dagster._core.run_coordinator.queued_run_coordinator:QueuedRunCoordinator.dequeue_interval_seconds": "1f08a57051a33e7be4ff012f8f3aa4a28e50f5c9d5f131f5da4445264517a2f4",
        }.items()
    ),
    Override(
        # Reads self._mp_ctx for the run's queue, event and process: ours sets it to the forkserver.
        "dagster._grpc.server:DagsterApiServer.StartRun",
        "ec53adf5e40c9c7c941dd936c04131705d9c1abfd5bcc34fd6c104ff1c0ebfd5",
        "dagster_internals.fork_runs (build_definitions, RAG_RUN_START)",
        "a run's process is up 0.3-0.55 s after its launch, not 1.0-1.9 s, with openai and the tokenizer "
        "loaded: at 2,000 documents one modified document searchable 6.14 -> 4.25 s and the runs' CPU "
        "31.6 -> 20.9 s (+3.2 s once for the forkserver's imports)",
    ),
    Override(
        "dagster._core.storage.partition_status_cache:build_failed_and_in_progress_partition_subset",
        "3be467aca6662280420f712158e81a003a535a0b1a1549ce64dbd37f1278852b",
        "defs/failures.py",
        "a document refused inside a good run shows as a failed partition (red), not materialized",
    ),
    *(
        Override(target, sha, "dagster_internals.add_metadata_by_partition (defs/assets.py)",
                 "a step's per-document metadata added at once: Dagster rebuilds and re-checks its whole "
                 "accumulator and lists the step's partitions at every call, quadratic in a run's documents: "
                 "9% of a `rag-pipeline run` of 2,000 documents in one run")
        for target, sha in {
            "dagster._core.execution.context.system:StepExecutionContext.add_asset_metadata": "6dff312134cdce21b8831a8093fcea9090b7a650b4db4ded5d1d4600a085447e",
            "dagster._core.execution.context.metadata_logging:OutputMetadataAccumulator._with_metadata": "af001d6acf996c48a538f562ba8bd73965f087f3c69a88d07bbcd041d649b8e9",
        }.items()
    ),
    *(
        Override(target, sha, "defs/storage.py PooledPostgresRunStorage, PooledPostgresScheduleStorage",
                 "pooled connections for the run and schedule storages: 2,028 new PostgreSQL connections "
                 "during a 2,000-document benchmark (daemon, code server, runs), their backend start-ups "
                 "most of PostgreSQL's 12-15 CPU seconds")
        for target, sha in {
            "dagster_postgres.run_storage:PostgresRunStorage.__init__": "c20e1fcd1ee52b39579bdab98f9fefa3a94acda1abf015bce303d82c78c3072a",
            "dagster_postgres.run_storage:PostgresRunStorage.from_config_value": "78ffe37ccb0d74b84ff8d78979da3213a291bcc98250eb821cca617ea8ce4913",
            "dagster_postgres.schedule_storage:PostgresScheduleStorage.__init__": "ac8f466b4e7680d54c4307b1b71fa5c73ff87d02a4ceb96f924f385948e1d225",
            "dagster_postgres.schedule_storage:PostgresScheduleStorage.from_config_value": "b7b65bacce37de15a616cf9edd650ed34bc78e5aa7a776631d42d97307374783",
        }.items()
    ),
    *(
        Override(f"{_PG}.{method}", sha, "defs/storage.py PooledPostgresEventLogStorage", _STORAGE_GAIN)
        for method, sha in {
            "__init__": "647dff00b58c122294a362d38fed84b5064aa0f4520a64e6febb167120f2b5b2",
            "store_event": "4a2e37e5871bf2c87789192abc185ecfefa37938a9e0c3d2f915c2348a77641e",
            "store_event_batch": "ff147ed514ba9786aaa35d2a9855c3d5f630ea0333ad59c01fc2b4fb7b3cec6e",
            "index_connection": "29a9ce7f3434f5acccaef8cc3cde2222480e8d4059d9cf287b4275d86efe51b3",
            "index_transaction": "d4018b0dade43e1931d35cfbc556f11cb3cab6b6b35909ffa309d40325ffa1b3",
            "has_table": "78217fbd74d0e09dcdffe21a47aa3e46cf68871be6a3348427712ffa9799f676",
            "_connect": "a1935b91a983062d59dd6b4b4f1e29daffab998ac45bbf6f5eb47bafd6a210ec",
            "claim_concurrency_slot": "cbfe2436f7e3b1e6da78e385c187c1b88c2e998a0d5f80ff6a54dee3efd5e03b",
            "_store_asset_check_evaluation_planned": "bbecef7ab5ce9d01c1bcf3f46067c9067bfe855601181eb77a6910b8483b4674",
            "store_asset_check_event": "6d148295fa69bb45416fedc187397512e6c349a18c969d2425b000480277f9b3",
            "_event_to_row": "93d47fbe7edc4f70af0df5fab8c188ad91786e0922269e0971ebdc17b0e778f4",
            "_store_asset_event_tags": "85d6f17ef04b926f1714e8ea8824966230ffdd3a89e55b61a66b8ca3db0eaa2e",
            "_store_asset_event": "2dc70ccdb0feb5be3ac7d10b5ab509739162c2451756e4332c3a542bd7497320",
            # Done in bulk by flush_check_evaluations (its UPDATE must set what this one sets).
            "_update_asset_check_evaluation": "961fd6041447b07a59713048c12c87f0741c629e195ef4d2446cdddd9f6c362f",
            "_event_insert_timestamp": "02e6947ee3f9408aeb9607d8ce8e8118770302b27e4009fcb6bfa0c28770834b",
            "dispose": "ce4ee18aa28915d164672d695df7491c416f85e087c30ba3189e08492ee3b71f",
            "get_dynamic_partitions": "00ea280370d3354eba1e4b03268ca83e6b1995312308b4a9db1f6075c7470b4f",
            # Answered True instead of by DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS.
            "supports_partition_subset_in_asset_materialization_planned_events": "76cf2433710a45efa1903551d5b87bc9f169ece1ac0f6f48f4db65094425fcbc",
        }.items()
    ),
)


def drifted() -> list[tuple[Override, str | None]]:
    """The overrides whose upstream code differs from the code they were written against
    (with its current hash; None if it is gone)."""
    return [(o, h) for o in OVERRIDES if (h := o.current_sha256()) != o.sha256]


# -- A step's per-partition metadata, added at once --------------------------------------------

def add_metadata_by_partition(context, asset_key, metadata_by_partition, *, step_keys) -> None:  # noqa: ANN001
    """`context.add_asset_metadata(metadata, partition_key=key)` for each key, with Dagster's
    checks made once: the asset is the step's, the keys are among `step_keys`, the step's
    partition keys as the caller read them (each read resolves the range against every key of
    the corpus). Where this Dagster's step context no longer looks as it did, the public call
    is made for each partition instead, with the keys read once for all of them."""
    step = getattr(context, "_step_execution_context", None)
    accumulator = getattr(step, "_metadata_accumulator", None)
    if not isinstance(accumulator, OutputMetadataAccumulator) or asset_key not in step.assets_def.keys:
        from rag_pipeline.defs.partitions import partition_keys_read_once

        with partition_keys_read_once(context.instance):
            for key, metadata in metadata_by_partition.items():
                context.add_asset_metadata(metadata, asset_key=asset_key, partition_key=key)
        return
    targeted = set(step_keys)
    stray = [key for key in metadata_by_partition if key not in targeted]
    if stray:
        raise ValueError(f"metadata for partition {stray[0]!r}, which this step does not materialize")
    merged = dict(accumulator.per_output_metadata)
    for key, metadata in metadata_by_partition.items():
        handle = AssetMetadataHandle(asset_key=asset_key, partition_key=key)
        merged[handle] = {**merged.get(handle, {}), **metadata}
    step._metadata_accumulator = OutputMetadataAccumulator(per_output_metadata=merged)


# -- The pool-wait fix ------------------------------------------------------------------------
# Dagster's in-process executor asks `interval_to_next_pending_claim_check` how long to sleep
# before re-trying a blocked pool claim, and it returns `min([0, *intervals])`: never more than
# 0, so a run whose step waits for a slot loops at full CPU until the slot frees (upstream:
# dagster-io/dagster#20367, closed unmerged). Profiled at 5,000 documents when the vector-store
# step had a one-slot pool: every waiting run spun on a core, more CPU than all our steps. The
# embedding step's pool (`rag_embedding_endpoint`) still makes runs wait once more than one run
# is allowed at a time. How often a blocked claim is re-tried comes from the event log storage.

_upstream_interval = InstanceConcurrencyContext.interval_to_next_pending_claim_check


def _interval_to_next_pending_claim_check(self: InstanceConcurrencyContext) -> float:
    if not self._pending_claims or not self._pending_timeouts:
        return 0.0
    return max(0.0, min(self._pending_timeouts.values()) - time.time())


_REPLACED: dict[object, object] = {_interval_to_next_pending_claim_check: _upstream_interval}


def _spins(method) -> bool:  # noqa: ANN001
    """Whether `method` answers 0 for a claim that is not due for another minute. A Dagster
    whose class no longer looks like this is left alone (imports must not fail over it)."""
    probe = InstanceConcurrencyContext.__new__(InstanceConcurrencyContext)
    probe._pending_claims = {"step"}
    probe._pending_timeouts = {"step": time.time() + 60}
    try:
        return method(probe) <= 0
    except Exception:
        return False


def install_pool_wait() -> bool:
    """Replace the method if it spins; True when the replacement is in place."""
    if InstanceConcurrencyContext.interval_to_next_pending_claim_check is _interval_to_next_pending_claim_check:
        return True
    if not _spins(_upstream_interval):
        return False
    InstanceConcurrencyContext.interval_to_next_pending_claim_check = _interval_to_next_pending_claim_check  # type: ignore[method-assign]
    return True


def pool_wait_installed() -> bool:
    return InstanceConcurrencyContext.interval_to_next_pending_claim_check is _interval_to_next_pending_claim_check


# -- The daemon's sensor loop -----------------------------------------------------------------
# dagster-daemon looks for due sensors once every `MIN_INTERVAL_LOOP_TIME` (5 s), a constant it
# offers no setting for. Imported only by rag-dagster-daemon (the module pulls in the daemon).

def set_sensor_loop(seconds: float) -> bool:
    """False when this Dagster no longer has the constant (the loop is then Dagster's own)."""
    from dagster._daemon import sensor as sensor_daemon

    if not isinstance(getattr(sensor_daemon, "MIN_INTERVAL_LOOP_TIME", None), (int, float)):
        return False
    sensor_daemon.MIN_INTERVAL_LOOP_TIME = seconds
    return True


def run_dagster_daemon() -> None:
    from dagster._daemon.cli import main

    main()


# -- Runs forked from a preloaded process -----------------------------------------------------
# A code server starts each run's process with multiprocessing's "spawn": a new interpreter that
# imports Dagster and our definitions before the run can begin, and the first embedding step then
# imports openai. Measured at 5,000 documents with the daemon: the run for one modified document
# was up 1.0-1.4 s after its launch, and its chunk_vectors step took 0.44 s, mostly the import.
# With "forkserver", the code server keeps one process that imported all of that once (started
# when the definitions load, beside the server) and each run is a fork of it. The runs stay the
# code server's children in Dagster's eyes (its queue, termination event and exit code), and run
# with the code the server loaded: a changed checkout takes a code server restart, as the
# definitions the UI shows already do.

_upstream_start_run = None
# Where a code server's run process begins (start_run_in_subprocess): preloaded by defs/run_preload.py.
RUN_ENTRY_MODULE = "dagster._grpc.impl"


def _forked_runs():  # noqa: ANN202
    import multiprocessing

    return multiprocessing.get_context("forkserver")


def _start_run_forked(self, request, context):  # noqa: ANN001, ANN202
    self._mp_ctx = _forked_runs()
    return _upstream_start_run(self, request, context)


def fork_runs(*, preload: tuple[str, ...]) -> bool:
    """In a code server, start runs from a forkserver that imported `preload` (started now, in
    the background, so the first run finds it ready). False where this Dagster's server no longer
    looks as it did or the platform cannot fork: runs are then spawned, as Dagster does."""
    global _upstream_start_run
    import multiprocessing
    import sys

    # Only in a code server (`dagster api grpc`, which `dagster dev`, the webserver and the daemon
    # also start for a workspace's python_module): not in a run worker, `rag-pipeline run`, a
    # test, or the forkserver and its runs, which load the definitions too.
    server_module = sys.modules.get("dagster._grpc.server")
    if server_module is None or sys.argv[1:3] != ["api", "grpc"] or multiprocessing.parent_process() is not None:
        return False
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    server = getattr(server_module, "DagsterApiServer", None)
    start_run = getattr(server, "StartRun", None)
    if start_run is None:
        return False
    if start_run is not _start_run_forked:
        _upstream_start_run = start_run
        _REPLACED[_start_run_forked] = start_run
        server.StartRun = _start_run_forked
    ctx = _forked_runs()
    ctx.set_forkserver_preload(list(preload))
    import threading
    from multiprocessing import forkserver

    threading.Thread(target=forkserver.ensure_running, name="rag-forkserver", daemon=True).start()
    return True
