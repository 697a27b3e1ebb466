"""The inbox sensor: Dagster's adapter of `core.planning`. Each tick plans the landing zone's
new, changed and deleted uploads and returns the plan as run requests and check evaluations
(`defs/orchestrator.py`), within a budget that keeps it inside Dagster's deadline, resting
after slow idle ticks, and remembering in its cursor what it has already seen and logged."""

import hashlib
import json
import threading
import time
from typing import Mapping, Sequence

from dagster import DefaultSensorStatus, SensorDefinition, SensorEvaluationContext, SensorResult, sensor

from rag_pipeline.core import detection, planning, watch
from rag_pipeline.defs.jobs import index_documents_job
from rag_pipeline.defs.orchestrator import DagsterOrchestrator, check_evaluation, run_request
from rag_pipeline.defs.purge import purge_deleted_job
from rag_pipeline.defs.resources import DatabaseResource, EmbedderResource, InboxResource

MAX_REMEMBERED_PROBLEMS = 1000
# What one tick registers and hands out at most; the next tick continues. Dagster fails an
# evaluation past 60 s. With 20,000 files and 15 s of hashing a tick took 17 to 20 s on an idle
# 2-core machine, but one timed out under a load average of 10 (registering and handing out
# 20,000 files after the hashing clock ran out took as long again, five times slower). 5,000
# files keep the work after the clock small; 100,000 files are 20 ticks.
# Listing 100,000 files took 11 s under a load average of 9: hashing gets what is left of
# 20 s (at least 2 s), and what follows (registering, handing out) stays well inside 60 s.
TICK_BUDGET = detection.Budget(files=5_000, seconds=10.0, target_seconds=20.0)
# A tick walks the whole inbox. rag-dagster-daemon offers the sensor a tick every second; over
# 100,000 files an idle tick takes about a second, so after an idle tick slower than
# RESTLESS_TICK the sensor lets four times its duration pass before the next: a fifth of one
# core at most. Over a few thousand files (0.05 s) it still ticks every second, and a tick that
# found work is followed at once by the next.
TICK_SHARE = 0.2
RESTLESS_TICK = 0.25
# One sensor per declared source, and dagster.yaml evaluates sensors on 2 threads: each tick
# hands out whatever is pending and moves partitions to gather it, so two ticks planning at
# once could hand out the same documents or move a partition under the other's run request.
# Their planning takes turns within the process that evaluates them (the code server).
_PLANNING = threading.Lock()


def source_token_prefix(source_name: str | None) -> str:
    """The hand-off token prefix of a source's sensor (tokens are at most 40 characters, so not
    the name itself). 80 bits of its hash: two sources whose prefixes collided would release
    each other's hand-offs, which a 32-bit checksum over many names made possible."""
    if source_name is None:
        return "sensor"
    return "src" + hashlib.sha256(source_name.encode()).hexdigest()[:20]


def problem_digests(problems: Sequence[str]) -> list[str]:
    return [hashlib.sha256(p.encode("utf-8", "replace")).hexdigest()[:16] for p in problems]


