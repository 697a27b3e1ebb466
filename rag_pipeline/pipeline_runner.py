"""`rag-pipeline run`: the sensor's detection and the index job, executed here and now."""

from __future__ import annotations

import dataclasses
import time

from dagster import DagsterRunStatus

from rag_pipeline.core import records
from rag_pipeline.core.progress import observe
from typing import Sequence

from rag_pipeline.settings import Settings, open_sources


STEPS = 4  # per document: extract, chunk, embed, write


def step_errors(events) -> list[str]:  # noqa: ANN001
    """Each failed step's message, as the UI shows it: a step fails with the one line of
    `diagnose.explain` (dagster.Failure) where there is one, else its innermost error."""
    from dagster import DagsterEventType

    out = []
    for event in events:
        if event.event_type != DagsterEventType.STEP_FAILURE:
            continue
        data = event.event_specific_data
        user = getattr(data, "user_failure_data", None)
        if user is not None and user.description:
            out.append(user.description)
            continue
        # Dagster's "Error occurred while executing ..." wraps the step's own error: the innermost.
        error, message = getattr(data, "error", None), event.message or "step failed"
        while error is not None:
            if (error.message or "").strip():
                message = error.message.strip().splitlines()[0]
            error = error.cause
        out.append(f"step {event.step_key}: {message}")
    return out


def _plan_sources(settings: Settings, orchestrator, engine, policy, confirm_deletions: Sequence[str], processes: int):  # noqa: ANN001, ANN202
    """Detection and hand-offs over the landing zone, then each declared SQL source: (plans,
    source errors). With SQL sources declared, one that cannot be listed (down, misconfigured,
    a bad entry in the sources file) is one line in the errors and the others go on; with the
    landing zone alone, its error is raised as before (nothing registered, nothing run)."""
    from rag_pipeline.core.detection import UNBOUNDED
    from rag_pipeline.core.planning import evaluate_inbox
    from rag_pipeline.core.sources import SourceError, SourceMisconfigured

    sources = open_sources(settings)
    unknown = [n for n in confirm_deletions if n not in sources.sql]
    if unknown:
        raise SourceMisconfigured(
            f"--confirm-deletions {unknown[0]}: no usable SQL source of that name in RAG_SOURCES_FILE"
            + (f" (declared: {', '.join(sources.sql)})" if sources.sql else "")
        )
    alone = not sources.sql and not sources.errors
    plans, errors = [], [e for e in sources.errors.values()]
    for name, source in [(None, sources), *sources.sql.items()]:
        try:
            plans.append(evaluate_inbox(
                orchestrator, engine, source, policy, max_file_bytes=settings.max_file_bytes,
                endpoint_slots=settings.embed_concurrency, budget=UNBOUNDED, take_all=True, token_prefix="cli",
                migrate_keys=name is None, confirm_deletions=name in confirm_deletions, runs_at_least=processes,
            ))
        except SourceError as exc:
            if alone:
                raise
            errors.append(str(exc))
    return plans, errors


