"""The three per-document assets: source text, chunks, embeddings.

Each run covers a contiguous range of document partitions; per-document results are attached
to that document's materialization, and a document that fails is recorded and reported without
failing the others.

The steps import `core.pipeline` (pandas, openai, qdrant-client) when they run: the code server
loads this module to serve the definitions and never runs a step (ARCHITECTURE.md, "Code server").
"""


import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Sequence

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

from rag_pipeline.core import generations, records
from rag_pipeline.core.audit import audit_documents
from rag_pipeline.defs.checks import INDEXED_IN_TIME, document_check, evaluate_per_document
from rag_pipeline.defs.partitions import documents_partitions, partition_keys_read_once
from rag_pipeline.defs.resources import (
    ChunkerResource,
    DatabaseResource,
    EmbedderResource,
    InboxResource,
    VectorStoreResource,
    run_started_at,
)

if TYPE_CHECKING:
    from rag_pipeline.core.pipeline import Outcome

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


@contextmanager
def waiting_on_failure(context: AssetExecutionContext, engine) -> Iterator[None]:  # noqa: ANN001
    """A step that fails as a whole leaves its documents pending with the reason; if the
    infrastructure was at fault, the attempt is not held against them."""
    try:
        yield
    except Exception as exc:
        from rag_pipeline.core import faults

        try:
            records.note_wait(engine, context.partition_keys, faults.describe(exc), faults.is_infrastructure(exc))
        except Exception:  # the database may be what failed
            context.log.warning("could not record the failure against the documents", exc_info=True)
        raise


def _run_started(context: AssetExecutionContext):  # noqa: ANN202
    """The guard against undoing a newer configuration's work is the run's start, not the step's."""
    return run_started_at(context.instance, context.run.run_id)


def _report(context: AssetExecutionContext, outcomes: Sequence["Outcome"]) -> dict:
    with partition_keys_read_once(context.instance):
        return _report_each(context, outcomes)


def _report_each(context: AssetExecutionContext, outcomes: Sequence["Outcome"]) -> dict:
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
    check_specs=[document_check("parsed", "source_document", "The upload was readable and parseable; "
                                "a failure names the reason (the document is parked, others go on).")],
    **COMMON,
)
def source_document(
    context: AssetExecutionContext, db: DatabaseResource, inbox: InboxResource,
    chunker: ChunkerResource, embedder: EmbedderResource,
):
    from rag_pipeline.core import pipeline  # see the module docstring

    config = pipeline.index_config(chunker.config, embedder.fingerprint)
    with waiting_on_failure(context, db.engine):
        outcomes = pipeline.extract(
            db.engine, inbox.source, context.partition_keys, config, inbox.limits, _run_started(context)
        )
    results = {o.document_id: (o.status == "processed", o.reason or "parsed") for o in outcomes if o.status in ("processed", "failed")}
    yield from evaluate_per_document(context, "parsed", results, AssetCheckSeverity.WARN)
    yield MaterializeResult(metadata={"source": inbox.source.describe(), **_report(context, outcomes)})


@asset(
    description="Token-aware chunks of the document's current version (pandas -> the chunks table).",
    kinds={"pandas", "postgres"},
    deps=[source_document],
    check_specs=[
        AssetCheckSpec(
            "chunks_within_token_limit", asset="document_chunks", blocking=True,
            description="Every chunk written is non-empty and within the chunker's token limit. "
            "Blocking: embeddings are not computed from chunks that break it.",
        )
    ],
    **COMMON,
)
def document_chunks(
    context: AssetExecutionContext, db: DatabaseResource, inbox: InboxResource, chunker: ChunkerResource
) -> MaterializeResult:
    from rag_pipeline.core import pipeline  # see the module docstring

    with waiting_on_failure(context, db.engine):
        outcomes = pipeline.chunk(
            db.engine, context.partition_keys, chunker.config, inbox.max_chunks, _run_started(context)
        )
    limit = chunker.config.max_tokens
    over = {o.document_id: o.metrics["max_chunk_tokens"] for o in outcomes if o.metrics.get("max_chunk_tokens", 0) > limit}
    return MaterializeResult(
        metadata={**_report(context, outcomes), "chunker": chunker.config.fingerprint},
        check_results=[
            AssetCheckResult(
                check_name="chunks_within_token_limit", passed=not over,
                description=f"all chunks within {limit} tokens" if not over else f"{len(over)} document(s) over {limit} tokens",
                metadata={"over_limit": MetadataValue.json(over)},
            )
        ],
    )