def _inbox_sensor(
    context: SensorEvaluationContext, db: DatabaseResource, inbox: InboxResource, embedder: EmbedderResource,
    *, policy: planning.Policy, source_name: str | None = None,
):
    """One tick over the landing zone (`source_name` None) or over the declared SQL source
    `source_name`. Each source has its own sensor and cursor; a tick lists only its source and
    tombstones only its source's documents, then hands out whatever is pending."""
    previous = json.loads(context.cursor) if context.cursor else {}
    started = time.time()
    last = previous.get("tick_seconds", 0.0)
    # Capped: a clock set back must not make the sensor rest for good. Only an idle tick earns
    # a rest: one that registered or handed out work is followed at once by the next.
    rest = min(last / TICK_SHARE, last / TICK_SHARE - (started - previous.get("ticked_at", 0.0)))
    # A watched folder (`core/watch.py`) is walked only when something changed, or every
    # FULL_WALK_SECONDS: a change must not wait for a rest that its walk does not need.
    if previous.get("idle", True) and last > RESTLESS_TICK and rest > 0 and not previous.get("watch"):
        return SensorResult(skip_reason=f"resting {rest:.1f} s after a {last:.1f} s tick", cursor=context.cursor)
    from rag_pipeline.core.endpoints import MissingKey, missing_key_problem
    from rag_pipeline.core.sources import SourceError

    sources = inbox.source
    try:
        if source_name is None:
            source = sources
        elif source_name in sources.sql:
            source = sources.sql[source_name]
        else:
            # Declared, but its entry in the sources file cannot be used: its own line, every tick.
            raise SourceError(sources.errors.get(source_name) or f"source '{source_name}' is not declared any more")
        # No key for an endpoint that needs one: caught before any run, like a bad bucket.
        problem = missing_key_problem(provider=embedder.provider, base_url=embedder.base_url, api_key=embedder.api_key)
        if problem:
            raise MissingKey(problem)
        own = source_token_prefix(source_name)
        others = [source_token_prefix(n) + "-" for n in sources.sql if n != source_name]
        with _PLANNING:
            plan = planning.evaluate_inbox(
                DagsterOrchestrator(context.instance), db.engine, source, policy, max_file_bytes=inbox.max_file_bytes,
                previous_digest=previous.get("listing"), endpoint_slots=embedder.concurrency,
                previous_mark=previous.get("watch") if started - previous.get("walked_at", 0.0) < watch.FULL_WALK_SECONDS
                else None,
                previous_size=previous.get("files", 0),
                budget=TICK_BUDGET, retiring=previous.get("retiring", False),
                migrate_keys=source_name is None and not previous.get("keys_readable", False),
                token_prefix=own,
                # A sensor releases its own hand-offs; the landing zone's also those of sources
                # no longer declared (and the CLI's and the UI's), which no other sensor judges.
                releases=(lambda t: t.startswith(own + "-")) if source_name is not None
                else (lambda t: not t.startswith(tuple(others))) if others else None,
            )
    except (SourceError, MissingKey) as exc:
        # The landing zone cannot be listed (an outage outlasting the client's retries, or a
        # setting to fix), or the endpoint's key is missing: one line naming it, no traceback;
        # nothing registered or tombstoned, and the next tick tries again. The cursor is kept, so
        # nothing is forgotten; the error is logged when it appears or changes, not every second
        # while it lasts.
        if previous.get("source_error") != str(exc):
            context.log.error(str(exc))
        return SensorResult(skip_reason=str(exc), cursor=json.dumps({**previous, "source_error": str(exc)}))
    found = plan.found
    where = source.describe()
    if source_name is None:
        # The sources file's problems that no sensor of their own shows (the file as a whole,
        # an entry without a usable name): logged once by the landing zone's sensor.
        found.problems += [e for n, e in sources.errors.items() if n == "" or n.startswith("#")]
    for doc_id, reason in found.refused.items():
        context.log.warning(f"document {plan.names.get(doc_id, doc_id)} refused: {reason}")
    # Problems that are not documents (a file outside any knowledge base, an unlistable folder)
    # are seen on every tick; each is logged when it appears, not every ten seconds after.
    reported, seen = problem_digests(found.problems), set(previous.get("problems", ()))
    for problem, digest in zip(found.problems, reported):
        if digest not in seen:
            context.log.warning(problem)
    if not found.listed:  # not listed: the problems of the last listing stand
        reported = previous.get("problems", [])
    idle = not (
        plan.run_requests or plan.added_partitions or plan.deleted_partitions or found.waiting or plan.released
        or plan.retiring or plan.keys_migrated
    )
    if plan.keys_migrated:
        context.log.info(
            f"moved {plan.keys_migrated} partition(s) from document ids to readable keys"
            + ("; more at the next tick" if plan.migrating else "")
        )
    # Saved only once this tick's registrations are committed, so a crashed tick re-detects.
    cursor = json.dumps({
        "listing": found.listing_digest, "problems": reported[:MAX_REMEMBERED_PROBLEMS],
        "watch": found.watch_mark, "files": found.listing_size,
        "walked_at": started if found.listed else previous.get("walked_at", 0.0),
        "ticked_at": started, "idle": idle,
        # The tick's own work, which earns a rest: a wait for settling files is not work.
        "tick_seconds": round(time.time() - started - found.settle_wait_seconds, 3),
        "retiring": plan.retiring,
        # Once no partition is named by a document id, the sensor stops looking for one.
        "keys_readable": previous.get("keys_readable", False) or not plan.migrating,
    })
    if idle and not found.new and not found.changed and not found.deleted:
        return SensorResult(
            skip_reason=f"no changes in {where} ({found.unchanged:,} {getattr(source, 'unit', 'files')} unchanged"
            + (f", {len(reported)} problem(s) in the sensor log" if reported else "")
            + ("; watched, not walked" if not found.listed else "") + ")",
            cursor=cursor, asset_events=[check_evaluation(r) for r in plan.check_events],
        )
    if found.waiting:
        context.log.info(
            f"registered {found.registered:,} of {found.to_register:,} new or changed files; "
            f"{found.waiting:,} left for the next tick"
        )
    summary = (
        f"{where}: {len(found.new)} new, {len(found.changed)} changed, {len(found.deleted)} deleted; "
        f"{plan.added_partitions} partition(s) added, {plan.deleted_partitions} deleted; "
        f"{plan.released} document(s) released from ended or lost runs; {len(plan.run_requests)} run(s) requested"
        + (f"; pending documents wait for the {plan.queued_ahead} index run(s) queued ahead (handed out as those "
           "start)" if plan.queued_ahead else "")
    )
    context.log.info(
        f"{summary}; {time.time() - started:.1f} s (" + ", ".join(f"{k} {v:.1f}" for k, v in found.seconds.items()) + ")"
    )
    return SensorResult(
        run_requests=[run_request(h) for h in plan.run_requests], cursor=cursor,
        asset_events=[check_evaluation(r) for r in plan.check_events],
        # A tick that requests no run says what it did instead ("empty result" says nothing).
        skip_reason=None if plan.run_requests else summary,
    )


