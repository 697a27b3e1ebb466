"""Resources: the database, the embedder, the vector store, the inbox and the chunker.

Each opens what it needs lazily and closes it at teardown, so a run or a sensor tick never
leaves a connection or a client behind. Secrets arrive as EnvVar and are never shown.

Each is built from the settings (`rag_pipeline.settings`) by its `from_settings`: the settings
model holds every default, variable name and validation, so the fields here have none.

The embedding and vector-store libraries are imported when a client is first built: the code
server, which evaluates the sensor and never embeds or writes, then holds no openai,
qdrant-client or pandas (about 100 MB; see ARCHITECTURE.md, "Code server").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
import os
from typing import TYPE_CHECKING, Any, Optional, Union

from dagster import ConfigurableResource, DagsterInstance, EnvVar, InitResourceContext
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import Engine

from rag_pipeline.core import generations, records
from rag_pipeline.core.chunking import ChunkerConfig
from rag_pipeline.core.db import dispose_engine, open_engine
from rag_pipeline.core.generations import EmbeddingSpec
from rag_pipeline.core.heartbeat import Heartbeat
from rag_pipeline.core.parsing import Limits

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

    from rag_pipeline.core.embedding import Embedder
    from rag_pipeline.core.vectorstore import VectorStore
    from rag_pipeline.settings import Settings


def _secret(settings: Settings, field: str) -> Union[EnvVar, str, None]:
    # As an EnvVar the value stays out of the UI and run config (only the variable's name shows);
    # that needs the value to be the environment's, which every process of the deployment reads.
    value, name = getattr(settings, field), settings.env_name(field)
    return EnvVar(name) if value is not None and os.environ.get(name) == value else value


class DatabaseResource(ConfigurableResource):
    """Our tables (documents, versions, chunks) through SQLAlchemy + psycopg."""

    url: str = Field(description="SQLAlchemy URL; postgresql:// URLs use psycopg 3.")
    pool_size: int = Field(default=5, description="Connections this process may hold at most.")

    _heartbeat: Optional[Heartbeat] = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings) -> "DatabaseResource":
        return cls(url=_secret(settings, "database_url"))

    @property
    def engine(self) -> Engine:
        return open_engine(self.url, self.pool_size)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        # Every run uses the database, so its resource carries the run's heartbeat (read by the
        # HeartbeatRunLauncher). Sensor ticks have no run id and do not beat.
        if context.run is not None:
            self._heartbeat = Heartbeat(self.engine, context.run.run_id).start()

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        dispose_engine(self.url)


class EmbedderResource(ConfigurableResource):
    """Embeddings: offline hashing, any OpenAI-compatible endpoint, or a local model."""

    provider: str
    model: str
    dimensions: Optional[int]
    api_key: Optional[str] = None
    base_url: Optional[str] = None
    batch_size: int
    timeout_seconds: float = Field(description="Per request; a timeout is retried.")
    max_retries: int = Field(description="The openai client's retries (429/5xx/timeouts, with backoff).")
    concurrency: int = Field(
        description="Runs embedding at once: the slots of the rag_embedding_endpoint pool when it is created."
    )
    requests_in_flight: int = Field(
        description="Batches an embedding step has at the endpoint at once (OpenAI-compatible endpoints only).",
    )
    keyword_vectors: bool = Field(
        default=True, description="BM25 keyword vectors beside the dense ones (part of the index configuration).",
    )
    _embedder: Any = PrivateAttr(default=None)  # an Embedder, once built

    @classmethod
    def from_settings(cls, settings: Settings) -> "EmbedderResource":
        return cls(
            provider=settings.embedder, model=settings.embedding_model, dimensions=settings.embedding_dimensions,
            api_key=_secret(settings, "openai_api_key"), base_url=settings.openai_base_url,
            batch_size=settings.embed_batch_size, timeout_seconds=settings.embed_timeout_seconds,
            max_retries=settings.embed_max_retries, concurrency=settings.embed_concurrency,
            requests_in_flight=settings.embed_requests, keyword_vectors=settings.keyword_vectors,
        )

    @property
    def spec(self) -> EmbeddingSpec:
        return EmbeddingSpec(self.provider, self.model, self.dimensions, self.base_url, self.keyword_vectors)

    @property
    def fingerprint(self) -> str:
        """Identity of the vectors this configuration produces; no client or model is built."""
        return self.spec.fingerprint

    @property
    def in_flight(self) -> int:
        # A local model is one process's CPU already; concurrent calls would only contend.
        return max(1, self.requests_in_flight) if self.provider == "openai" else 1

    def get(self) -> Embedder:
        from rag_pipeline.core.embedding import make_embedder

        if self._embedder is None:
            self._embedder = make_embedder(
                self.provider, self.model, self.dimensions, self.api_key, self.base_url, self.batch_size,
                self.timeout_seconds, self.max_retries,
            )
        return self._embedder

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None


def run_started_at(instance: DagsterInstance | None, run_id: str | None) -> dt.datetime:
    """When the run began, not this process: with a multi-process executor (RAG_EXECUTOR) each
    step sets up its resources in its own process, possibly long after the run took its
    configuration."""
    record = instance.get_run_record_by_id(run_id) if instance is not None and run_id else None
    if record is None:
        return records.now()
    if record.start_time:
        return dt.datetime.fromtimestamp(record.start_time, dt.timezone.utc)
    return record.create_timestamp


class VectorStoreResource(ConfigurableResource):
    """Qdrant: a server when `url` is set, else the embedded store (Qdrant Edge) at `path`."""

    url: Optional[str] = None
    path: Optional[str] = None
    # An older version's embedded folder (qdrant-client local mode), copied on the store's first open.
    legacy_path: Optional[str] = None
    api_key: Optional[str] = None
    collection: str = Field(
        description="The alias search reads; each embedding configuration has its own collection behind it.",
    )
    timeout_seconds: float = 30.0
    _client: Any = PrivateAttr(default=None)  # a QdrantClient or EdgeClient, once opened
    _opened_at: Optional[dt.datetime] = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings: Settings) -> "VectorStoreResource":
        return cls(
            url=settings.qdrant_url, path=None if settings.qdrant_url else str(settings.qdrant_path),
            legacy_path=str(settings.legacy_qdrant_path) if settings.legacy_qdrant_path else None,
            api_key=_secret(settings, "qdrant_api_key"), collection=settings.collection,
        )

    def setup_for_execution(self, context: InitResourceContext) -> None:
        # When this run took its configuration: an index generation retired after it was
        # replaced by a newer configuration, and this run must not write into it.
        self._opened_at = run_started_at(context.instance, context.run.run_id if context.run else None)

    @property
    def client(self) -> QdrantClient:
        from rag_pipeline.core.vectorstore import open_client

        if self._client is None:
            self._client = open_client(
                self.url, Path(self.path) if self.path else None, self.api_key, self.timeout_seconds,
                legacy=Path(self.legacy_path) if self.legacy_path else None,
            )
        return self._client

    def for_embedding(self, engine: Engine, spec: EmbeddingSpec) -> VectorStore:
        """The collection vectors of `spec` are written to (registered on first use)."""
        from rag_pipeline.core.vectorstore import VectorStore

        generation = generations.for_writing(engine, self.client, self.collection, spec, self._opened_at)
        return VectorStore(self.client, generation.collection, keyword=spec.keyword)

    def live(self, engine: Engine) -> list[VectorStore]:
        """Every collection search reads now or after a pending switch (deletions go to all)."""
        from rag_pipeline.core.vectorstore import VectorStore

        generations.adopt_legacy(engine, self.client, self.collection)
        return [VectorStore(self.client, name) for name in generations.live_collections(engine, self.collection)]

    def release(self) -> None:
        """Close the client now (it reopens on next use): an embedded folder is then free for
        the next run's writer while this step still reports."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        self.release()


