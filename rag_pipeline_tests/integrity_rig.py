"""The pipeline's core steps on a real PostgreSQL, embedded Qdrant and the openai client over
HTTP, driven step by step so a test can stop at the exact moment a race needs, plus the
invariants that must hold whatever happened."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from rag_pipeline.core import detection, pipeline, records
from rag_pipeline.core.audit import audit_all
from rag_pipeline.core.chunking import ChunkerConfig
from rag_pipeline.core.db import chunks, documents
from rag_pipeline.core.embedding import Embedder
from rag_pipeline.core.identity import document_id
from rag_pipeline.core.parsing import Limits
from rag_pipeline.core.pipeline import Outcome
from rag_pipeline.core.vectorstore import VectorStore
from rag_pipeline.devtools.embedding_server import EmbeddingServer

EMBEDDING = "openai:test-embed:256"


@dataclass
class Rig:
    engine: Engine
    store: VectorStore
    embedder: Embedder
    inbox: Path
    server: EmbeddingServer
    chunker: ChunkerConfig = field(default_factory=lambda: ChunkerConfig(40, 8))
    texts_before: Counter = field(default_factory=Counter)

    @property
    def config(self) -> str:
        return pipeline.index_config(self.chunker, EMBEDDING)

    def write(self, kb: str, path: str, data: bytes | str) -> str:
        target = self.inbox / kb / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        return document_id(kb, path)

    def remove(self, kb: str, path: str) -> None:
        (self.inbox / kb / path).unlink()

    def detect(self) -> detection.Detection:
        return detection.detect(self.engine, self.inbox)

    def extract(self, ids: list[str]) -> list[Outcome]:
        return pipeline.extract(self.engine, self.inbox, ids, config=self.config, limits=Limits()).outcomes

    def chunk(self, ids: list[str]) -> list[Outcome]:
        return pipeline.chunk(self.engine, ids, chunker=self.chunker, max_chunks=Limits.max_chunks).outcomes

    def embed(self, ids: list[str]) -> list[Outcome]:
        """The two steps as the job runs them: vectors into the cache, then the write step
        reading the rows anew and its vectors from the cache."""
        computed = self.compute(ids)
        step = computed.outcomes
        written = pipeline.write_points(self.engine, self.store, pipeline.cached_vectors(
            self.engine, ids, chunker=self.chunker, embedding=EMBEDDING, dimensions=computed.dimensions,
        )).outcomes
        # Documents the vector step parked are reported as such; the rest as the write saw them.
        failed = {o.document_id: o for o in step if o.status == "failed"}
        return [failed.get(o.document_id, o) for o in written if o.document_id not in failed] + list(failed.values())

    def prepare(self, ids: list[str]) -> None:
        """Register what changed and run a run's first two steps: the documents wait for the
        embedding step, which is where the races live."""
        self.detect()
        self.extract(ids)
        self.chunk(ids)

    def compute(self, ids: list[str]) -> pipeline.Computed:
        """The embed step's first half: vectors computed and cached, nothing written yet."""
        return pipeline.compute_vectors(self.engine, ids, embedder=self.embedder, chunker=self.chunker, embedding=EMBEDDING, batch_size=8)

    def write_points(self, computed: pipeline.Computed) -> list[Outcome]:
        return pipeline.write_points(self.engine, self.store, computed).outcomes

    def index(self, ids: list[str]) -> dict[str, str]:
        """A whole run over `ids`: the embed step's status per document."""
        self.extract(ids)
        self.chunk(ids)
        return {o.document_id: o.status for o in self.embed(ids)}

    def purge(self) -> list[Outcome]:
        return pipeline.purge(self.engine, [self.store], records.documents_in(self.engine, records.DELETING)).outcomes

    def settle(self) -> None:
        """What the sensor and its runs converge to: detect, purge, index until nothing waits."""
        for _ in range(5):
            self.detect()
            self.purge()
            pending = detection.pending_documents(self.engine, None)
            if not pending:
                return
            self.index(pending)
        raise AssertionError("documents still pending after 5 rounds")

    def sent_texts(self) -> Counter:
        """Texts the endpoint embedded since the rig was made."""
        return self.server.texts - self.texts_before

    def point_ids(self, doc_id: str) -> dict[str, str]:
        return self.store.points_of([doc_id])[doc_id]

    def search_texts(self, query: str, k: int = 10) -> list[str]:
        [vector] = self.embedder.embed([query])
        return [h.text for h in self.store.search(vector, k=k)]

    def assert_invariants(self) -> None:
        """At any moment: one row per identity, no point without its chunk row, every served
        chunk has its point, and no stray point except those of a deleted document awaiting
        its purge."""
        with self.engine.connect() as conn:
            chunk_ids = set(conn.execute(sa.select(chunks.c.chunk_id)).scalars())
            keys = conn.execute(sa.select(documents.c.knowledge_base, documents.c.path)).all()
        assert len(keys) == len(set(keys)), "two documents for one (knowledge base, path)"
        points = {pid for pid, _ in self.store.iter_points()}
        assert points <= chunk_ids, f"{len(points - chunk_ids)} point(s) refer to chunks that are gone"
        report = audit_all(self.engine, self.store)
        assert not report.missing_points, report.problems()
        awaiting_purge = set(records.documents_in(self.engine, records.DELETING))
        assert set(report.orphan_points) <= awaiting_purge, report.problems()

    def assert_converged(self) -> None:
        """After settle(): every file indexed at its content, nothing else anywhere."""
        files = {
            (p.relative_to(self.inbox).parts[0], "/".join(p.relative_to(self.inbox).parts[1:])): p.read_bytes()
            for p in self.inbox.rglob("*") if p.is_file()
        }
        rows = {(r.knowledge_base, r.path): r for r in records.list_documents(self.engine)}
        assert set(rows) == set(files)
        for key, row in rows.items():
            assert row.status == records.INDEXED and row.version == row.indexed_version, (key, row.status, row.error)
        with self.engine.connect() as conn:
            served = conn.execute(
                sa.select(sa.func.count()).select_from(chunks.join(documents, documents.c.id == chunks.c.document_id))
                .where((chunks.c.version == documents.c.indexed_version) & (chunks.c.chunker == documents.c.indexed_chunker))
            ).scalar_one()
            total = conn.execute(sa.select(sa.func.count()).select_from(chunks)).scalar_one()
        assert total == served, "chunk rows of versions no longer served"
        assert self.store.count() == served
        self.assert_invariants()
