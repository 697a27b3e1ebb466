import logging

from dagster import AssetSelection, define_asset_job

# Its executor is the definitions' default, chosen by configuration (defs/executor.py).
index_documents_job = define_asset_job(
    "index_documents",
    selection=AssetSelection.groups("ingestion"),
    description="Extract, chunk and embed a range of documents.",
)

# The pool the embedding step claims slots from (see the assets).
ENDPOINT_POOL = "rag_embedding_endpoint"
POOLS = (ENDPOINT_POOL,)


def ensure_pools(instance, endpoint_slots: int | None = None) -> None:  # noqa: ANN001
    """Create the pools at their default limit before runs need them. Dagster creates a pool on
    first use, but runs that start together race to create it (the loser's transaction fails on
    PostgreSQL), so the sensor, which always precedes its runs, does it first."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    known = set(storage.get_concurrency_keys())
    for pool in POOLS:
        if pool not in known:
            try:
                storage.initialize_concurrency_limit_to_default(pool)
                if pool == ENDPOINT_POOL and endpoint_slots:
                    # Only when first created: a limit set later in the UI or CLI stays.
                    storage.set_concurrency_slots(pool, endpoint_slots)
            except Exception:  # another process created it first: that is all we wanted
                logging.getLogger(__name__).info("pool %s was created concurrently", pool)
