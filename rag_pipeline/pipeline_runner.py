"""`rag-pipeline run`: the sensor's detection and the index job, executed here and now."""

from __future__ import annotations

import time

from dagster import DagsterRunStatus

from rag_pipeline.core import records
from rag_pipeline.settings import Settings


def run_pending(settings: Settings, progress: bool = False) -> dict:
    from rag_pipeline.definitions import build_definitions
    from rag_pipeline.core.detection import UNBOUNDED
    from rag_pipeline.defs.sensors import DOCUMENTS_TAG, evaluate_inbox
    from rag_pipeline.instance import get_instance

    started = time.perf_counter()
    instance = get_instance(settings)
    defs = build_definitions(settings)
    from rag_pipeline.core.db import open_engine

    # The database URL may be an EnvVar (resolved only inside Dagster), so the engine comes from
    # settings; the inbox resource holds plain values and is the definitions' own.
    engine = open_engine(settings.database_url)
    # `run` is an explicit "now": it takes what is there without waiting for files to settle
    # (the sensor waits, since it cannot know whether a writer is still busy).
    inbox = defs.resources["inbox"].model_copy(update={"settle_seconds": 0.0})
    plan = evaluate_inbox(
        instance, engine, inbox, endpoint_slots=defs.resources["embedder"].concurrency, budget=UNBOUNDED,
        take_all=True, token_prefix="cli",
    )
    found = plan.found
    for evaluation in plan.check_events:  # what the sensor would report: late or parked documents
        instance.report_runless_asset_event(evaluation)
    requests = [r for r in plan.run_requests if r.job_name == "index_documents"]
    total_docs = sum(int(r.tags.get(DOCUMENTS_TAG, "0")) for r in requests)
    bar = None
    if progress and total_docs:
        from tqdm import tqdm

        bar = tqdm(total=total_docs, unit="doc", desc="indexing")
    run_failures = 0
    # Purge first: a deleted document's points leave search before anything else happens.
    for request in sorted(plan.run_requests, key=lambda r: r.job_name != "purge_deleted"):
        result = defs.resolve_job_def(request.job_name).execute_in_process(
            instance=instance, tags=dict(request.tags), raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        if result.dagster_run.status != DagsterRunStatus.SUCCESS:
            run_failures += 1
        if bar is not None and request.job_name == "index_documents":
            bar.update(int(request.tags.get(DOCUMENTS_TAG, "0")))
    if bar is not None:
        bar.close()
    rows = records.list_documents(engine)
    failures = [
        {"document_id": r.id, "knowledge_base": r.knowledge_base, "path": r.path, "error": r.error}
        for r in rows if r.status == records.FAILED
    ]
    return {
        "documents": total_docs,
        "runs": len(requests),
        "run_failures": run_failures,
        "new": len(found.new),
        "changed": len(found.changed),
        "deleted": len(found.deleted),
        "refused": len(found.refused),
        "indexed": sum(1 for r in rows if r.status == records.INDEXED),
        "failed": len(failures),
        "pending": sum(1 for r in rows if r.status == records.PENDING),
        "failures": failures,
        "problems": found.problems,
        "seconds": round(time.perf_counter() - started, 3),
    }
