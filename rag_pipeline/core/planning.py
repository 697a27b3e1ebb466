"""Planning and registering uploads: what the sensor's tick and `rag-pipeline run` both do.

A source's listing becomes registered documents (`detection`), then hand-offs: which documents
go to which index run, which deleted ones to a purge run, which partitions are added, moved or
retired, which documents are late or parked. Everything the orchestrator holds (partitions,
runs, pools) is reached through `Orchestrator`, so this module has no Dagster import: the
sensor (`defs/sensors.py`) and the CLI's runner adapt it with `defs/orchestrator.py`.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Protocol, Sequence

from sqlalchemy.engine import Engine

from rag_pipeline.core import detection, records
from rag_pipeline.core.batching import batched
from rag_pipeline.core.sources import Source

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
# Index runs waiting in the queue, at most: the sensor hands out more only as they start. The
# daemon creates a tick's runs before the next tick (10 to 14 s each for 2,500 documents on a
# loaded 2-core machine: eight of them held the sensor for 100 s), and a deep queue makes no run
# start sooner. The rest stays pending, handed out oldest first as runs start.
QUEUE_AHEAD = 2
# `runs_at_least`: documents are split into that many runs, but none smaller than this (a run
# executed in a process of its own costs that process's instance and resources, ~0.5 s).
MIN_SPLIT_RUN = 250


@dataclass(frozen=True)
class Policy:
    """When uploads are handed out (from the settings: RAG_DOCS_PER_RUN, RAG_SETTLE_SECONDS,
    RAG_OVERDUE_SECONDS, RAG_MAX_ATTEMPTS)."""

    docs_per_run: int
    settle_seconds: float
    overdue_seconds: float
    max_attempts: int


@dataclass(frozen=True)
class RunState:
    """A run of a hand-off, as the orchestrator reports it."""

    active: bool
    ended_at: Optional[float]  # epoch seconds


@dataclass(frozen=True)
class Handoff:
    """A run to request: `index` over a contiguous block of partitions, or `purge`."""

    job: Literal["index", "purge"]
    documents: Sequence[str]
    token: str


@dataclass(frozen=True)
class Report:
    """A per-document finding to show outside any run: `late`, `parked` or `refused`."""

    doc: records.DocumentRef
    kind: Literal["late", "parked", "refused"]
    description: str

    @property
    def document_id(self) -> str:
        return self.doc.id


class Orchestrator(Protocol):
    """What planning needs from the orchestrator (Dagster: `defs/orchestrator.py`)."""

    def ensure_pools(self, endpoint_slots: int | None) -> None: ...

    def runs_by_token(self, tokens: Sequence[str]) -> dict[str, list[RunState]]: ...

    def partition_keys(self) -> Sequence[str]: ...

    def documents_in_active_runs(self, partition_order: Callable[[], Sequence[str]]) -> set[str]: ...

    def index_runs_waiting(self) -> int: ...

    def delete_partition(self, key: str) -> None: ...

    def add_partitions(self, keys: Sequence[str]) -> None: ...

    def record_failed(self, failures: Sequence[tuple[str, str]]) -> None:
        """Show these partitions ((key, reason), ...) as failed documents."""

    def record_moved(self, docs: Sequence[records.DocumentRef]) -> None:
        """These indexed documents' partitions moved from their ids to their keys: show them
        materialized under the new keys."""


@dataclass
class Plan:
    found: detection.Detection
    added_partitions: int = 0
    deleted_partitions: int = 0
    released: int = 0
    retiring: bool = False  # partitions of deleted documents are left for the next tick
    keys_migrated: int = 0  # partitions moved from document ids to readable keys
    migrating: bool = False  # some are left for the next tick
    names: dict[str, str] = field(default_factory=dict)  # {document id: kb/path} of those reported
    queued_ahead: int = 0  # pending documents wait for this many index runs queued before them
    run_requests: list[Handoff] = field(default_factory=list)
    check_events: list[Report] = field(default_factory=list)


def new_token(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def handoffs_to_release(
    orchestrator: Orchestrator, engine: Engine, at: dt.datetime, mine: Callable[[str], bool] | None = None,
) -> list[str]:
    """Tokens of hand-offs whose documents no run is working on any more: the runs never
    appeared (LOST_AFTER; for a `rag-pipeline run` in progress, which creates its runs one after
    another, REREQUEST_AFTER), or they all ended RETRY_AFTER ago and left documents behind.
    `mine`: only tokens this caller may judge (a sensor's own: the daemon creates a tick's runs
    before that sensor's next tick, not before another sensor's)."""
    outstanding = {h.token: h for h in records.handoffs(engine, at - LOST_AFTER) if mine is None or mine(h.token)}
    if not outstanding:
        return []
    runs = orchestrator.runs_by_token(list(outstanding))
    release = []
    for token, handoff in outstanding.items():
        token_runs = runs.get(token, [])
        if not token_runs:
            lost_after = REREQUEST_AFTER if token.startswith("cli-") else LOST_AFTER
            if handoff.requested_at < at - lost_after:
                release.append(token)
        elif all(not r.active for r in token_runs):
            ended = max((r.ended_at or 0.0) for r in token_runs)
            if ended < (at - RETRY_AFTER).timestamp():
                release.append(token)
    return release


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def migrate_partition_keys(orchestrator: Orchestrator, engine: Engine, limit: int) -> tuple[int, bool]:
    """An index built when partition keys were document ids moves, `limit` documents at a time,
    to readable keys: the id's partition is deleted and the key's added (at the end of the
    order), and a document indexed under its id is recorded materialized under its key (its
    rows and points are untouched: nothing is read, parsed or embedded again). Partitions a
    run holds wait for a later call. Returns (moved, some left)."""
    existing = orchestrator.partition_keys()
    legacy = [k for k in existing if _UUID.fullmatch(k)]
    if not legacy:
        return 0, False
    held = orchestrator.documents_in_active_runs(lambda: existing)
    movable = [k for k in legacy if k not in held][:limit]
    refs = records.refs_by_id(engine, movable)
    for key in movable:
        orchestrator.delete_partition(key)
    live = [refs[k] for k in movable if k in refs and refs[k].status not in records.GONE and refs[k].partition_key != k]
    for part in batched([r.partition_key for r in live], 10_000):
        orchestrator.add_partitions(part)
    # Pending ones are materialized by their run; failed ones stay unmaterialized.
    orchestrator.record_moved([d for d in live if d.status == records.INDEXED])
    return len(movable), len(legacy) > len(movable)


def evaluate_inbox(
    orchestrator: Orchestrator, engine: Engine, source: Source, policy: Policy, *, max_file_bytes: int,
    previous_digest: str | None = None, endpoint_slots: int | None = None,
    budget: detection.Budget = detection.Budget(), take_all: bool = False, token_prefix: str = "sensor",
    retiring: bool = False, migrate_keys: bool = True, confirm_deletions: bool = False,
    releases: Callable[[str], bool] | None = None, previous_mark: str | None = None, previous_size: int = 0,
    runs_at_least: int = 1,
) -> Plan:
    """Detect changes, commit them, apply the partition changes, then plan runs. Shared by the
    sensor and `rag-pipeline run` (`take_all`: every pending document not in a run in
    progress, whatever hand-off it is in). Every step is bounded by `budget`, so a tick ends
    inside its deadline however large the drop; the next tick continues. `previous_mark`,
    `previous_size`: see `detection.detect` (a watched folder unchanged is not listed).
    `runs_at_least`: the pending documents go in at least that many runs of MIN_SPLIT_RUN or
    more (`rag-pipeline run` executes them side by side)."""
    orchestrator.ensure_pools(endpoint_slots)
    found = detection.detect(
        engine, source, policy.settle_seconds, previous_digest, max_file_bytes, budget=budget,
        confirm_deletions=confirm_deletions, previous_mark=previous_mark, previous_size=previous_size,
    )
    if found.new and (warning := records.sqlite_scale_problem(engine)):
        found.problems.append(warning)
    clock = time.monotonic()
    at = records.now()
    plan = Plan(found)
    plan.released = records.release(engine, handoffs_to_release(orchestrator, engine, at, releases))
    legacy_before = None if take_all else at - REREQUEST_AFTER
    if migrate_keys:
        plan.keys_migrated, plan.migrating = migrate_partition_keys(orchestrator, engine, budget.reports)
    # Every partition key, read only when needed: on an idle tick over 100,000 documents the
    # read was a third of the tick.
    existing = functools.cache(orchestrator.partition_keys)
    # Partition keys a queued or running run holds: never handed out again, parked, moved or
    # retired under it (a run whose range names a deleted partition fails as a whole).
    # Worked out only when some document is due for one of those. A run created before
    # readable keys names its documents by id, so a document is busy under either name.
    busy = functools.cache(lambda: orchestrator.documents_in_active_runs(existing))

    def free(row) -> bool:  # noqa: ANN001
        return row.partition_key not in busy() and row.id not in busy()

    exhausted = [
        r.id for r in records.due(
            engine, records.PENDING, budget.reports, legacy_before, take_all=take_all, attempts=(policy.max_attempts, None)
        )
        if free(r)
    ]
    parked = records.park(engine, exhausted, policy.max_attempts)
    late = f"not indexed {policy.overdue_seconds:.0f} s after upload"
    overdue = records.overdue(engine, at - dt.timedelta(seconds=policy.overdue_seconds), budget.reports)
    named = records.refs_by_id(engine, [*(r.id for r in parked), *(r.id for r in overdue), *found.refused])
    check_events = [Report(named[r.id], "parked", r.error) for r in parked]
    for r in overdue:
        check_events.append(Report(named[r.id], "late", f"{late}; {r.error}" if r.error else late))
    # Files refused unread get a partition too, failed `parsed` with the reason: the UI lists
    # every upload, and says why this one was not indexed.
    check_events += [Report(named[doc_id], "refused", reason) for doc_id, reason in found.refused.items()]
    plan.check_events = check_events
    plan.names = {d: ref.name for d, ref in named.items()}
    clock = detection.lap(found, "release and report", clock)
    room = budget.files
    if not take_all:
        # Index runs are handed out as the queue empties: see QUEUE_AHEAD.
        waiting = orchestrator.index_runs_waiting()
        room = min(room, max(0, QUEUE_AHEAD - waiting) * policy.docs_per_run)
        if not room and records.due(engine, records.PENDING, 1, legacy_before, attempts=(0, policy.max_attempts)):
            plan.queued_ahead = waiting  # said on the tick: documents wait, and for what
    due = records.due(
        engine, records.PENDING, room, legacy_before, take_all=take_all, attempts=(0, policy.max_attempts)
    )
    wanted = {r.partition_key: r.id for r in due if free(r)}
    # Deleted documents leave the UI at once; their points and rows go in a purge run, which
    # is launched before any index run.
    to_purge = [r.id for r in records.due(engine, records.DELETING, budget.files, legacy_before, take_all=take_all)]
    if to_purge:
        token = new_token(token_prefix)
        detection.mark_requested(engine, to_purge, token)
        plan.run_requests.append(Handoff("purge", to_purge, token))
    # Retired partitions: looked for when something was deleted now, or a previous tick left
    # some (a mass deletion is retired in slices, as Dagster deletes one key per statement).
    look = found.deleted or to_purge or retiring
    gone = records.partition_keys_in(engine, *records.GONE) if look else set()
    to_delete = [key for key in existing() if key in gone and key not in busy()] if gone else []
    plan.retiring = len(to_delete) > budget.partition_deletes
    to_delete = to_delete[: budget.partition_deletes]
    to_move, to_add = detection.gather(existing(), list(wanted)) if wanted else ([], [])
    known = set(to_add)
    if found.refused:
        known.update(existing())
    refused_new = [named[d].partition_key for d in found.refused if named[d].partition_key not in known]
    for key in [*to_delete, *to_move]:
        orchestrator.delete_partition(key)
    # Added in this order: the wanted keys form the order's tail block, refusals come after it.
    # In slices: Dagster checks which keys exist with one IN list per call.
    for part in batched([*to_move, *to_add, *refused_new], 10_000):
        orchestrator.add_partitions(part)
    plan.added_partitions, plan.deleted_partitions = len(to_add) + len(refused_new), len(to_delete)
    # Refused unread (no run will take them) or parked (runs never finished them): failed
    # partitions in the UI, with the reason, until a new version is indexed.
    failed = [*((named[d].partition_key, reason) for d, reason in found.refused.items()),
              *((named[r.id].partition_key, r.error or "parked") for r in parked)]
    if failed:
        orchestrator.record_failed(failed)
    if wanted:
        order = orchestrator.partition_keys()
        per_run = policy.docs_per_run
        if runs_at_least > 1:
            per_run = min(per_run, max(MIN_SPLIT_RUN, -(-len(wanted) // runs_at_least)))
        for batch in detection.plan_batches(order, set(wanted), per_run):
            token = new_token(token_prefix)
            # Rows are committed before any run can be launched: a run never looks for a row
            # that isn't there yet.
            detection.mark_requested(engine, [wanted[k] for k in batch], token)
            plan.run_requests.append(Handoff("index", batch, token))  # partition keys
    detection.lap(found, "hand out", clock)
    return plan