def source_sensor_defs(
    *, interval_seconds: int, policy: planning.Policy, landing_name: str, sql_names: Sequence[str],
    sql_reads: Mapping[str, str] | None = None,
) -> list[SensorDefinition]:
    """One sensor per declared source, named for it: `<name>_sensor` (the landing zone of the
    environment keeps `inbox_sensor`)."""
    sensors = [inbox_sensor_def(interval_seconds=interval_seconds, policy=policy, name=f"{landing_name}_sensor")]
    for source_name in sql_names:
        sensors.append(_sql_sensor_def(
            source_name, interval_seconds=interval_seconds, policy=policy, reads=(sql_reads or {}).get(source_name),
        ))
    return sensors


def _sql_sensor_def(
    source_name: str, *, interval_seconds: int, policy: planning.Policy, reads: str | None = None
) -> SensorDefinition:
    def sql_sensor(
        context: SensorEvaluationContext, db: DatabaseResource, inbox: InboxResource, embedder: EmbedderResource
    ) -> SensorResult:
        return _inbox_sensor(context, db, inbox, embedder, policy=policy, source_name=source_name)

    return sensor(
        name=f"{source_name}_sensor",
        jobs=[index_documents_job, purge_deleted_job],
        minimum_interval_seconds=interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Watches the SQL source '{source_name}' (RAG_SOURCES_FILE): each row is a document "
        f"(path {source_name}/<id>); registers new, changed and deleted rows and requests their runs."
        + (f" Reads {reads}." if reads else "") + " Each idle tick counts the rows it found unchanged.",
        tags={"rag/source": source_name},
    )(sql_sensor)


def inbox_sensor_def(*, interval_seconds: int, policy: planning.Policy, name: str = "inbox_sensor") -> SensorDefinition:
    """The sensor, handing out uploads by `policy`, due every `interval_seconds` (RAG_SENSOR_INTERVAL_SECONDS). dagster-daemon
    evaluates sensors in a loop that runs every 5 s; with a minimum interval of exactly 5 the
    loop's jitter finds the sensor not yet due every other time, and an upload waited 10 s for
    its tick (measured: 9.7 s of the 15.9 s from a write to searchable). Under 5, every loop
    is a tick. A tick with nothing new on a watched local folder lists nothing (`core/watch.py`);
    elsewhere it costs one walk or listing and its digest (0.75 to 1.2 s over 100,000 files);
    partition keys are not read."""

    def inbox_sensor(
        context: SensorEvaluationContext, db: DatabaseResource, inbox: InboxResource, embedder: EmbedderResource
    ) -> SensorResult:
        return _inbox_sensor(context, db, inbox, embedder, policy=policy)

    return sensor(
        name=name,
        jobs=[index_documents_job, purge_deleted_job],
        minimum_interval_seconds=interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Watches the landing zone (folder or bucket); registers new, changed and deleted uploads, "
        "requests index runs in batches and purges deleted documents.",
    )(inbox_sensor)
