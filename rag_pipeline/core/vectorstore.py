"""Qdrant: a server by URL, or an embedded folder.

Point id == chunk id, so an upsert of the same chunk is a no-op and a point can never stand
for a chunk other than the one whose id it carries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from qdrant_client import QdrantClient
from qdrant_client.http import models as qm

PAYLOAD_INDEXES = ("knowledge_base", "document_id", "version")


class VectorStoreError(Exception):
    pass


def open_client(
    url: str | None,
    path: Path | None,
    api_key: str | None = None,
    timeout: float = 30.0,
    lock_wait: float = 120.0,
) -> QdrantClient:
    if url:
        return QdrantClient(url=url, api_key=api_key, timeout=int(timeout))
    assert path is not None
    path.mkdir(parents=True, exist_ok=True)
    # Embedded Qdrant allows one process per folder. Runs are separate processes, so a second
    # one waits for the folder instead of failing outright.
    deadline = time.monotonic() + lock_wait
    delay = 0.05
    while True:
        try:
            return QdrantClient(path=str(path))
        except RuntimeError as exc:
            if "already accessed" not in str(exc) or time.monotonic() > deadline:
                raise VectorStoreError(
                    f"embedded Qdrant folder {path} is busy in another process; "
                    "set QDRANT_URL to a Qdrant server for concurrent access"
                ) from exc
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


@dataclass
class Hit:
    score: float
    document_id: str
    chunk_index: int
    knowledge_base: str
    path: str
    text: str
    version: str
    page: int | None
    heading: str | None


class VectorStore:
    def __init__(self, client: QdrantClient, collection: str) -> None:
        self.client = client
        self.collection = collection

    def ensure_collection(self, dimensions: int) -> None:
        if self.client.collection_exists(self.collection):
            info = self.client.get_collection(self.collection)
            params = info.config.params.vectors
            size = params.size if isinstance(params, qm.VectorParams) else None
            if size is not None and size != dimensions:
                raise VectorStoreError(
                    f"collection {self.collection!r} holds {size}-dimensional vectors but the "
                    f"embedder produces {dimensions}; use another RAG_COLLECTION or re-embed"
                )
            return
        self.client.create_collection(
            self.collection,
            vectors_config=qm.VectorParams(size=dimensions, distance=qm.Distance.COSINE),
        )
        if not self._is_local:
            for field in PAYLOAD_INDEXES:
                self.client.create_payload_index(
                    self.collection, field, field_schema=qm.PayloadSchemaType.KEYWORD
                )

    @property
    def _is_local(self) -> bool:
        return type(self.client._client).__name__ == "QdrantLocal"

    def exists(self) -> bool:
        return self.client.collection_exists(self.collection)

    def upsert(self, ids: Sequence[str], vectors: Sequence[Sequence[float]], payloads: Sequence[dict[str, Any]], batch: int = 256) -> None:
        for start in range(0, len(ids), batch):
            self.client.upsert(
                self.collection,
                points=qm.Batch(
                    ids=list(ids[start : start + batch]),
                    vectors=[list(v) for v in vectors[start : start + batch]],
                    payloads=list(payloads[start : start + batch]),
                ),
                wait=True,
            )

    def delete_document(self, document_id: str, keep_version: str | None = None) -> None:
        """Remove a document's points, or only those of versions other than keep_version."""
        must: list[qm.Condition] = [qm.FieldCondition(key="document_id", match=qm.MatchValue(value=document_id))]
        must_not: list[qm.Condition] = []
        if keep_version is not None:
            must_not.append(qm.FieldCondition(key="version", match=qm.MatchValue(value=keep_version)))
        if not self.exists():
            return
        self.client.delete(
            self.collection,
            points_selector=qm.FilterSelector(filter=qm.Filter(must=must, must_not=must_not)),
            wait=True,
        )

    def count(self, document_id: str | None = None, version: str | None = None) -> int:
        if not self.exists():
            return 0
        must = []
        if document_id is not None:
            must.append(qm.FieldCondition(key="document_id", match=qm.MatchValue(value=document_id)))
        if version is not None:
            must.append(qm.FieldCondition(key="version", match=qm.MatchValue(value=version)))
        return self.client.count(self.collection, count_filter=qm.Filter(must=must) if must else None, exact=True).count

    def iter_points(self, page: int = 1024) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every (point id, payload without text), for the audit."""
        if not self.exists():
            return
        offset = None
        while True:
            points, offset = self.client.scroll(
                self.collection,
                limit=page,
                offset=offset,
                with_payload=qm.PayloadSelectorExclude(exclude=["text"]),
                with_vectors=False,
            )
            for point in points:
                yield str(point.id), dict(point.payload or {})
            if offset is None:
                return

    def search(self, vector: Sequence[float], k: int = 5, knowledge_base: str | None = None) -> list[Hit]:
        if not self.exists():
            return []
        flt = None
        if knowledge_base:
            flt = qm.Filter(must=[qm.FieldCondition(key="knowledge_base", match=qm.MatchValue(value=knowledge_base))])
        response = self.client.query_points(
            self.collection, query=list(vector), query_filter=flt, limit=k, with_payload=True
        )
        hits = []
        for point in response.points:
            p = point.payload or {}
            hits.append(
                Hit(
                    score=float(point.score),
                    document_id=p.get("document_id", ""),
                    chunk_index=int(p.get("chunk_index", -1)),
                    knowledge_base=p.get("knowledge_base", ""),
                    path=p.get("source_path", ""),
                    text=p.get("text", ""),
                    version=p.get("version", ""),
                    page=p.get("page"),
                    heading=p.get("heading"),
                )
            )
        return hits

    def close(self) -> None:
        self.client.close()
