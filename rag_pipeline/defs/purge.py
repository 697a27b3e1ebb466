"""Deleted uploads: their points and rows are purged by a run, so it is visible and retried."""

from dagster import OpExecutionContext, in_process_executor, job, op

from rag_pipeline.core import records
from rag_pipeline.defs.resources import DatabaseResource, VectorStoreResource


@op(description="Remove the Qdrant points and chunk rows of every document whose file was deleted.")
def purge_deleted_documents(context: OpExecutionContext, db: DatabaseResource, vector_store: VectorStoreResource) -> None:
    from rag_pipeline.core import pipeline  # pandas, qdrant-client: not in the code server

    doc_ids = records.documents_in(db.engine, records.DELETING)
    step = pipeline.purge(db.engine, vector_store.live(db.engine), doc_ids)
    purged = [o.document_id for o in step.with_status(pipeline.Status.PROCESSED)]
    context.log.info(f"purged {len(purged)} deleted document(s)")
    context.add_output_metadata({"purged": len(purged), "documents": purged[:100]})


@job(name="purge_deleted", executor_def=in_process_executor, description="Purge the documents whose uploads were deleted.")
def purge_deleted_job():
    purge_deleted_documents()
