"""Resources: the database, the embedder, the vector store, the inbox and the chunker.

Each opens what it needs lazily and closes it at teardown, so a run or a sensor tick never
leaves a connection or a client behind. Secrets arrive as EnvVar and are never shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import Engine

from rag_pipeline.core.chunking import ChunkerConfig
from rag_pipeline.core.db import dispose_engine, open_engine
from rag_pipeline.core.embedding import Embedder, make_embedder
from rag_pipeline.core.heartbeat import Heartbeat
from rag_pipeline.core.parsing import Limits
from rag_pipeline.core.vectorstore import VectorStore, open_client


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
    _embedder: Optional[Embedder] = PrivateAttr(default=None)

    @property
    def fingerprint(self) -> str:
        """Identity of the vectors this configuration produces; no client or model is built."""
        return f"{self.provider}:{self.model}:{self.dimensions}"

    def get(self) -> Embedder:
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


class VectorStoreResource(ConfigurableResource):
    """Qdrant: a server when `url` is set, else an embedded folder at `path`."""

    url: Optional[str] = None
    path: Optional[str] = None
    api_key: Optional[str] = None
    collection: str = "rag_chunks"
    timeout_seconds: float = 30.0
    _store: Optional[VectorStore] = PrivateAttr(default=None)

    def get(self) -> VectorStore:
        if self._store is None:
            client = open_client(self.url, Path(self.path) if self.path else None, self.api_key, self.timeout_seconds)
            self._store = VectorStore(client, self.collection)
        return self._store

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


class InboxResource(ConfigurableResource):
    """The landing directory and the limits applied to what arrives there."""

    path: str
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
    docs_per_run: int = 500
    settle_seconds: float = Field(
        default=1.0, description="A file modified this recently is still being written: picked up on a later tick."
    )
    overdue_seconds: float = Field(default=120.0, description="A document not indexed this long after upload is reported.")
    max_attempts: int = Field(default=3, description="Runs a document version is handed to before it is parked.")

    @property
    def root(self) -> Path:
        return Path(self.path)

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
