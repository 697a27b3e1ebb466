"""Qdrant: a server by URL, or an embedded folder.

Point id == chunk id, so an upsert of the same chunk is a no-op and a point can never stand
for a chunk other than the one whose id it carries.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping, Sequence

from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from rag_pipeline.core.batching import batched
from rag_pipeline.core import qdrant_edge_store, sparse
from rag_pipeline.core.qdrant_edge_store import EdgeClient, StoreBusy

if TYPE_CHECKING:  # a server's client only: importing qdrant-client costs seconds (core/edge_models.py)
    from qdrant_client import QdrantClient

# Excluded documents sent to Qdrant as a filter, at most; more are filtered from the hits.
EXCLUDE_IN_QUERY = 1_000
PAYLOAD_INDEXES = ("knowledge_base", "document_id", "version", "chunker", "file_type", "folders")
MODES = ("hybrid", "dense", "keyword")
# Candidates each of dense and keyword search contributes to the fusion: RRF needs more than
# the k shown, or a chunk ranked 12th by both would never be seen.
FUSION_CANDIDATES = 50
# Dense hits below this share nothing with the query (the offline embedder scores an unrelated
# chunk 0; a semantic model never scores a related one this low): filler, not a candidate, or
# RRF would rank it beside real keyword hits.
DENSE_FLOOR = 0.0005


class VectorStoreError(Exception):
    pass


def open_client(
    url: str | None,
    path: Path | None,
    api_key: str | None = None,
    timeout: float = 30.0,
    lock_wait: float = 900.0,
    *,
    legacy: Path | None = None,
) -> QdrantClient | EdgeClient:
    """A Qdrant server by `url`, else the embedded store (Qdrant Edge) in the folder `path`.

    `legacy` is where qdrant-client's local mode kept the embedded index before (`<data>/qdrant`):
    a store opened for the first time copies it (see `open_embedded`)."""
    if url:
        from qdrant_client import QdrantClient

        return QdrantClient(url=url, api_key=api_key, timeout=int(timeout))
    assert path is not None
    return open_embedded(path, lock_wait=lock_wait, legacy=legacy)


def open_embedded(path: Path | str, *, lock_wait: float = 900.0, legacy: Path | str | None = None) -> EdgeClient:
    path, legacy = Path(path), Path(legacy) if legacy is not None else None
    if qdrant_edge_store.is_legacy_folder(path):
        raise VectorStoreError(
            f"{path} is an embedded Qdrant folder of qdrant-client's local mode, which this version no "
            f"longer opens; copy it into a new folder with `rag-pipeline vectors migrate --from {path}` "
            "(into QDRANT_PATH, so point QDRANT_PATH at a new folder first)"
        )
    path.mkdir(parents=True, exist_ok=True)
    # One process per folder, and that is what serializes the runs' writers: a second one waits
    # here (sleeping, a claim every 0.2 s at most) until the first closes its client, which the
    # writing step does as soon as its Qdrant work is done.
    deadline = time.monotonic() + lock_wait
    delay, waited = 0.02, False
    while True:
        try:
            client = EdgeClient(path)
            break
        except StoreBusy as exc:
            if time.monotonic() > deadline:
                raise VectorStoreError(
                    f"embedded vector store {path} is busy in another process; "
                    "set QDRANT_URL to a Qdrant server for concurrent access"
                ) from exc
            if not waited:
                logging.getLogger(__name__).info("waiting for embedded vector store %s (open in another process)", path)
                waited = True
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
    if not qdrant_edge_store.is_store(path):
        try:
            _first_open(client, legacy)
        except BaseException:
            client.close()
            raise
    return client


def _first_open(client: EdgeClient, legacy: Path | None) -> None:
    # Automatic, once: local mode read its whole folder into every process that opened it, so
    # copying it costs about one such open plus a few seconds of Edge writes, and every open after
    # it is ~0.3 s. Under the store's lock, so a second process waits and then finds it done.
    if legacy is None or not qdrant_edge_store.is_legacy_folder(legacy):
        client.initialise()
        return
    log = logging.getLogger(__name__)
    log.warning("copying the embedded Qdrant folder %s (qdrant-client local mode) into %s (Qdrant Edge)", legacy, client.path)
    try:
        copied = qdrant_edge_store.migrate_legacy(legacy, client)
    except RuntimeError as exc:
        raise VectorStoreError(
            f"could not copy the embedded Qdrant folder {legacy} into {client.path}: {exc}; "
            f"retry with `rag-pipeline vectors migrate` once no process of an older version has it open"
        ) from exc
    client.initialise({"migrated_from": str(legacy), "collections": copied})
    log.warning("copied %s; %s is no longer read and can be deleted", ", ".join(f"{n} ({c} points)" for n, c in copied.items()) or "no collections", legacy)


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
    # The score of each mode that found the point ("hybrid", "dense", "keyword"); a mode
    # missing is one whose candidates did not include it.
    scores: dict[str, float] = field(default_factory=dict)
    start: int | None = None  # offsets of `text` in the document's extracted text
    end: int | None = None
    indexed_at: str | None = None
    file_type: str | None = None
    title: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
    chunker: str | None = None


@dataclass(frozen=True)
class SearchFilter:
    """What a search is confined to; every field given must hold."""

    knowledge_base: str | None = None
    # A folder within the knowledge base ("policies/hr", "policies/hr/") or one file's path.
    path_prefix: str | None = None
    file_types: tuple[str, ...] = ()  # extensions without the dot: ("pdf", "md")
    metadata: Mapping[str, str] = field(default_factory=dict)  # what the parser declared (e-mail headers...)

    def conditions(self, qm: ModuleType) -> list:
        """The filter's conditions in the models `qm` of the client (see `models_for`)."""
        must: list = []
        if self.knowledge_base:
            must.append(_match(qm, "knowledge_base", self.knowledge_base))
        prefix = (self.path_prefix or "").strip("/")
        if prefix:
            folder = _match(qm, "folders", prefix + "/")
            if self.path_prefix.endswith("/"):
                must.append(folder)
            else:
                must.append(qm.Filter(should=[folder, _match(qm, "source_path", prefix)]))
        if self.file_types:
            types = sorted({t.lower().lstrip(".") for t in self.file_types})
            must.append(qm.FieldCondition(key="file_type", match=qm.MatchAny(any=types)))
        for key, value in sorted(self.metadata.items()):
            must.append(_match(qm, f"meta.{key}", str(value)))
        return must


