"""The inbox sensor: new, changed and deleted uploads become partitions, runs and retirements."""


import datetime as dt
import functools
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Sequence

from dagster import (
    AssetCheckEvaluation,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from rag_pipeline.core import detection, records
from rag_pipeline.core.batching import batched
from rag_pipeline.defs.checks import overdue_evaluation, refusal_evaluation
from rag_pipeline.defs.jobs import ensure_pools, index_documents_job
from rag_pipeline.defs.partitions import documents_partitions
from rag_pipeline.defs.purge import purge_deleted_job
from rag_pipeline.defs.resources import DatabaseResource, EmbedderResource, InboxResource

# Hand-offs made before request tokens existed (and documents a UI backfill took up itself)
# carry no token: they are handed out again after this long.
REREQUEST_AFTER = dt.timedelta(minutes=10)
# A hand-off whose runs all ended and left documents pending (an endpoint outage outlasted
# Dagster's run retries) is released this long after its last run ended: an outage costs a
# failed run every half minute or so, and its end costs at most this wait.
RETRY_AFTER = dt.timedelta(seconds=15)
# Runs of a sensor hand-off are created by the daemon right after the tick that made it, and
# before the sensor's next tick; one that still has none this long after was lost (a tick past
# its deadline, a daemon crash, `dagster sensor preview`).
LOST_AFTER = dt.timedelta(seconds=2)
DOCUMENTS_TAG = "rag/documents"
REQUEST_TAG = "rag/request"
# QueuedRunCoordinator launches higher priorities first: a deletion leaves search before any
# index run queued beside it starts.
PURGE_PRIORITY = {"dagster/priority": "10"}
MAX_REMEMBERED_PROBLEMS = 1000
# Index runs waiting in the queue, at most: the sensor hands out more only as they start. The
# daemon creates a tick's runs before the next tick (10 to 14 s each for 2,500 documents on a
# loaded 2-core machine: eight of them held the sensor for 100 s), and a deep queue makes no run
# start sooner. The rest stays pending, handed out oldest first as runs start.
QUEUE_AHEAD = 2
# What one tick registers and hands out at most; the next tick continues. Dagster fails an
# evaluation past 60 s. With 20,000 files and 15 s of hashing a tick took 17 to 20 s on an idle
# 2-core machine, but one timed out under a load average of 10 (registering and handing out
# 20,000 files after the hashing clock ran out took as long again, five times slower). 5,000
# files keep the work after the clock small; 100,000 files are 20 ticks.
TICK_BUDGET = detection.Budget(files=5_000, seconds=10.0)
# A tick walks the whole inbox. rag-dagster-daemon offers the sensor a tick every second; over
# 100,000 files an idle tick takes about a second, so after an idle tick slower than
# RESTLESS_TICK the sensor lets four times its duration pass before the next: a fifth of one
# core at most. Over a few thousand files (0.05 s) it still ticks every second, and a tick that
# found work is followed at once by the next.
TICK_SHARE = 0.2
RESTLESS_TICK = 0.25


def problem_digests(problems: Sequence[str]) -> list[str]:
    return [hashlib.sha256(p.encode("utf-8", "replace")).hexdigest()[:16] for p in problems]


@dataclass
class Plan:
    found: detection.Detection
    added_partitions: int = 0
    deleted_partitions: int = 0
    released: int = 0
    retiring: bool = False  # partitions of deleted documents are left for the next tick
    run_requests: list[RunRequest] = field(default_factory=list)
    check_events: list[AssetCheckEvaluation] = field(default_factory=list)


ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def new_token(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def documents_in_active_runs(instance, partition_order: Callable[[], Sequence[str]]) -> set[str]:  # noqa: ANN001
    """Documents any queued or running run holds (ours, a UI materialization, a backfill)."""
    busy: set[str] = set()
    runs = instance.get_runs(RunsFilter(statuses=ACTIVE))
    ranged = [r for r in runs if r.tags.get(ASSET_PARTITION_RANGE_START_TAG) or r.tags.get("dagster/partition")]
    if not ranged:
        return busy
    order = partition_order()
    position = {key: i for i, key in enumerate(order)}
    for run in ranged:
        start = run.tags.get(ASSET_PARTITION_RANGE_START_TAG)
        end = run.tags.get(ASSET_PARTITION_RANGE_END_TAG)
        if start in position and end in position:
            busy.update(order[position[start] : position[end] + 1])
        else:
            busy.update(k for k in (start, end, run.tags.get("dagster/partition")) if k)
    return busy


def handoffs_to_release(instance, engine, at: dt.datetime) -> list[str]:  # noqa: ANN001
    """Tokens of hand-offs whose documents no run is working on any more: the runs never
    appeared (LOST_AFTER; for a `rag-pipeline run` in progress, which creates its runs one after
    another, REREQUEST_AFTER), or they all ended RETRY_AFTER ago and left documents behind."""
    outstanding = {h.token: h for h in records.handoffs(engine, at - LOST_AFTER)}
    if not outstanding:
        return []
    runs: dict[str, list] = {}
    for record in instance.get_run_records(RunsFilter(tags={REQUEST_TAG: list(outstanding)})):
        runs.setdefault(record.dagster_run.tags.get(REQUEST_TAG), []).append(record)
    release = []
    for token, handoff in outstanding.items():
        token_runs = runs.get(token, [])
        if not token_runs:
            lost_after = REREQUEST_AFTER if token.startswith("cli-") else LOST_AFTER
            if handoff.requested_at < at - lost_after:
                release.append(token)
        elif all(r.dagster_run.status not in ACTIVE for r in token_runs):
            ended = max((r.end_time or 0.0) for r in token_runs)
            if ended < (at - RETRY_AFTER).timestamp():
                release.append(token)
    return release


def index_request(batch: Sequence[str], token: str) -> RunRequest:
    # No run_key: Dagster would refuse to launch a key twice, but handing out the same
    # documents again after a lost or failed run is exactly what release is for.
    return RunRequest(
        job_name=index_documents_job.name,
        tags={
            ASSET_PARTITION_RANGE_START_TAG: batch[0],
            ASSET_PARTITION_RANGE_END_TAG: batch[-1],
            DOCUMENTS_TAG: str(len(batch)),
            REQUEST_TAG: token,
        },
    )


def evaluate_inbox(
    instance, engine, inbox: InboxResource, *, previous_digest: str | None = None,  # noqa: ANN001
    endpoint_slots: int | None = None, budget: detection.Budget = detection.Budget(),
    take_all: bool = False, token_prefix: str = "sensor", retiring: bool = False,
) -> Plan:
    """Detect changes, commit them, apply the partition changes, then plan runs. Shared by the
    sensor and `rag-pipeline run` (`take_all`: every pending document not in a run in
    progress, whatever hand-off it is in). Every step is bounded by `budget`, so a tick ends
    inside its deadline however large the drop; the next tick continues."""
    ensure_pools(instance, endpoint_slots)
    found = detection.detect(
        engine, inbox.source, inbox.settle_seconds, previous_digest, inbox.max_file_bytes, budget=budget
    )
    at = records.now()
    plan = Plan(found)
    plan.released = records.release(engine, handoffs_to_release(instance, engine, at))
    legacy_before = None if take_all else at - REREQUEST_AFTER
    # Every partition key, read only when needed: on an idle tick over 100,000 documents the
    # read was a third of the tick.
    existing = functools.cache(lambda: instance.get_dynamic_partitions(documents_partitions.name))
    # Documents a queued or running run holds: never handed out again, parked, moved or
    # retired under it (a run whose range names a deleted partition fails as a whole).
    # Worked out only when some document is due for one of those.
    busy = functools.cache(lambda: documents_in_active_runs(instance, existing))
    exhausted = [
        r.id for r in records.due(
            engine, records.PENDING, budget.reports, legacy_before, take_all=take_all, attempts=(inbox.max_attempts, None)
        )
        if r.id not in busy()
    ]
    check_events = [overdue_evaluation(r.id, r.error, parked=True) for r in records.park(engine, exhausted, inbox.max_attempts)]
    late = f"not indexed {inbox.overdue_seconds:.0f} s after upload"
    for r in records.overdue(engine, at - dt.timedelta(seconds=inbox.overdue_seconds), budget.reports):
        check_events.append(overdue_evaluation(r.id, f"{late}; {r.error}" if r.error else late, parked=False))
    # Files refused unread get a partition too, failed `parsed` with the reason: the UI lists
    # every upload, and says why this one was not indexed.
    check_events += [refusal_evaluation(doc_id, reason) for doc_id, reason in found.refused.items()]
    plan.check_events = check_events
    room = budget.files
    if not take_all:
        # Index runs are handed out as the queue empties: see QUEUE_AHEAD.
        waiting = instance.get_runs_count(
            RunsFilter(job_name=index_documents_job.name, statuses=[DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED])
        )
        room = min(room, max(0, QUEUE_AHEAD - waiting) * inbox.docs_per_run)
    due = records.due(
        engine, records.PENDING, room, legacy_before, take_all=take_all, attempts=(0, inbox.max_attempts)
    )
    wanted = [r.id for r in due if r.id not in busy()]
    # Deleted documents leave the UI at once; their points and rows go in a purge run, which
    # is launched before any index run.
    to_purge = [r.id for r in records.due(engine, records.DELETING, budget.files, legacy_before, take_all=take_all)]
    if to_purge:
        token = new_token(token_prefix)
        detection.mark_requested(engine, to_purge, token)
        plan.run_requests.append(RunRequest(
            job_name=purge_deleted_job.name, tags={DOCUMENTS_TAG: str(len(to_purge)), REQUEST_TAG: token, **PURGE_PRIORITY},
        ))
    # Retired partitions: looked for when something was deleted now, or a previous tick left
    # some (a mass deletion is retired in slices, as Dagster deletes one key per statement).
    look = found.deleted or to_purge or retiring
    gone = set(records.documents_in(engine, *records.GONE)) if look else set()
    to_delete = [key for key in existing() if key in gone and key not in busy()] if gone else []
    plan.retiring = len(to_delete) > budget.partition_deletes
    to_delete = to_delete[: budget.partition_deletes]
    to_move, to_add = detection.gather(existing(), wanted) if wanted else ([], [])
    known = set(to_add)
    if found.refused:
        known.update(existing())
    refused_new = [d for d in found.refused if d not in known]
    for key in [*to_delete, *to_move]:
        instance.delete_dynamic_partition(documents_partitions.name, key)
    # Added in this order: the wanted keys form the order's tail block, refusals come after it.
    # In slices: Dagster checks which keys exist with one IN list per call.
    for part in batched([*to_move, *to_add, *refused_new], 10_000):
        instance.add_dynamic_partitions(documents_partitions.name, part)
    plan.added_partitions, plan.deleted_partitions = len(to_add) + len(refused_new), len(to_delete)
    if wanted:
        order = instance.get_dynamic_partitions(documents_partitions.name)
        for batch in detection.plan_batches(order, set(wanted), inbox.docs_per_run):
            token = new_token(token_prefix)
            # Rows are committed before any run can be launched: a run never looks for a row
            # that isn't there yet.
            detection.mark_requested(engine, batch, token)
            plan.run_requests.append(index_request(batch, token))
    return plan


def _inbox_sensor(
    context: SensorEvaluationContext, db: DatabaseResource, inbox: InboxResource, embedder: EmbedderResource
):
    previous = json.loads(context.cursor) if context.cursor else {}
    started = time.time()
    last = previous.get("tick_seconds", 0.0)
    # Capped: a clock set back must not make the sensor rest for good. Only an idle tick earns
    # a rest: one that registered or handed out work is followed at once by the next.
    rest = min(last / TICK_SHARE, last / TICK_SHARE - (started - previous.get("ticked_at", 0.0)))
    if previous.get("idle", True) and last > RESTLESS_TICK and rest > 0:
        return SensorResult(skip_reason=f"resting {rest:.1f} s after a {last:.1f} s tick", cursor=context.cursor)
    from rag_pipeline.core.sources import SourceError

    try:
        plan = evaluate_inbox(
            context.instance, db.engine, inbox, previous_digest=previous.get("listing"), endpoint_slots=embedder.concurrency,
            budget=TICK_BUDGET, retiring=previous.get("retiring", False),
        )
    except SourceError as exc:
        # The landing zone cannot be listed (an outage outlasting the client's retries, or a
        # setting to fix): one line naming it, no traceback; nothing registered or tombstoned,
        # and the next tick tries again. The cursor is kept, so nothing is forgotten; the error
        # is logged when it appears or changes, not every second while it lasts.
        if previous.get("source_error") != str(exc):
            context.log.error(str(exc))
        return SensorResult(skip_reason=str(exc), cursor=json.dumps({**previous, "source_error": str(exc)}))
    found = plan.found
    where = inbox.source.describe()
    for doc_id, reason in found.refused.items():
        context.log.warning(f"document {doc_id} refused: {reason}")
    # Problems that are not documents (a file outside any knowledge base, an unlistable folder)
    # are seen on every tick; each is logged when it appears, not every ten seconds after.
    reported, seen = problem_digests(found.problems), set(previous.get("problems", ()))
    for problem, digest in zip(found.problems, reported):
        if digest not in seen:
            context.log.warning(problem)
    idle = not (
        plan.run_requests or plan.added_partitions or plan.deleted_partitions or found.waiting or plan.released
        or plan.retiring
    )
    # Saved only once this tick's registrations are committed, so a crashed tick re-detects.
    cursor = json.dumps({
        "listing": found.listing_digest, "problems": reported[:MAX_REMEMBERED_PROBLEMS],
        "ticked_at": started, "tick_seconds": round(time.time() - started, 3), "idle": idle,
        "retiring": plan.retiring,
    })
    if idle and not found.new and not found.changed and not found.deleted:
        return SensorResult(
            skip_reason=f"no changes in {where} ({found.unchanged} files unchanged"
            + (f", {len(found.problems)} problem(s) in the sensor log" if found.problems else "") + ")",
            cursor=cursor, asset_events=plan.check_events,
        )
    if found.waiting:
        context.log.info(
            f"registered {found.registered:,} of {found.to_register:,} new or changed files; "
            f"{found.waiting:,} left for the next tick"
        )
    context.log.info(
        f"{where}: {len(found.new)} new, {len(found.changed)} changed, {len(found.deleted)} deleted; "
        f"{plan.added_partitions} partition(s) added, {plan.deleted_partitions} deleted; "
        f"{plan.released} document(s) released from ended or lost runs; {len(plan.run_requests)} run(s) requested"
    )
    return SensorResult(run_requests=plan.run_requests, cursor=cursor, asset_events=plan.check_events)


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
        description="Watches the landing zone (folder or bucket); registers new, changed and deleted uploads, "
        "requests index runs in batches and purges deleted documents.",
    )(_inbox_sensor)
