"""Settings read from the environment.

The names are a contract: operators script against them, so they never change meaning.
With nothing set, everything lives under one data folder on embedded defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from rag_pipeline.core.parsing.base import Limits

DEFAULT_MODELS = {
    "hash": "hash-ngrams-v1",
    "openai": "text-embedding-3-small",
    "local": "all-MiniLM-L6-v2",
}
DEFAULT_DIMENSIONS = {"hash": 384, "local": 384}


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    inbox_dir: Path
    qdrant_url: str | None
    qdrant_path: Path
    collection: str
    embedder: str
    embedding_model: str
    embedding_dimensions: int | None
    openai_base_url: str | None = None
    chunk_tokens: int = 400
    chunk_overlap: int = 60
    docs_per_run: int = 2500
    settle_seconds: float = 1.0
    sensor_interval_seconds: int = 1
    overdue_seconds: float = 120.0
    audit_cron: str = "17 3 * * *"
    executor: str = "in_process"
    executor_config: str | None = field(default=None, repr=False)  # may name a broker with credentials
    max_attempts: int = 3
    embed_batch_size: int = 128
    embed_timeout_seconds: float = 60.0
    embed_max_retries: int = 6
    embed_concurrency: int = 2
    embed_requests: int = 2
    # s3://BUCKET/PREFIX: uploads land in a bucket instead of inbox_dir (credentials and endpoint
    # from boto3's standard AWS configuration, never from here).
    inbox_url: str | None = None
    limits: Limits = field(default_factory=Limits)
    # Secrets are never part of repr(): a settings object can end up in a log line.
    openai_api_key: str | None = field(default=None, repr=False)
    qdrant_api_key: str | None = field(default=None, repr=False)

    @property
    def embedding_spec(self):  # noqa: ANN201
        from rag_pipeline.core.generations import EmbeddingSpec

        return EmbeddingSpec(self.embedder, self.embedding_model, self.embedding_dimensions, self.openai_base_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        data_dir = Path(env.get("RAG_DATA_DIR") or ".rag_data").expanduser().resolve()
        embedder = (env.get("RAG_EMBEDDER") or "hash").strip().lower()
        if embedder not in DEFAULT_MODELS:
            raise ValueError(
                f"RAG_EMBEDDER must be one of {sorted(DEFAULT_MODELS)}, got {embedder!r}"
            )
        dims_raw = env.get("RAG_EMBEDDING_DIMENSIONS", "").strip()
        dims = int(dims_raw) if dims_raw else DEFAULT_DIMENSIONS.get(embedder)
        return cls(
            data_dir=data_dir,
            database_url=env.get("DATABASE_URL") or f"sqlite:///{data_dir / 'rag.sqlite3'}",
            inbox_dir=Path(env.get("RAG_INBOX_DIR") or data_dir / "inbox").expanduser().resolve(),
            qdrant_url=env.get("QDRANT_URL") or None,
            qdrant_path=Path(env.get("QDRANT_PATH") or data_dir / "qdrant").expanduser().resolve(),
            collection=env.get("RAG_COLLECTION") or "rag_chunks",
            embedder=embedder,
            embedding_model=env.get("RAG_EMBEDDING_MODEL") or DEFAULT_MODELS[embedder],
            embedding_dimensions=dims,
            openai_base_url=env.get("OPENAI_BASE_URL") or None,
            chunk_tokens=_int(env, "RAG_CHUNK_TOKENS", 400),
            chunk_overlap=_int(env, "RAG_CHUNK_OVERLAP", 60),
            docs_per_run=_int(env, "RAG_DOCS_PER_RUN", 2500),
            settle_seconds=float(_int(env, "RAG_SETTLE_SECONDS", 1)),
            sensor_interval_seconds=_int(env, "RAG_SENSOR_INTERVAL_SECONDS", 1),
            overdue_seconds=float(_int(env, "RAG_OVERDUE_SECONDS", 120)),
            max_attempts=_int(env, "RAG_MAX_ATTEMPTS", 3),
            audit_cron=env.get("RAG_AUDIT_CRON") or "17 3 * * *",
            executor=(env.get("RAG_EXECUTOR") or "in_process").strip(),
            executor_config=env.get("RAG_EXECUTOR_CONFIG") or None,
            embed_batch_size=_int(env, "RAG_EMBED_BATCH_SIZE", 128),
            embed_timeout_seconds=float(_int(env, "RAG_EMBED_TIMEOUT_SECONDS", 60)),
            embed_max_retries=_int(env, "RAG_EMBED_MAX_RETRIES", 6),
            embed_concurrency=_int(env, "RAG_EMBED_CONCURRENCY", 2),
            embed_requests=_int(env, "RAG_EMBED_REQUESTS", 2),
            inbox_url=_inbox_url(env),
            limits=Limits(
                max_file_bytes=_int(env, "RAG_MAX_FILE_BYTES", Limits.max_file_bytes),
                max_pages=_int(env, "RAG_MAX_PAGES", Limits.max_pages),
                max_chunks=_int(env, "RAG_MAX_CHUNKS", Limits.max_chunks),
                max_unpacked_bytes=_int(env, "RAG_MAX_UNPACKED_BYTES", Limits.max_unpacked_bytes),
                parse_timeout_seconds=float(_int(env, "RAG_PARSE_TIMEOUT_SECONDS", int(Limits.parse_timeout_seconds))),
                parse_memory_mb=_int(env, "RAG_PARSE_MEMORY_MB", Limits.parse_memory_mb),
            ),
            openai_api_key=env.get("OPENAI_API_KEY") or None,
            qdrant_api_key=env.get("QDRANT_API_KEY") or None,
        )


def _inbox_url(env: Mapping[str, str]) -> str | None:
    url = (env.get("RAG_INBOX_URL") or "").strip()
    if url and not url.startswith("s3://"):
        raise ValueError(f"RAG_INBOX_URL must be s3://BUCKET/PREFIX, got {url!r}")
    return url or None


def open_source(settings: Settings):  # noqa: ANN201
    """The landing zone outside Dagster (CLI, scripts): the bucket of RAG_INBOX_URL, else the
    folder RAG_INBOX_DIR."""
    from rag_pipeline.core.sources import open_source as _open

    return _open(url=settings.inbox_url, folder=settings.inbox_dir)


def open_vector_store(settings: Settings, engine=None):  # noqa: ANN001, ANN201
    """The collection the configured embedding writes to, outside Dagster (CLI, tests,
    scripts). With `engine`, it is registered as that configuration's generation."""
    from rag_pipeline.core import generations
    from rag_pipeline.core.vectorstore import VectorStore, open_client

    client = open_client(settings.qdrant_url, settings.qdrant_path, settings.qdrant_api_key)
    spec = settings.embedding_spec
    if engine is not None:
        return VectorStore(client, generations.for_writing(engine, client, settings.collection, spec).collection)
    return VectorStore(client, generations.collection_name(settings.collection, spec.fingerprint))


def make_settings_embedder(settings: Settings, spec=None):  # noqa: ANN001, ANN201
    """The configured embedder, or one for `spec` (a collection's recorded configuration; the
    API key still comes from the environment)."""
    from rag_pipeline.core.embedding import make_embedder

    spec = spec or settings.embedding_spec
    return make_embedder(
        spec.provider, spec.model, spec.dimensions, settings.openai_api_key, spec.base_url,
        settings.embed_batch_size, settings.embed_timeout_seconds, settings.embed_max_retries,
    )
