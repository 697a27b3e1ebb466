"""The inbox sensor: new, changed and deleted uploads become partitions, runs and retirements."""


import datetime as dt
import functools
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from dagster import (
    AddDynamicPartitionsRequest,
    AssetCheckEvaluation,
    DagsterRunStatus,
    DefaultSensorStatus,
    DeleteDynamicPartitionsRequest,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from rag_pipeline.core import detection, records
from rag_pipeline.defs.checks import overdue_evaluation, refusal_evaluation
from rag_pipeline.defs.jobs import ensure_pools, index_documents_job
from rag_pipeline.defs.partitions import documents_partitions
from rag_pipeline.defs.purge import purge_deleted_job
from rag_pipeline.defs.resources import DatabaseResource, EmbedderResource, InboxResource

# A document requested longer ago than this and still waiting is requested again (its run was
# lost). Requested documents are otherwise never requested twice: two runs don't race for one.
REREQUEST_AFTER = dt.timedelta(minutes=10)
DOCUMENTS_TAG = "rag/documents"
MAX_REMEMBERED_PROBLEMS = 1000
# A tick walks the whole inbox. rag-dagster-daemon offers the sensor a tick every second; over
# 100,000 files a tick takes about a second, so after a tick slower than RESTLESS_TICK the
# sensor lets four times its duration pass before the next: a fifth of one core at most. Over a
# few thousand files (0.05 s) it still ticks every second.
TICK_SHARE = 0.2
RESTLESS_TICK = 0.25


def problem_digests(problems: Sequence[str]) -> list[str]:
    return [hashlib.sha256(p.encode("utf-8", "replace")).hexdigest()[:16] for p in problems]


@dataclass
class Plan:
    found: detection.Detection
    add_partitions: list[str] = field(default_factory=list)
    delete_partitions: list[str] = field(default_factory=list)
    run_requests: list[RunRequest] = field(default_factory=list)
    check_events: list[AssetCheckEvaluation] = field(default_factory=list)


def plan_runs(
    existing_partitions: Sequence[str], wanted: Sequence[str], docs_per_run: int
) -> tuple[list[str], list[RunRequest]]:
    """Partitions to add, and one run request per contiguous batch of wanted documents."""
    existing = set(existing_partitions)
    to_add = [key for key in dict.fromkeys(wanted) if key not in existing]
    order = [*existing_partitions, *to_add]
    requests = []
    for batch in detection.plan_batches(order, set(wanted), docs_per_run):
        # No run_key: Dagster would refuse to launch a key twice, but re-requesting the same
        # documents after a lost run is exactly what REREQUEST_AFTER is for.
        requests.append(
            RunRequest(
                job_name=index_documents_job.name,
                tags={
                    ASSET_PARTITION_RANGE_START_TAG: batch[0],
                    ASSET_PARTITION_RANGE_END_TAG: batch[-1],
                    DOCUMENTS_TAG: str(len(batch)),
                },
            )
        )
    return to_add, requests


ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def documents_in_active_runs(instance, partition_order: Callable[[], Sequence[str]]) -> set[str]:  # noqa: ANN001
    busy: set[str] = set()
    runs = instance.get_runs(RunsFilter(job_name=index_documents_job.name, statuses=ACTIVE))
    if not runs:
        return busy
    order = partition_order()
    position = {key: i for i, key in enumerate(order)}
    for run in runs:
        start = run.tags.get(ASSET_PARTITION_RANGE_START_TAG)
        end = run.tags.get(ASSET_PARTITION_RANGE_END_TAG)
        if start in position and end in position:
            busy.update(order[position[start] : position[end] + 1])
        else:
            busy.update(k for k in (start, end, run.tags.get("dagster/partition")) if k)
    return busy


def evaluate_inbox(
    instance, engine, inbox: InboxResource, rerequest_after: dt.timedelta | None,
    previous_digest: str | None = None, endpoint_slots: int | None = None,
) -> Plan:  # noqa: ANN001
    """Detect changes, commit them, then plan runs. Shared by the sensor and `rag-pipeline run`."""
    ensure_pools(instance, endpoint_slots)
    found = detection.detect(engine, inbox.root, inbox.settle_seconds, previous_digest, inbox.max_file_bytes)
    before = None if rerequest_after is None else records.now() - rerequest_after
    # Every partition key, read only when needed: on an idle tick over 100,000 documents the
    # read was a third of the tick.
    existing = functools.cache(lambda: instance.get_dynamic_partitions(documents_partitions.name))
    # Documents a queued or running run holds: never handed out again, parked or retired
    # under it (a run whose range names a deleted partition would fail as a whole). Worked
    # out only when some document is due for one of those: during a drop, while runs are
    # busy with everything registered, the sensor ticks every second.
    busy = functools.cache(lambda: documents_in_active_runs(instance, existing))
    # The reconciler's job, done as checks: documents given up on after max_attempts runs
    # become failed (the dead letter); late ones are reported once.
    check_events = [
        overdue_evaluation(r.id, r.error, parked=True)
        for r in records.park_exhausted(engine, inbox.max_attempts, before, busy)
    ]
    for r in records.overdue(engine, records.now() - dt.timedelta(seconds=inbox.overdue_seconds)):
        late = f"not indexed {inbox.overdue_seconds:.0f} s after upload"
        check_events.append(overdue_evaluation(r.id, f"{late}; {r.error}" if r.error else late, parked=False))
    # Files refused unread get a partition too, failed `parsed` with the reason: the UI lists
    # every upload, and says why this one was not indexed.
    check_events += [refusal_evaluation(doc_id, reason) for doc_id, reason in found.refused.items()]
    wanted = [d for d in detection.pending_documents(engine, before) if d not in busy()]
    to_add, requests = plan_runs(existing(), wanted, inbox.docs_per_run) if wanted else ([], [])
    if found.refused:
        known = {*existing(), *to_add}
        to_add += [d for d in found.refused if d not in known]
    plan = Plan(found, add_partitions=to_add, run_requests=requests, check_events=check_events)
    # Deleted documents leave the UI at once; their points and rows go in a purge run.
    gone = set(records.documents_in(engine, *records.GONE))
    if gone:
        plan.delete_partitions = [key for key in existing() if key in gone and key not in busy()]
    to_purge = detection.pending_documents(engine, before, records.DELETING)
    if to_purge:
        plan.run_requests.append(RunRequest(job_name=purge_deleted_job.name, tags={DOCUMENTS_TAG: str(len(to_purge))}))
    # Rows are committed before any run can be launched: a run never looks for a row that
    # isn't there yet.
    detection.mark_requested(engine, [*wanted, *to_purge])
    return plan


def _inbox_sensor(
    context: SensorEvaluationContext, db: DatabaseResource, inbox: InboxResource, embedder: EmbedderResource
):
    previous = json.loads(context.cursor) if context.cursor else {}
    started = time.time()
    last = previous.get("tick_seconds", 0.0)
    # Capped: a clock set back must not make the sensor rest for good.
    rest = min(last / TICK_SHARE, last / TICK_SHARE - (started - previous.get("ticked_at", 0.0)))
    if last > RESTLESS_TICK and rest > 0:
        return SensorResult(skip_reason=f"resting {rest:.1f} s after a {last:.1f} s tick", cursor=context.cursor)
    plan = evaluate_inbox(
        context.instance, db.engine, inbox, REREQUEST_AFTER, previous.get("listing"), embedder.concurrency
    )
    found = plan.found
    for doc_id, reason in found.refused.items():
        context.log.warning(f"document {doc_id} refused: {reason}")
    # Problems that are not documents (a file outside any knowledge base, an unlistable folder)
    # are seen on every tick; each is logged when it appears, not every ten seconds after.
    reported, seen = problem_digests(found.problems), set(previous.get("problems", ()))
    for problem, digest in zip(found.problems, reported):
        if digest not in seen:
            context.log.warning(problem)
    # Saved only once this tick's registrations are committed, so a crashed tick re-detects.
    cursor = json.dumps({
        "listing": found.listing_digest, "problems": reported[:MAX_REMEMBERED_PROBLEMS],
        "ticked_at": started, "tick_seconds": round(time.time() - started, 3),
    })
    partition_requests = []
    if plan.add_partitions:
        partition_requests.append(AddDynamicPartitionsRequest(documents_partitions.name, plan.add_partitions))
    if plan.delete_partitions:
        partition_requests.append(DeleteDynamicPartitionsRequest(documents_partitions.name, plan.delete_partitions))
    if not plan.run_requests and not partition_requests:
        return SensorResult(
            skip_reason=f"no changes ({found.unchanged} files unchanged"
            + (f", {len(found.problems)} problem(s) in the sensor log" if found.problems else "") + ")",
            cursor=cursor, asset_events=plan.check_events,
        )
    context.log.info(
        f"{len(found.new)} new, {len(found.changed)} changed, {len(found.deleted)} deleted; "
        f"{len(plan.run_requests)} run(s) requested"
    )
    return SensorResult(
        run_requests=plan.run_requests, dynamic_partitions_requests=partition_requests, cursor=cursor,
        asset_events=plan.check_events,
    )


def inbox_sensor_def(interval_seconds: int = 1) -> SensorDefinition:
    """The sensor, due every `interval_seconds` (RAG_SENSOR_INTERVAL_SECONDS). dagster-daemon
    evaluates sensors in a loop that runs every 5 s; with a minimum interval of exactly 5 the
    loop's jitter finds the sensor not yet due every other time, and an upload waited 10 s for
    its tick (measured: 9.7 s of the 15.9 s from a write to searchable). Under 5, every loop
    is a tick. A tick with nothing new costs one directory walk and its digest (0.75 to 1.2 s
    over 100,000 files; partition keys are not read)."""
    return sensor(
        name="inbox_sensor",
        jobs=[index_documents_job, purge_deleted_job],
        minimum_interval_seconds=interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Watches the landing directory; registers new, changed and deleted uploads, "
        "requests index runs in batches and purges deleted documents.",
    )(_inbox_sensor)
