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
    Failure,
    MaterializeResult,
    MetadataValue,
)
from dagster import asset as dagster_asset

from rag_pipeline.core import generations, records
from rag_pipeline.core.audit import audit_documents
from rag_pipeline.defs.checks import INDEXED_IN_TIME, document_check, evaluate_per_document
from rag_pipeline.defs.dagster_internals import add_metadata_by_partition
from rag_pipeline.defs.failures import record_failed_documents
from rag_pipeline.defs.partitions import documents_partitions
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


def asset(**kwargs):  # noqa: ANN003, ANN201
    """Dagster's @asset, without its warning that single_run backfills are beta: they are what
    make a UI backfill one run per batch instead of one per document. Silenced for these
    definitions only, not for the rest of the process."""

    def decorate(fn):  # noqa: ANN001, ANN202
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=BetaWarning, message=".*backfill_policy.*")
            return dagster_asset(**kwargs)(fn)

    return decorate


GROUP = "ingestion"
COMMON = dict(
    partitions_def=documents_partitions,
    group_name=GROUP,
    backfill_policy=BackfillPolicy.single_run(),
    owners=["team:rag-platform"],
    tags={"domain": "rag"},
)


class StepDocuments:
    """The documents of a step's partition range: ids for the core, and for each the key the
    run names it by (a run created before readable keys names documents by id) and its file."""

    def __init__(self, context: AssetExecutionContext, engine) -> None:  # noqa: ANN001
        # Read once per step: each read resolves the range against every key of the corpus.
        self.keys = keys = list(context.partition_keys)
        refs = records.refs_by_key(engine, keys)
        self.by_id: dict[str, tuple[str, records.DocumentRef]] = {refs[k].id: (k, refs[k]) for k in keys if k in refs}
        self.ids = list(self.by_id)
        missing = [k for k in keys if k not in refs]
        if missing:
            context.log.warning(f"{len(missing)} partition(s) name no document, e.g. {missing[0]!r}")

    def key(self, doc_id: str) -> str:
        return self.by_id[doc_id][0]

    def naming(self, doc_id: str) -> dict:
        doc = self.by_id[doc_id][1]
        return {"knowledge_base": doc.knowledge_base, "path": doc.path, "document_id": doc.id}


def _documents(context: AssetExecutionContext, engine) -> StepDocuments:  # noqa: ANN001
    # Before any work: a database that cannot be read here fails the step with nothing to note.
    return StepDocuments(context, engine)


@contextmanager
def waiting_on_failure(context: AssetExecutionContext, engine, doc_ids: Sequence[str]) -> Iterator[None]:  # noqa: ANN001
    """A step that fails as a whole leaves its documents pending with the reason; if the
    infrastructure was at fault, the attempt is not held against them."""
    try:
        yield
    except Exception as exc:
        from rag_pipeline.core import faults

        failure = one_line_failure(context, exc)
        try:
            # The error's own words with its kind ("SourceUnavailable: ..."), unless the line says more.
            explained = failure is not None and failure.description not in str(exc)
            reason = failure.description if explained else faults.describe(exc)
            records.note_wait(engine, doc_ids, reason, faults.is_infrastructure(exc))
        except Exception:  # the database may be what failed
            context.log.warning("could not record the failure against the documents", exc_info=True)
        raise failure or exc


def one_line_failure(context: AssetExecutionContext, exc: Exception) -> Failure | None:
    """A setting or service at fault fails the step with the one line naming it (the UI's
    failure message, and `rag-pipeline run`'s), the traceback kept in the step's debug log."""
    import traceback

    from rag_pipeline.diagnose import explain

    line = explain(
        exc, database_url=getattr(getattr(context.resources, "db", None), "url", None),
        qdrant_url=getattr(getattr(context.resources, "vector_store", None), "url", None),
    )
    if line is None:
        return None
    context.log.debug("".join(traceback.format_exception(exc)))
    failure = Failure(description=line)
    failure.__suppress_context__ = True  # the line is the message; the traceback is in the log
    return failure


def _run_started(context: AssetExecutionContext):  # noqa: ANN202
    """The guard against undoing a newer configuration's work is the run's start, not the step's."""
    return run_started_at(context.instance, context.run.run_id)


def _report(context: AssetExecutionContext, docs: StepDocuments, outcomes: Sequence["Outcome"]) -> dict:
    from rag_pipeline.core.pipeline import Status  # see the module docstring

    counts: dict[str, int] = {}
    # Every partition's materialization names its file, whatever the step made of it.
    by_partition: dict[str, dict] = {docs.key(d): docs.naming(d) for d in docs.ids}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
        # The reason ahead of the document's own figures (the step's figures, shared by the
        # range, come first: Dagster merges them in before a partition's own).
        meta = {"reason": o.reason} if o.reason else {}
        meta.update({**docs.naming(o.document_id), "status": str(o.status), "version": o.version or ""})
        for key, value in o.metrics.items():
            meta[key] = MetadataValue.md(value) if key == "preview" and value else value
        by_partition[docs.key(o.document_id)] = meta
        if o.status == Status.FAILED:
            context.log.warning(f"document {docs.by_id[o.document_id][1].name} failed: {o.reason}")
    add_metadata_by_partition(context, context.asset_key, by_partition, step_keys=docs.keys)
    return {f"documents_{k}": v for k, v in sorted(counts.items())}  # a Status formats as its value


