"""Resources: the database, the embedder, the vector store, the inbox and the chunker.

Each opens what it needs lazily and closes it at teardown, so a run or a sensor tick never
leaves a connection or a client behind. Secrets arrive as EnvVar and are never shown.

The embedding and vector-store libraries are imported when a client is first built: the code
server, which evaluates the sensor and never embeds or writes, then holds no openai,
qdrant-client or pandas (about 100 MB; see ARCHITECTURE.md, "Code server").
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from dagster import ConfigurableResource, DagsterInstance, InitResourceContext
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


class DatabaseResource(ConfigurableResource):
    """Our tables (documents, versions, chunks) through SQLAlchemy + psycopg."""

    url: str = Field(description="SQLAlchemy URL; postgresql:// URLs use psycopg 3.")
    pool_size: int = Field(default=5, description="Connections this process may hold at most.")

    _heartbeat: Optional[Heartbeat] = PrivateAttr(default=None)

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

    provider: str = "hash"
    model: str = "hash-ngrams-v1"
    dimensions: Optional[int] = 384
    api_key: Optional[str] = None
    base_url: Optional[str] = None
    batch_size: int = 128
    timeout_seconds: float = Field(default=60.0, description="Per request; a timeout is retried.")
    max_retries: int = Field(default=6, description="The openai client's retries (429/5xx/timeouts, with backoff).")
    concurrency: int = Field(
        default=2, description="Runs embedding at once: the slots of the rag_embedding_endpoint pool when it is created."
    )
    requests_in_flight: int = Field(
        default=2, description="Batches an embedding step has at the endpoint at once (OpenAI-compatible endpoints only).",
    )
    _embedder: Any = PrivateAttr(default=None)  # an Embedder, once built

    @property
    def spec(self) -> EmbeddingSpec:
        return EmbeddingSpec(self.provider, self.model, self.dimensions, self.base_url)

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
    """Qdrant: a server when `url` is set, else an embedded folder at `path`."""

    url: Optional[str] = None
    path: Optional[str] = None
    api_key: Optional[str] = None
    collection: str = Field(
        default="rag_chunks",
        description="The alias search reads; each embedding configuration has its own collection behind it.",
    )
    timeout_seconds: float = 30.0
    _client: Any = PrivateAttr(default=None)  # a QdrantClient, once opened
    _opened_at: Optional[dt.datetime] = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        # When this run took its configuration: an index generation retired after it was
        # replaced by a newer configuration, and this run must not write into it.
        self._opened_at = run_started_at(context.instance, context.run.run_id if context.run else None)

    @property
    def client(self) -> QdrantClient:
        from rag_pipeline.core.vectorstore import open_client

        if self._client is None:
            self._client = open_client(self.url, Path(self.path) if self.path else None, self.api_key, self.timeout_seconds)
        return self._client

    def for_embedding(self, engine: Engine, spec: EmbeddingSpec) -> VectorStore:
        """The collection vectors of `spec` are written to (registered on first use)."""
        from rag_pipeline.core.vectorstore import VectorStore

        return VectorStore(self.client, generations.for_writing(engine, self.client, self.collection, spec, self._opened_at).collection)

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
    the code server of a folder deployment never imports boto3 (ARCHITECTURE.md, "Decisions")."""

    path: str
    url: Optional[str] = Field(
        default=None, description="s3://BUCKET/PREFIX (RAG_INBOX_URL): uploads in a bucket; credentials from AWS_*.",
    )
    max_file_bytes: int = Field(default=Limits.max_file_bytes, description="Larger uploads are refused unread.")
    max_pages: int = Field(default=Limits.max_pages, description="PDFs with more pages are refused.")
    max_chunks: int = Field(default=Limits.max_chunks, description="Documents making more chunks are refused.")
    max_unpacked_bytes: int = Field(
        default=Limits.max_unpacked_bytes, description="A .docx unpacking to more is refused as a zip bomb."
    )
    parse_timeout_seconds: float = Field(
        default=Limits.parse_timeout_seconds, description="PDF/DOCX/HTML parsing time per file (0: no child process)."
    )
    parse_memory_mb: int = Field(default=Limits.parse_memory_mb, description="Memory a PDF/DOCX/HTML parse may take.")
    docs_per_run: int = 2500
    settle_seconds: float = Field(
        default=1.0, description="A file modified this recently is still being written: picked up on a later tick."
    )
    overdue_seconds: float = Field(default=120.0, description="A document not indexed this long after upload is reported.")
    max_attempts: int = Field(default=3, description="Runs a document version is handed to before it is parked.")

    _source: Any = PrivateAttr(default=None)

    @property
    def root(self) -> Path:
        return Path(self.path)

    @property
    def source(self):  # noqa: ANN201
        """The landing zone as a `core.sources.Source` (one client per resource instance)."""
        from rag_pipeline.core.sources import open_source

        if self._source is None:
            self._source = open_source(url=self.url, folder=self.root)
        return self._source

    def describe(self) -> str:
        return self.url or f"folder {self.path}"

    @property
    def limits(self) -> Limits:
        return Limits(
            self.max_file_bytes, self.max_pages, self.max_chunks, self.max_unpacked_bytes,
            self.parse_timeout_seconds, self.parse_memory_mb,
        )


class ChunkerResource(ConfigurableResource):
    """Token-aware chunking; changing these re-chunks (and re-embeds) documents."""

    max_tokens: int = 400
    overlap: int = 60

    @property
    def config(self) -> ChunkerConfig:
        return ChunkerConfig(self.max_tokens, self.overlap)
