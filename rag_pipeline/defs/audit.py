"""The corpus-wide audit: every served chunk against every Qdrant point, on a schedule.

Problems become failed `points_match_chunks` evaluations on the documents concerned, so they
show on their partitions in the UI; launched with `repair: true` (UI launchpad) it also does
what `rag-pipeline verify --repair` does. A switch of search to a re-embedded collection that
no run completed (its last blocker was deleted or parked) happens here too.
"""

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetKey,
    Config,
    DefaultScheduleStatus,
    Failure,
    OpExecutionContext,
    ScheduleDefinition,
    in_process_executor,
    job,
    op,
)
from pydantic import Field

from rag_pipeline.core import generations, records
from rag_pipeline.core.audit import audit_all, audit_documents, repair
from rag_pipeline.defs.checks import naming
from rag_pipeline.defs.resources import DatabaseResource, EmbedderResource, VectorStoreResource


class AuditConfig(Config):
    repair: bool = Field(default=False, description="Delete orphan points and re-request documents missing points.")


# With embedded Qdrant it waits for the folder like any writer (one process at a time).
@op(description="Compare every served chunk row with the points of the collection being built or served.")
def audit_points(
    context: OpExecutionContext, config: AuditConfig, db: DatabaseResource,
    vector_store: VectorStoreResource, embedder: EmbedderResource,
) -> None:
    store = vector_store.for_embedding(db.engine, embedder.spec)
    report = audit_all(db.engine, store, embedder.fingerprint)
    problems = report.problems()
    if problems:
        # Points and rows are not read in one snapshot: a document switched between the two
        # reads looks broken. Only what a second, per-document look confirms is reported.
        confirmed = audit_documents(db.engine, store, [d for d in problems if d]).problems()
        problems = {d: p for d, p in problems.items() if not d or d in confirmed}
    named = records.refs_by_id(db.engine, [d for d in problems if d])
    for doc_id, problem in problems.items():
        doc = named.get(doc_id)
        if doc is None:  # points that name no document: counted below, no partition to mark
            continue
        context.log_event(AssetCheckEvaluation(
            asset_key=AssetKey("document_embeddings"), check_name="points_match_chunks", passed=False,
            severity=AssetCheckSeverity.ERROR, description=f"{doc.name}: {problem}", partition=doc.partition_key,
            metadata={**naming(doc), "found_by": "audit"},
        ))
    repaired = repair(db.engine, store, report) if config.repair and problems else {}
    switch = generations.promote_if_complete if config.repair or not problems else generations.status
    promotion = switch(db.engine, vector_store.client, vector_store.collection, embedder.fingerprint)
    context.add_output_metadata({
        "documents_checked": report.documents_checked, "points_checked": report.points_checked,
        "documents_with_problems": len(problems), "collection": store.collection,
        "search_reads": promotion.serving, "documents_left_to_reembed": promotion.waiting_for, **repaired,
    })
    if problems and not repaired:
        raise Failure(
            f"{len(problems)} document(s) do not match their points (\"\" = points naming no document); see the points_match_chunks "
            "check on their partitions, then launch audit_index with repair: true (config of audit_points) or run `rag-pipeline verify --repair`",
        )


@job(name="audit_index", executor_def=in_process_executor, description="Corpus-wide audit of chunk rows against Qdrant points.")
def audit_index_job():
    audit_points()


def audit_schedule(cron: str) -> ScheduleDefinition:
    return ScheduleDefinition(
        name="nightly_index_audit", job=audit_index_job, cron_schedule=cron,
        default_status=DefaultScheduleStatus.RUNNING,
        description="The corpus-wide audit (RAG_AUDIT_CRON); a mismatch fails the run and marks the documents.",
    )
