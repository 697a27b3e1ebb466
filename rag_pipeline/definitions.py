"""Dagster definitions, built from environment settings (see rag_pipeline.settings)."""

from __future__ import annotations

import warnings

from dagster import BetaWarning, Definitions

from rag_pipeline.defs import dagster_internals, tuning
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
from rag_pipeline.defs.sensors import source_sensor_defs
from rag_pipeline.settings import Settings


def build_resources(settings: Settings) -> dict:
    return {
        "db": DatabaseResource.from_settings(settings),
        "inbox": InboxResource.from_settings(settings),
        "chunker": ChunkerResource.from_settings(settings),
        "embedder": EmbedderResource.from_settings(settings),
        "vector_store": VectorStoreResource.from_settings(settings),
    }


def versioned_assets(settings: Settings) -> list:
    """The assets, with the configuration that shapes each one's output as its code version:
    after a chunker or embedding change the UI marks every partition built with the old one
    stale, and a backfill of them re-indexes (search switches when it is complete)."""
    chunker = ChunkerResource.from_settings(settings).config.fingerprint
    embedding = settings.embedding_spec.fingerprint
    versions = {"document_chunks": chunker, "chunk_vectors": embedding, "document_embeddings": f"{chunker}|{embedding}"}
    kinds = configured_kinds(settings)
    return [
        a.map_asset_specs(lambda spec: spec.replace_attributes(
            code_version=versions.get(spec.key.to_user_string()), kinds=kinds[spec.key.to_user_string()],
        ))
        for a in (source_document, document_chunks, chunk_vectors, document_embeddings)
    ]


def configured_kinds(settings: Settings) -> dict[str, set[str]]:
    """The UI's kind tags, naming the backends this deployment runs on (not the production
    ones: the defaults are the data folder's PostgreSQL, embedded Qdrant and the offline embedder)."""
    database = "sqlite" if settings.database_url.startswith("sqlite") else "postgres"
    embedder = {"openai": "openai", "local": "huggingface"}.get(settings.embedder, "offline")
    return {
        "source_document": {"python", database, *(["s3"] if settings.inbox_url else [])},
        "document_chunks": {"pandas", database},
        "chunk_vectors": {embedder, database},
        "document_embeddings": {"qdrant"} if settings.qdrant_url else {"qdrant", "embedded"},
    }


def _is_landing(declared, name: str) -> bool:  # noqa: ANN001
    return any(s.name == name and s.kind != "sql" for s in declared.sources)


def build_definitions(settings: Settings | None = None) -> Definitions:
    settings = settings or Settings.from_env()
    # Code servers, run workers and step workers all load the definitions.
    tuning.install()
    if settings.run_start == "fork":
        dagster_internals.fork_runs(preload=("rag_pipeline.defs.run_preload",))
    with warnings.catch_warnings():
        # Dagster passes the beta `owners` parameter to SensorDefinition itself: a notice about
        # its own internals, printed by every process that loads the definitions.
        warnings.filterwarnings("ignore", category=BetaWarning, message="Parameter `owners` of initializer `SensorDefinition")
        # Named from the sources file alone (nothing connects): a source whose entry is bad
        # still gets its sensor, whose ticks say what to fix.
        from rag_pipeline.core.sources import catalog

        declared = catalog.load(settings.sources_file)
        landing = declared.landing.name if declared.landing else catalog.DEFAULT_LANDING_NAME
        sql_names = [n for n in declared.names() if n != landing and not _is_landing(declared, n)]
        sensors = source_sensor_defs(
            interval_seconds=settings.sensor_interval_seconds, policy=settings.policy,
            landing_name=landing, sql_names=sql_names, sql_reads={s.name: catalog.reads(s) for s in declared.sql},
        )
    return Definitions(
        assets=versioned_assets(settings),
        jobs=[index_documents_job, purge_deleted_job, audit_index_job],
        sensors=sensors,
        schedules=[audit_schedule(settings.audit_cron)],
        resources=build_resources(settings),
        executor=executor_from_config(settings.executor, settings.executor_config),
    )


defs = build_definitions()