class InboxResource(ConfigurableResource):
    """The landing zone (a folder, or a bucket when `url` is set) and the limits applied to what
    arrives there. Our own resource, not dagster-aws's S3Resource: the source is plain core code
    that the CLI and scripts build without Dagster, and its client is built on first use, so
    the code server of a folder deployment never imports boto3 (ARCHITECTURE.md, "Decisions").
    When uploads are handed out is the sensor's policy (`core.planning.Policy`), not this."""

    path: str
    url: Optional[str] = Field(
        default=None, description="s3://BUCKET/PREFIX (RAG_INBOX_URL): uploads in a bucket; credentials from AWS_*.",
    )
    sources_file: Optional[str] = Field(
        default=None, description="RAG_SOURCES_FILE: SQL sources (and the landing zone) declared in YAML.",
    )
    s3_connect_timeout_seconds: float
    s3_read_timeout_seconds: float
    max_file_bytes: int = Field(description="Larger uploads are refused unread.")
    max_pages: int = Field(description="PDFs with more pages are refused.")
    max_chunks: int = Field(description="Documents making more chunks are refused.")
    max_unpacked_bytes: int = Field(description="A .docx unpacking to more is refused as a zip bomb.")
    parse_timeout_seconds: float = Field(description="PDF/DOCX/HTML parsing time per file (0: no child process).")
    parse_memory_mb: int = Field(description="Memory a PDF/DOCX/HTML parse may take.")
    max_rows: int = Field(description="Workbooks with more rows are refused.")
    max_image_pixels: int = Field(description="Images declaring more pixels are refused unread (pixel bombs).")
    ocr: str = Field(description="auto: OCR images and PDF pages without text; off: refuse them.")
    ocr_languages: str = Field(description="Tesseract languages, e.g. eng+deu.")

    _source: Any = PrivateAttr(default=None)

    @property
    def root(self) -> Path:
        return Path(self.path)

    @property
    def source(self):  # noqa: ANN201
        """Every source as a `core.sources.SourceSet` (one client per resource instance): it
        lists the landing zone, and reads each document from the source that holds it."""
        from rag_pipeline.core.sources import build_source_set

        if self._source is None:
            self._source = build_source_set(
                sources_file=self.sources_file, url=self.url, folder=self.root,
                timeouts=(self.s3_connect_timeout_seconds, self.s3_read_timeout_seconds),
            )
        return self._source

    @classmethod
    def from_settings(cls, settings: Settings) -> "InboxResource":
        return cls(
            path=str(settings.inbox_dir), url=settings.inbox_url,
            sources_file=str(settings.sources_file) if settings.sources_file else None,
            s3_connect_timeout_seconds=settings.s3_connect_timeout_seconds,
            s3_read_timeout_seconds=settings.s3_read_timeout_seconds, **dataclasses.asdict(settings.limits),
        )

    def describe(self) -> str:
        return self.url or f"folder {self.path}"

    @property
    def limits(self) -> Limits:
        return Limits(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Limits)})


class ChunkerResource(ConfigurableResource):
    """Token-aware chunking; changing these re-chunks (and re-embeds) documents."""

    max_tokens: int
    overlap: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "ChunkerResource":
        return cls(max_tokens=settings.chunk_tokens, overlap=settings.chunk_overlap)

    @property
    def config(self) -> ChunkerConfig:
        return ChunkerConfig(self.max_tokens, self.overlap)