@asset(
    description="A vector for every chunk text of the document's current version, from the embedding "
    "cache (Postgres) or the endpoint: each distinct text is embedded once per model and width.",
    kinds={"openai", "postgres"},
    deps=[document_chunks],
    # Calls to the embedding endpoint queue across runs (limit in dagster.yaml `concurrency.pools`).
    pool="rag_embedding_endpoint",
    **COMMON,
)
def chunk_vectors(
    context: AssetExecutionContext, db: DatabaseResource, embedder: EmbedderResource, chunker: ChunkerResource,
) -> MaterializeResult:
    from rag_pipeline.core import pipeline  # see the module docstring

    with waiting_on_failure(context, db.engine):
        model = embedder.get()
        _, outcomes = pipeline.compute_vectors(
            db.engine, model, context.partition_keys, chunker.config, embedder.fingerprint, embedder.batch_size,
            _run_started(context), embedder.in_flight,
        )
    run = next((o.metrics for o in outcomes if "embedding_calls_in_run" in o.metrics), {})
    return MaterializeResult(
        metadata={
            **_report(context, outcomes), "model": model.model,
            "embedding_calls": run.get("embedding_calls_in_run", 0), "texts_embedded": run.get("texts_embedded_in_run", 0),
            "cache_hits": sum(o.metrics.get("cache_hits", 0) for o in outcomes),
        },
    )


@asset(
    description="Chunk vectors in Qdrant, one point per chunk with a deterministic id; the document is "
    "switched to its new chunk set in one locked write.",
    kinds={"qdrant"},
    deps=[chunk_vectors],
    # No pool: embedded Qdrant admits one process per folder, and the step holds it only for
    # its Qdrant work (see below); a server takes concurrent writers.
    check_specs=[
        document_check("points_match_chunks", "document_embeddings",
                       "Qdrant holds exactly the served chunks of the document, and no point of another version."),
        # Replaces a stale-processing reconciler: the sensor fails it for a document still not
        # indexed RAG_OVERDUE_SECONDS after its upload, or parked after RAG_MAX_ATTEMPTS runs;
        # the run that indexes the document passes it.
        document_check(INDEXED_IN_TIME, "document_embeddings",
                       "The document's current version was indexed, not left waiting past the threshold."),
    ],
    **COMMON,
)
def document_embeddings(
    context: AssetExecutionContext, db: DatabaseResource, vector_store: VectorStoreResource,
    embedder: EmbedderResource, chunker: ChunkerResource,
):
    from rag_pipeline.core import pipeline  # see the module docstring

    with waiting_on_failure(context, db.engine):
        computed = pipeline.cached_vectors(
            db.engine, context.partition_keys, chunker.config, embedder.fingerprint, embedder.dimensions,
        )
    # The embedded folder is held from here to release(): the next run's writer waits for it,
    # not for this step's reporting (a thousand check evaluations took as long as the write
    # itself at 5,000 documents, while every other run queued behind them).
    try:
        with waiting_on_failure(context, db.engine):
            store = vector_store.for_embedding(db.engine, embedder.spec)
            outcomes = pipeline.write_points(db.engine, store, computed)
        # After a change of embedding model, search moves to the new collection once the last
        # document is re-embedded (one alias update), and the old collection is dropped.
        promotion = generations.promote_if_complete(db.engine, vector_store.client, vector_store.collection, embedder.fingerprint)
        touched = [o.document_id for o in outcomes if o.status == "processed"]
        problems = audit_documents(db.engine, store, touched).problems()
    finally:
        vector_store.release()
    if promotion.switched:
        context.log.info(f"search now reads {promotion.serving}; dropped {promotion.dropped or 'nothing'}")
    yield from evaluate_per_document(
        context, "points_match_chunks", {d: (d not in problems, problems.get(d, "points match chunk rows")) for d in touched}
    )
    yield from evaluate_per_document(
        context, INDEXED_IN_TIME,
        {o.document_id: (True, f"indexed {o.metrics['seconds_since_upload']:.0f} s after upload")
         for o in outcomes if o.status == "processed"},
    )
    yield MaterializeResult(metadata={
        **_report(context, outcomes), "collection": store.collection, "search_reads": promotion.serving,
        "switched_search": promotion.switched, "documents_left_to_reembed": promotion.waiting_for,
    })
