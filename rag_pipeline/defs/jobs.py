from dagster import AssetSelection, define_asset_job, in_process_executor

# One process per run: the run holds one database pool and one Qdrant client (which the
# embedded Qdrant requires). Scale-out is across runs, via the run launcher.
index_documents_job = define_asset_job(
    "index_documents",
    selection=AssetSelection.groups("ingestion"),
    executor_def=in_process_executor,
    description="Extract, chunk and embed a range of documents.",
)
