"""Qdrant: a server by URL, or an embedded folder.

Point id == chunk id, so an upsert of the same chunk is a no-op and a point can never stand
for a chunk other than the one whose id it carries.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterator, Sequence

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client.http import models as qm

from rag_pipeline.core import qdrant_local

# Excluded documents sent to Qdrant as a filter, at most; more are filtered from the hits.
EXCLUDE_IN_QUERY = 1_000
PAYLOAD_INDEXES = ("knowledge_base", "document_id", "version", "chunker")
# Above this many document ids, a scroll of embedded Qdrant reads every point (see points_of).
LOCAL_FILTER_MAX_VALUES = 16

qdrant_local.install()


class VectorStoreError(Exception):
    pass


def open_client(
    url: str | None,
    path: Path | None,
    api_key: str | None = None,
    timeout: float = 30.0,
    lock_wait: float = 900.0,
) -> QdrantClient:
    if url:
        return QdrantClient(url=url, api_key=api_key, timeout=int(timeout))
    assert path is not None
    path.mkdir(parents=True, exist_ok=True)
    # Embedded Qdrant allows one process per folder, and that is what serializes the runs'
    # writers: a second one waits here (sleeping, a claim every 0.2 s at most) until the first
    # closes its client, which the writing step does as soon as its Qdrant work is done.
    deadline = time.monotonic() + lock_wait
    delay, waited = 0.02, False
    while True:
        try:
            return QdrantClient(path=str(path))
        except RuntimeError as exc:
            if "already accessed" not in str(exc) or time.monotonic() > deadline:
                raise VectorStoreError(
                    f"embedded Qdrant folder {path} is busy in another process; "
                    "set QDRANT_URL to a Qdrant server for concurrent access"
                ) from exc
            if not waited:
                logging.getLogger(__name__).info("waiting for embedded Qdrant folder %s (open in another process)", path)
                waited = True
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


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


def _match(key: str, value: str) -> qm.FieldCondition:
    return qm.FieldCondition(key=key, match=qm.MatchValue(value=value))


class VectorStore:
    def __init__(self, client: QdrantClient, collection: str) -> None:
        self.client = client
        self.collection = collection
        # Embedded Qdrant is not safe for concurrent writers in one process; a server is, and
        # the lock costs it nothing measurable.
        self._lock = threading.RLock()

    def ensure_collection(self, dimensions: int) -> None:
        with self._lock:
            self._ensure_collection(dimensions)

    def _ensure_collection(self, dimensions: int) -> None:
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
            points = qm.Batch(
                ids=list(ids[start : start + batch]),
                # Lists or float32 arrays in; the client validates lists of floats.
                vectors=np.asarray(vectors[start : start + batch], dtype=np.float32).tolist(),
                payloads=list(payloads[start : start + batch]),
            )
            with self._lock:
                self.client.upsert(self.collection, points=points, wait=True)

    def delete_document(self, document_id: str) -> None:
        """Every point of a document (it was deleted)."""
        self._delete(document_id)

    def delete_ids(self, ids: Sequence[str]) -> None:
        if ids and self.exists():
            with self._lock:
                self.client.delete(self.collection, points_selector=qm.PointIdsList(points=list(ids)), wait=True)

    def _delete(self, document_id: str, must: list | None = None, must_not: list | None = None) -> None:
        if not self.exists():
            return
        flt = qm.Filter(must=[_match("document_id", document_id), *(must or [])], must_not=must_not)
        with self._lock:
            self.client.delete(self.collection, points_selector=qm.FilterSelector(filter=flt), wait=True)

    def points_of(self, document_ids: Sequence[str], page: int = 1024) -> dict[str, dict[str, str]]:
        """document id -> {point id: version} for these documents, in one scroll."""
        out: dict[str, dict[str, str]] = {d: {} for d in document_ids}
        if not document_ids or not self.exists():
            return out
        wanted = set(document_ids)
        flt: qm.Filter | None = qm.Filter(must=[qm.FieldCondition(key="document_id", match=qm.MatchAny(any=sorted(wanted)))])
        if self._is_local and len(wanted) > LOCAL_FILTER_MAX_VALUES:
            # Embedded Qdrant has no payload index: it tests every point against every listed
            # id. For a run's 500 documents in a 16,500-point collection that took 3.3 s; one
            # pass over all points, matched here against a set, 0.3 s.
            flt, page = None, max(page, 8192)
        offset = None
        while True:
            with self._lock:
                points, offset = self.client.scroll(
                    self.collection, scroll_filter=flt, limit=page, offset=offset,
                    with_payload=["document_id", "version"], with_vectors=False,
                )
            for point in points:
                payload = point.payload or {}
                doc = payload.get("document_id", "")
                if doc in wanted:
                    out[doc][str(point.id)] = payload.get("version", "")
            if offset is None:
                return out

    def count(self, document_id: str | None = None, version: str | None = None) -> int:
        if not self.exists():
            return 0
        must = []
        if document_id is not None:
            must.append(qm.FieldCondition(key="document_id", match=qm.MatchValue(value=document_id)))
        if version is not None:
            must.append(qm.FieldCondition(key="version", match=qm.MatchValue(value=version)))
        with self._lock:
            return self.client.count(self.collection, count_filter=qm.Filter(must=must) if must else None, exact=True).count

    def iter_points(self, page: int = 1024) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every (point id, payload without text), for the audit."""
        if not self.exists():
            return
        offset = None
        while True:
            with self._lock:
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

    def search(
        self, vector: Sequence[float], k: int = 5, knowledge_base: str | None = None,
        exclude_documents: Collection[str] = (),
    ) -> list[Hit]:
        """Top-k points; `exclude_documents` are left out (deleted files whose points are still
        waiting for their purge run: a deletion leaves search at the tick that sees it)."""
        if not self.exists():
            return []
        must = [qm.FieldCondition(key="knowledge_base", match=qm.MatchValue(value=knowledge_base))] if knowledge_base else None
        # A few excluded documents go into the query; after a mass deletion the hits are
        # filtered here instead (embedded Qdrant tests each point against the whole list).
        in_query = len(exclude_documents) <= EXCLUDE_IN_QUERY
        must_not = (
            [qm.FieldCondition(key="document_id", match=qm.MatchAny(any=list(exclude_documents)))]
            if exclude_documents and in_query else None
        )
        flt = qm.Filter(must=must, must_not=must_not) if must or must_not else None
        excluded = frozenset(() if in_query else exclude_documents)
        limit = k
        while True:
            with self._lock:
                points = self.client.query_points(
                    self.collection, query=list(vector), query_filter=flt, limit=limit, with_payload=True
                ).points
            kept = [p for p in points if (p.payload or {}).get("document_id") not in excluded]
            if len(kept) >= k or len(points) < limit:
                return [_hit(p) for p in kept[:k]]
            limit *= 4


    def close(self) -> None:
        self.client.close()


def _hit(point: qm.ScoredPoint) -> Hit:
    p = point.payload or {}
    return Hit(
        score=float(point.score), document_id=p.get("document_id", ""), chunk_index=int(p.get("chunk_index", -1)),
        knowledge_base=p.get("knowledge_base", ""), path=p.get("source_path", ""), text=p.get("text", ""),
        version=p.get("version", ""), page=p.get("page"), heading=p.get("heading"),
    )