def _failed_documents(context: AssetExecutionContext, engine, docs: StepDocuments) -> None:  # noqa: ANN001
    """After the step's materializations are stored: the documents of the range that are
    failed (refused or parsed badly here or in an earlier step, parked, over a limit) are
    marked failed on this asset (defs/failures.py), so the UI shows them red, not
    materialized. Each step marks its own asset: a step that never runs (its run failed before
    it) stored no materialization to override."""
    rows = records.get_documents(engine, docs.ids)
    failed = [(docs.key(d), r.error or "failed") for d, r in rows.items() if r.status == records.FAILED]
    record_failed_documents(
        context.instance, failed, [context.asset_key], job_name=context.run.job_name, failed_in_run=context.run.run_id,
    )


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
    docs = _documents(context, db.engine)
    with waiting_on_failure(context, db.engine, docs.ids):
        step = pipeline.extract(
            db.engine, inbox.source, docs.ids, config=config, limits=inbox.limits, started_at=_run_started(context)
        )
    results = {
        o.document_id: (o.status == pipeline.Status.PROCESSED, o.reason or "parsed")
        for o in step.outcomes if o.status in (pipeline.Status.PROCESSED, pipeline.Status.FAILED)
    }
    yield from evaluate_per_document(context, "parsed", results, docs.by_id, AssetCheckSeverity.WARN)
    yield MaterializeResult(metadata={**step.metrics, **_report(context, docs, step.outcomes)})
    _failed_documents(context, db.engine, docs)


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
):
    from rag_pipeline.core import pipeline  # see the module docstring

    docs = _documents(context, db.engine)
    with waiting_on_failure(context, db.engine, docs.ids):
        step = pipeline.chunk(
            db.engine, docs.ids, chunker=chunker.config, max_chunks=inbox.max_chunks, started_at=_run_started(context)
        )
    limit = chunker.config.max_tokens
    over = {
        docs.key(o.document_id): o.metrics["max_chunk_tokens"]
        for o in step.outcomes if o.metrics.get("max_chunk_tokens", 0) > limit
    }
    yield MaterializeResult(
        metadata={**_report(context, docs, step.outcomes), **step.metrics},
        check_results=[
            AssetCheckResult(
                check_name="chunks_within_token_limit", passed=not over,
                description=f"all chunks within {limit} tokens" if not over else f"{len(over)} document(s) over {limit} tokens",
                metadata={"over_limit": MetadataValue.json(over)},
            )
        ],
    )
    _failed_documents(context, db.engine, docs)


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
):
    from rag_pipeline.core import pipeline  # see the module docstring

    docs = _documents(context, db.engine)
    with waiting_on_failure(context, db.engine, docs.ids):
        model = embedder.get()
        step = pipeline.compute_vectors(
            db.engine, docs.ids, embedder=model, chunker=chunker.config, embedding=embedder.fingerprint,
            batch_size=embedder.batch_size, started_at=_run_started(context), requests=embedder.in_flight,
        )
    yield MaterializeResult(
        metadata={
            **_report(context, docs, step.outcomes), "model": model.model,
            "embedding_calls": step.metrics.get("embedding_calls_in_run", 0),
            "texts_embedded": step.metrics.get("texts_embedded_in_run", 0),
            "embed_seconds": step.metrics.get("embed_seconds_batch", 0.0),
            "cache_hits": sum(o.metrics.get("cache_hits", 0) for o in step.outcomes),
        },
    )
    _failed_documents(context, db.engine, docs)


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

    docs = _documents(context, db.engine)
    with waiting_on_failure(context, db.engine, docs.ids):
        computed = pipeline.cached_vectors(
            db.engine, docs.ids, chunker=chunker.config, embedding=embedder.fingerprint, dimensions=embedder.dimensions,
        )
    # The embedded folder is held from here to release(): the next run's writer waits for it,
    # not for this step's reporting (a thousand check evaluations took as long as the write
    # itself at 5,000 documents, while every other run queued behind them).
    try:
        with waiting_on_failure(context, db.engine, docs.ids):
            store = vector_store.for_embedding(db.engine, embedder.spec)
            step = pipeline.write_points(db.engine, store, computed)
        # After a change of embedding model, search moves to the new collection once the last
        # document is re-embedded (one alias update), and the old collection is dropped.
        promotion = generations.promote_if_complete(db.engine, vector_store.client, vector_store.collection, embedder.fingerprint)
        indexed = step.with_status(pipeline.Status.PROCESSED)
        touched = [o.document_id for o in indexed]
        problems = audit_documents(db.engine, store, touched).problems()
    finally:
        vector_store.release()
    if promotion.switched:
        context.log.info(f"search now reads {promotion.serving}; dropped {promotion.dropped or 'nothing'}")
    yield from evaluate_per_document(
        context, "points_match_chunks", {d: (d not in problems, problems.get(d, "points match chunk rows")) for d in touched},
        docs.by_id,
    )
    yield from evaluate_per_document(
        context, INDEXED_IN_TIME,
        {o.document_id: (True, f"indexed {o.metrics['seconds_since_upload']:.0f} s after upload") for o in indexed},
        docs.by_id,
    )
    yield MaterializeResult(metadata={
        **_report(context, docs, step.outcomes), **step.metrics, "search_reads": promotion.serving,
        "switched_search": promotion.switched, "documents_left_to_reembed": promotion.waiting_for,
    })
    _failed_documents(context, db.engine, docs)