def _match(qm: ModuleType, key: str, value: str) -> Any:
    return qm.FieldCondition(key=key, match=qm.MatchValue(value=value))


def models_for(client: QdrantClient | EdgeClient) -> ModuleType:
    """The request models a client takes: qdrant-client's for a server, and for the embedded
    store the plain stand-ins of core/edge_models.py, so a search never imports qdrant-client."""
    if isinstance(client, EdgeClient):
        from rag_pipeline.core import edge_models

        return edge_models
    from qdrant_client.http import models

    return models


def is_embedded(client: QdrantClient | EdgeClient) -> bool:
    """The in-process store (Qdrant Edge): one process per folder."""
    return isinstance(client, EdgeClient)


class VectorStore:
    def __init__(self, client: QdrantClient, collection: str, *, keyword: bool = False) -> None:
        self.client = client
        self.collection = collection
        # Whether points written get a keyword (sparse) vector, and a collection created here
        # the sparse vector to hold it.
        self.keyword = keyword
        self._has_keyword: bool | None = None
        # Embedded Qdrant is not safe for concurrent writers in one process; a server is, and
        # the lock costs it nothing measurable.
        self._lock = threading.RLock()
        self.qm = models_for(client)

    def ensure_collection(self, dimensions: int) -> None:
        with self._lock:
            self._ensure_collection(dimensions)

    def _ensure_collection(self, dimensions: int) -> None:
        if self.client.collection_exists(self.collection):
            info = self.client.get_collection(self.collection)
            params = info.config.params.vectors
            size = getattr(params, "size", None)  # None: named vectors
            if size is not None and size != dimensions:
                raise VectorStoreError(
                    f"collection {self.collection!r} holds {size}-dimensional vectors but the "
                    f"embedder produces {dimensions}; use another RAG_COLLECTION or re-embed"
                )
            return
        self._has_keyword = self.keyword
        self.client.create_collection(
            self.collection,
            vectors_config=self.qm.VectorParams(size=dimensions, distance=self.qm.Distance.COSINE),
            # IDF computed by Qdrant from the collection's own points: BM25's corpus half.
            sparse_vectors_config=(
                {sparse.SPARSE_VECTOR: self.qm.SparseVectorParams(modifier=self.qm.Modifier.IDF)} if self.keyword else None
            ),
        )
        for field in PAYLOAD_INDEXES:
            self.client.create_payload_index(self.collection, field, field_schema=self.qm.PayloadSchemaType.KEYWORD)

    def ensure_payload_indexes(self, fields: Sequence[str]) -> None:
        """Keyword indexes on metadata fields (`meta.project`), once per field and client."""
        done = self.__dict__.setdefault("_indexed", set())
        todo = [f for f in fields if f not in done]
        if not todo:
            done.update(todo)
            return
        with self._lock:
            existing = set((self.client.get_collection(self.collection).payload_schema or {}).keys())
            for field in todo:
                if field not in existing:
                    self.client.create_payload_index(self.collection, field, field_schema=self.qm.PayloadSchemaType.KEYWORD)
        done.update(todo)

    def exists(self) -> bool:
        return self.client.collection_exists(self.collection)

    def upsert(self, ids: Sequence[str], vectors: Sequence[Sequence[float]], payloads: Sequence[dict[str, Any]], batch: int = 256) -> None:
        """Points with these dense vectors and payloads; with `keyword`, each also gets the
        keyword vector of its payload's `text`."""
        for start in range(0, len(ids), batch):
            # Lists or float32 arrays in; the client validates lists of floats.
            dense = np.asarray(vectors[start : start + batch], dtype=np.float32).tolist()
            part = list(payloads[start : start + batch])
            # A collection built without a sparse vector (an index adopted from before them) takes
            # dense vectors only; its replacement will have both.
            if self.keyword and self.has_keyword_vectors():
                keyword = [sparse.document_vector(p.get("text", "")) for p in part]
                dense = {  # type: ignore[assignment]
                    "": dense,
                    sparse.SPARSE_VECTOR: [self.qm.SparseVector(indices=kv.indices, values=kv.values) for kv in keyword],
                }
            points = self.qm.Batch(ids=list(ids[start : start + batch]), vectors=dense, payloads=part)
            with self._lock:
                self.client.upsert(self.collection, points=points, wait=True)

    def delete_document(self, document_id: str) -> None:
        """Every point of a document (it was deleted)."""
        self._delete(document_id)

    def delete_ids(self, ids: Sequence[str]) -> None:
        if ids and self.exists():
            with self._lock:
                self.client.delete(self.collection, points_selector=self.qm.PointIdsList(points=list(ids)), wait=True)

    def _delete(self, document_id: str, must: list | None = None, must_not: list | None = None) -> None:
        if not self.exists():
            return
        flt = self.qm.Filter(must=[_match(self.qm, "document_id", document_id), *(must or [])], must_not=must_not)
        with self._lock:
            self.client.delete(self.collection, points_selector=self.qm.FilterSelector(filter=flt), wait=True)

    def points_of(self, document_ids: Sequence[str], page: int = 1024) -> dict[str, dict[str, str]]:
        """document id -> {point id: version} for these documents: one scroll per slice of
        `batched` ids, so the filter stays bounded however many documents an audit confirms."""
        out: dict[str, dict[str, str]] = {d: {} for d in document_ids}
        if not document_ids or not self.exists():
            return out
        for part in batched(sorted(set(document_ids))):
            wanted = set(part)
            flt = self.qm.Filter(must=[self.qm.FieldCondition(key="document_id", match=self.qm.MatchAny(any=part))])
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
                    break
        return out

    def count(self, document_id: str | None = None, version: str | None = None) -> int:
        if not self.exists():
            return 0
        must = []
        if document_id is not None:
            must.append(self.qm.FieldCondition(key="document_id", match=self.qm.MatchValue(value=document_id)))
        if version is not None:
            must.append(self.qm.FieldCondition(key="version", match=self.qm.MatchValue(value=version)))
        with self._lock:
            return self.client.count(self.collection, count_filter=self.qm.Filter(must=must) if must else None, exact=True).count

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
                    with_payload=self.qm.PayloadSelectorExclude(exclude=["text"]),
                    with_vectors=False,
                )
            for point in points:
                yield str(point.id), dict(point.payload or {})
            if offset is None:
                return

    def has_keyword_vectors(self) -> bool:
        """Whether the collection holds keyword vectors (an index built before them does not:
        it is searched dense until its replacement is complete)."""
        if self._has_keyword is None:
            if not self.exists():
                return False
            with self._lock:
                params = self.client.get_collection(self.collection).config.params
            self._has_keyword = sparse.SPARSE_VECTOR in (params.sparse_vectors or {})
        return self._has_keyword

    def search(
        self, vector: Sequence[float], k: int = 5, knowledge_base: str | None = None,
        exclude_documents: Collection[str] = (), where: Mapping[str, str] | None = None,
    ) -> list[Hit]:
        """Top-k points by the dense vector alone (see `query`)."""
        return self.query(
            dense=vector, k=k, mode="dense", where=SearchFilter(knowledge_base=knowledge_base),
            exclude_documents=exclude_documents, dense_floor=None,
        )

    def query(
        self, *, dense: Sequence[float] | None, keyword: sparse.SparseVector | None = None, k: int = 5,
        mode: str = "hybrid", where: SearchFilter | None = None, exclude_documents: Collection[str] = (),
        dense_floor: float | None = DENSE_FLOOR,
    ) -> list[Hit]:
        """Top-k points in `mode`: `dense`, `keyword`, or `hybrid` (both, fused by reciprocal
        rank in Qdrant: one query with two prefetches). Each hit carries the score of every
        mode that ranked it among its candidates. `exclude_documents` are left out (deleted
        files whose points are still waiting for their purge run: a deletion leaves search at
        the tick that sees it)."""
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r}; expected one of {', '.join(MODES)}")
        if not self.exists():
            return []
        if mode != "dense" and not self.has_keyword_vectors():
            mode = "dense"
        if mode == "keyword" and (keyword is None or not len(keyword)):
            return []  # a query of stop words only matches nothing by keyword
        if mode == "hybrid" and (keyword is None or not len(keyword)):
            mode = "dense"
        must = (where or SearchFilter()).conditions(self.qm)
        # A few excluded documents go into the query; after a mass deletion the hits are
        # filtered here instead (a query carrying thousands of ids is slow to send and match).
        in_query = len(exclude_documents) <= EXCLUDE_IN_QUERY
        must_not = (
            [self.qm.FieldCondition(key="document_id", match=self.qm.MatchAny(any=list(exclude_documents)))]
            if exclude_documents and in_query else None
        )
        flt = self.qm.Filter(must=must or None, must_not=must_not) if must or must_not else None
        excluded = frozenset(() if in_query else exclude_documents)
        limit = k
        while True:
            points, scores = self._ranked(dense, keyword, mode, flt, limit, dense_floor)
            kept = [p for p in points if (p.payload or {}).get("document_id") not in excluded]
            if len(kept) >= k or len(points) < limit:
                return [_hit(p, {m: s[p.id] for m, s in scores.items() if p.id in s}) for p in kept[:k]]
            limit *= 4

    def _ranked(
        self, dense: Sequence[float] | None, keyword: sparse.SparseVector | None, mode: str, flt: Any,
        limit: int, floor: float | None,
    ) -> tuple[list[Any], dict[str, dict[Any, float]]]:
        """The ranked points of `mode`, and each mode's scores by point id."""
        sparse_query = (
            self.qm.SparseVector(indices=keyword.indices, values=keyword.values) if keyword is not None else None
        )
        if mode == "dense":
            with self._lock:
                points = self.client.query_points(
                    self.collection, query=list(dense), query_filter=flt, limit=limit, with_payload=True,
                    score_threshold=floor,
                ).points
            return points, {"dense": {p.id: p.score for p in points}}
        if mode == "keyword":
            with self._lock:
                points = self.client.query_points(
                    self.collection, query=sparse_query, using=sparse.SPARSE_VECTOR, query_filter=flt, limit=limit,
                    with_payload=True,
                ).points
            return points, {"keyword": {p.id: p.score for p in points}}
        candidates = max(FUSION_CANDIDATES, limit)
        with self._lock:
            fused = self.client.query_points(
                self.collection, prefetch=[
                    self.qm.Prefetch(query=list(dense), filter=flt, limit=candidates, score_threshold=floor),
                    self.qm.Prefetch(query=sparse_query, using=sparse.SPARSE_VECTOR, filter=flt, limit=candidates),
                ], query=self.qm.FusionQuery(fusion=self.qm.Fusion.RRF), query_filter=flt, limit=limit,
                with_payload=True,
            ).points
        scores: dict[str, dict[Any, float]] = {"hybrid": {p.id: p.score for p in fused}}
        if not fused:
            return fused, scores
        # Each mode's own score of the fused hits only: scored among those ids, not the whole
        # collection ranked a second time per mode (that doubled a hybrid query's cost).
        ids = self.qm.Filter(must=[self.qm.HasIdCondition(has_id=[p.id for p in fused])])
        with self._lock:
            by_dense, by_keyword = self.client.query_batch_points(self.collection, requests=[
                self.qm.QueryRequest(query=list(dense), filter=ids, limit=len(fused), with_payload=False,
                                     score_threshold=floor),
                self.qm.QueryRequest(query=sparse_query, using=sparse.SPARSE_VECTOR, filter=ids, limit=len(fused),
                                     with_payload=False),
            ])
        scores["dense"] = {p.id: p.score for p in by_dense.points}
        # A fused hit sharing no term with the query has no keyword score (it came by meaning).
        scores["keyword"] = {p.id: p.score for p in by_keyword.points if p.score > 0}
        return fused, scores

    def close(self) -> None:
        self.client.close()


def _hit(point: Any, scores: dict[str, float] | None = None) -> Hit:
    p = point.payload or {}
    return Hit(
        score=float(point.score), document_id=p.get("document_id", ""), chunk_index=int(p.get("chunk_index", -1)),
        knowledge_base=p.get("knowledge_base", ""), path=p.get("source_path", ""), text=p.get("text", ""),
        version=p.get("version", ""), page=p.get("page"), heading=p.get("heading"),
        scores={m: float(v) for m, v in (scores or {}).items()}, start=p.get("start"), end=p.get("end"),
        indexed_at=p.get("indexed_at"), file_type=p.get("file_type"), title=p.get("title"), meta=dict(p.get("meta") or {}),
        chunker=p.get("chunker"),
    )
