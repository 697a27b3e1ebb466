"""Dagster definitions, built from environment settings (see rag_pipeline.settings)."""

from __future__ import annotations

import dataclasses
import os

from dagster import Definitions, EnvVar

from rag_pipeline.defs.audit import audit_index_job, audit_schedule
from rag_pipeline.defs.assets import chunk_vectors, document_chunks, document_embeddings, source_document
from rag_pipeline.defs.executor import executor_from_config
from rag_pipeline.defs.jobs import index_documents_job
from rag_pipeline.defs.purge import purge_deleted_job
from rag_pipeline.defs.resources import (
    ChunkerResource,
    DatabaseResource,
    EmbedderResource,
    InboxResource,
    VectorStoreResource,
)
from rag_pipeline.defs.sensors import inbox_sensor_def
from rag_pipeline.settings import Settings


def _secret(name: str, fallback: str | None = None):  # noqa: ANN202
    # EnvVar keeps the value out of the UI and run config; only the variable's name shows.
    return EnvVar(name) if os.environ.get(name) else fallback


def build_resources(settings: Settings) -> dict:
    return {
        "db": DatabaseResource(url=_secret("DATABASE_URL", settings.database_url)),
        "inbox": InboxResource(
            path=str(settings.inbox_dir), url=settings.inbox_url, **dataclasses.asdict(settings.limits),
            docs_per_run=settings.docs_per_run, settle_seconds=settings.settle_seconds, overdue_seconds=settings.overdue_seconds,
            max_attempts=settings.max_attempts,
        ),
        "chunker": ChunkerResource(max_tokens=settings.chunk_tokens, overlap=settings.chunk_overlap),
        "embedder": EmbedderResource(
            provider=settings.embedder, model=settings.embedding_model,
            dimensions=settings.embedding_dimensions, api_key=_secret("OPENAI_API_KEY"),
            base_url=settings.openai_base_url, batch_size=settings.embed_batch_size,
            timeout_seconds=settings.embed_timeout_seconds, max_retries=settings.embed_max_retries,
            concurrency=settings.embed_concurrency, requests_in_flight=settings.embed_requests,
        ),
        "vector_store": VectorStoreResource(
            url=settings.qdrant_url, path=None if settings.qdrant_url else str(settings.qdrant_path),
            api_key=_secret("QDRANT_API_KEY"), collection=settings.collection,
        ),
    }


def versioned_assets(settings: Settings) -> list:
    """The assets, with the configuration that shapes each one's output as its code version:
    after a chunker or embedding change the UI marks every partition built with the old one
    stale, and a backfill of them re-indexes (search switches when it is complete)."""
    chunker = ChunkerResource(max_tokens=settings.chunk_tokens, overlap=settings.chunk_overlap).config.fingerprint
    embedding = settings.embedding_spec.fingerprint
    versions = {"document_chunks": chunker, "chunk_vectors": embedding, "document_embeddings": f"{chunker}|{embedding}"}
    return [
        a.map_asset_specs(lambda spec: spec.replace_attributes(code_version=versions.get(spec.key.to_user_string())))
        for a in (source_document, document_chunks, chunk_vectors, document_embeddings)
    ]


def build_definitions(settings: Settings | None = None) -> Definitions:
    settings = settings or Settings.from_env()
    return Definitions(
        assets=versioned_assets(settings),
        jobs=[index_documents_job, purge_deleted_job, audit_index_job],
        sensors=[inbox_sensor_def(settings.sensor_interval_seconds)],
        schedules=[audit_schedule(settings.audit_cron)],
        resources=build_resources(settings),
        executor=executor_from_config(settings.executor, settings.executor_config),
    )


defs = build_definitions()