def run_pending(settings: Settings, progress: bool = False, *, confirm_deletions: Sequence[str] = ()) -> dict:
    from rag_pipeline.definitions import build_definitions
    from rag_pipeline.defs import tuning
    from rag_pipeline.defs.orchestrator import DOCUMENTS_TAG, DagsterOrchestrator, check_evaluation, run_request
    from rag_pipeline.instance import get_instance

    started = time.perf_counter()
    # This process creates and executes the runs itself.
    tuning.install()
    started_at = records.now()
    instance = get_instance(settings)
    defs = build_definitions(settings)
    from rag_pipeline.core.db import open_engine

    engine = open_engine(settings.database_url)
    # `run` is an explicit "now": it takes what is there without waiting for files to settle
    # (the sensor waits, since it cannot know whether a writer is still busy).
    policy = dataclasses.replace(settings.policy, settle_seconds=0.0)
    processes = settings.cli_processes
    plans, source_errors = _plan_sources(
        settings, DagsterOrchestrator(instance), engine, policy, confirm_deletions, processes)
    found = [plan.found for plan in plans]
    run_requests = []
    for plan in plans:
        for report in plan.check_events:  # what the sensor would report: late or parked documents
            instance.report_runless_asset_event(check_evaluation(report))
        run_requests += [run_request(h) for h in plan.run_requests]
    requests = [r for r in run_requests if r.job_name == "index_documents"]
    total_docs = sum(int(r.tags.get(DOCUMENTS_TAG, "0")) for r in requests)
    bar = None
    if progress and total_docs:
        from tqdm import tqdm

        # Counted in document-steps, shown in documents: the bar moves as each document goes
        # through extract, chunk and embed (core/progress.py), and is squared at each run's end.
        bar = tqdm(total=total_docs * STEPS, unit="doc", unit_scale=1 / STEPS, desc="indexing",
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} documents [{elapsed}<{remaining}]")
    run_failures, errors, done = 0, [], 0

    def advance(step: str, documents: float) -> None:
        if bar is not None:
            bar.set_description_str(f"indexing ({step})", refresh=False)
            bar.update(documents)

    def finished(request, ok: bool, run_errors: Sequence[str]) -> None:  # noqa: ANN001
        nonlocal run_failures, done
        if not ok:
            run_failures += 1
            errors.extend(e for e in run_errors if e not in errors)
        if bar is not None and request.job_name == "index_documents":
            done += int(request.tags.get(DOCUMENTS_TAG, "0"))
            bar.n = max(bar.n, done * STEPS)  # runs side by side: the others' progress stays
            bar.set_description_str("indexing", refresh=False)
            bar.refresh()

    # Purge first: a deleted document's points leave search before anything else happens.
    ordered = sorted(run_requests, key=lambda r: r.job_name != "purge_deleted")
    # Side by side only where planning split the documents: a few documents from several
    # sources are several small runs, quicker here than in processes that must start first.
    from rag_pipeline.core.planning import MIN_SPLIT_RUN

    split = processes > 1 and len(requests) > 1 and total_docs >= 2 * MIN_SPLIT_RUN
    side_by_side = requests if split else []
    with observe(advance):
        for request in [r for r in ordered if not (split and r.job_name == "index_documents")]:
            finished(request, *execute_run(defs, instance, request.job_name, dict(request.tags)))
    if side_by_side:
        from rag_pipeline import run_workers

        for request, (ok, run_errors) in run_workers.execute(
            settings, [(r.job_name, dict(r.tags)) for r in side_by_side], processes=processes,
            advance=advance if bar is not None else None,
        ):
            finished(side_by_side[request], ok, run_errors)
    if bar is not None:
        bar.close()
    rows = records.list_documents(engine)
    failures = [
        {"document_id": r.id, "knowledge_base": r.knowledge_base, "path": r.path, "error": r.error,
         "this_run": _since(r.updated_at, started_at)}
        for r in rows if r.status == records.FAILED
    ]
    return {
        "documents": total_docs,
        "runs": len(requests),
        "run_failures": run_failures,
        "new": sum(len(f.new) for f in found),
        "changed": sum(len(f.changed) for f in found),
        "deleted": sum(len(f.deleted) for f in found),
        "refused": sum(len(f.refused) for f in found),
        "held_deletions": sum(f.held_deletions for f in found),
        "indexed": sum(1 for r in rows if r.status == records.INDEXED),
        "failed": len(failures),
        "failed_in_this_run": sum(1 for f in failures if f["this_run"]),
        "errors": errors,
        "pending": sum(1 for r in rows if r.status == records.PENDING),
        "failures": failures,
        "problems": [p for f in found for p in f.problems],
        # Sources that could not be listed (each one line); the others were run.
        "source_errors": source_errors,
        "seconds": round(time.perf_counter() - started, 3),
    }


def execute_run(defs, instance, job_name: str, tags: dict) -> tuple[bool, list[str]]:  # noqa: ANN001
    """One run of `job_name` in this process: (succeeded, its failed steps' lines)."""
    result = defs.resolve_job_def(job_name).execute_in_process(
        instance=instance, tags=tags, raise_on_error=False,
        # The failures are summed up by the caller, one line each: no step tracebacks here.
        run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
    )
    ok = result.dagster_run.status == DagsterRunStatus.SUCCESS
    return ok, [] if ok else step_errors(result.all_events)


def _since(ts, started_at) -> bool:  # noqa: ANN001
    """Recorded during this invocation (SQLite hands back naive UTC timestamps)."""
    if ts is None:
        return False
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=started_at.tzinfo)
    return ts >= started_at
