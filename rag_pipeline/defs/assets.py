"""The three per-document assets: source text, chunks, embeddings.

Each run covers a contiguous range of document partitions; per-document results are attached
to that document's materialization, and a document that fails is recorded and reported without
failing the others.
"""


import warnings
from typing import Sequence

from dagster import (
    BetaWarning,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from rag_pipeline.core import pipeline
from rag_pipeline.core.pipeline import Outcome
from rag_pipeline.defs.checks import audit_documents
from rag_pipeline.defs.partitions import documents_partitions
from rag_pipeline.defs.resources import (
    ChunkerResource,
    DatabaseResource,
    EmbedderResource,
    InboxResource,
    VectorStoreResource,
)

# single_run backfills are what make a UI backfill one run per batch instead of one per document.
warnings.filterwarnings("ignore", category=BetaWarning, message=".*backfill_policy.*")

GROUP = "ingestion"
COMMON = dict(
    partitions_def=documents_partitions,
    group_name=GROUP,
    backfill_policy=BackfillPolicy.single_run(),
    owners=["team:rag-platform"],
    tags={"domain": "rag"},
)


def _report(context: AssetExecutionContext, outcomes: Sequence[Outcome]) -> dict:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
        meta = {"status": o.status, "version": o.version or ""}
        if o.reason:
            meta["reason"] = o.reason
        for key, value in o.metrics.items():
            meta[key] = MetadataValue.md(value) if key == "preview" and value else value
        context.add_asset_metadata(meta, partition_key=o.document_id)
        if o.status == "failed":
            context.log.warning(f"document {o.document_id} failed: {o.reason}")
    return {f"documents_{k}": v for k, v in sorted(counts.items())}


@asset(
    description="An uploaded file's extracted text (one row per document version in Postgres).",
    kinds={"python", "postgres"},
    check_specs=[AssetCheckSpec("parsed_without_errors", asset="source_document",
                                description="Every document in the run was readable and parseable.")],
    **COMMON,
)
def source_document(
    context: AssetExecutionContext, db: DatabaseResource, inbox: InboxResource,
    chunker: ChunkerResource, embedder: EmbedderResource,
) -> MaterializeResult:
    config = pipeline.index_config(chunker.config, embedder.fingerprint)
    outcomes = pipeline.extract(db.engine, inbox.root, context.partition_keys, config, inbox.max_file_bytes)
    failed = {o.document_id: o.reason for o in outcomes if o.status == "failed"}
    return MaterializeResult(
        metadata=_report(context, outcomes),
        check_results=[
            AssetCheckResult(
                check_name="parsed_without_errors",
                passed=not failed,
                severity=AssetCheckSeverity.WARN,
                description="all documents parsed" if not failed else f"{len(failed)} document(s) refused",
                metadata={"failed": MetadataValue.json(failed)},
            )
        ],
    )


@asset(
    description="Token-aware chunks of the document's current version (pandas -> the chunks table).",
    kinds={"pandas", "postgres"},
    deps=[source_document],
    **COMMON,
)
def document_chunks(
    context: AssetExecutionContext, db: DatabaseResource, chunker: ChunkerResource
) -> MaterializeResult:
    outcomes = pipeline.chunk(db.engine, context.partition_keys, chunker.config)
    return MaterializeResult(metadata={**_report(context, outcomes), "chunker": chunker.config.fingerprint})


@asset(
    description="Chunk vectors in Qdrant, one point per chunk with a deterministic id.",
    kinds={"openai", "qdrant"},
    deps=[document_chunks],
    check_specs=[AssetCheckSpec("points_match_chunks", asset="document_embeddings",
                                description="Qdrant holds exactly the current version's chunks of each document.")],
    **COMMON,
)
def document_embeddings(
    context: AssetExecutionContext, db: DatabaseResource, vector_store: VectorStoreResource,
    embedder: EmbedderResource, chunker: ChunkerResource,
) -> MaterializeResult:
    model = embedder.get()
    store = vector_store.get()
    config = pipeline.index_config(chunker.config, embedder.fingerprint)
    outcomes = pipeline.embed(db.engine, store, model, context.partition_keys, config, embedder.batch_size)
    audit = audit_documents(db.engine, store, context.partition_keys)
    return MaterializeResult(
        metadata={**_report(context, outcomes), "model": model.model, "collection": store.collection},
        check_results=[
            AssetCheckResult(
                check_name="points_match_chunks",
                passed=not audit,
                description="points match chunk rows" if not audit else f"{len(audit)} mismatch(es)",
                metadata={"mismatches": MetadataValue.json(audit)},
            )
        ],
    )
