"""The embedded vector store: Qdrant Edge shards behind the few QdrantClient methods we call.

qdrant-client's local mode (`QdrantClient(path=...)`) read every point into each process that
opened its folder and searched by brute force in Python: at 20,000 points, 13 s to open and
~0.9 s a search. Qdrant Edge (`qdrant_edge.EdgeShard`) is Qdrant's own engine in-process: on-disk
segments, payload indexes, sparse vectors with the IDF modifier, prefetch + RRF fusion; the same
folder opens in ~0.3 s and a hybrid search takes milliseconds (benchmarks/results/2026-12-06-edge-*).

`EdgeClient` offers the QdrantClient methods the pipeline uses, with the same signatures; it
takes qdrant-client's models or their plain stand-ins (core/edge_models.py, which VectorStore
uses for it, so a search never imports qdrant-client) and answers with the stand-ins, which have
the fields callers read. vectorstore.py, generations.py and search.py do not know which client
they talk to, and a server (QDRANT_URL) stays a plain QdrantClient.

Layout of the store folder:
    .lock                    held (flock) by the one process that has the store open
    store.json               written once the store is initialised (or migrated, see migrate_legacy)
    aliases.json             alias -> collection, replaced atomically (write + os.replace)
    collections/<name>/      one EdgeShard per collection

One process per folder, as before: Edge itself refuses a second opener of a shard (its WAL is
locked), but a store is several shards and an alias file, so the whole folder is taken with
one lock, and a busy folder is a `StoreBusy` the caller can wait on.

Durability: every update goes to the shard's write-ahead log before `update` returns, so a
process killed after an acknowledged upsert loses nothing (tested); `close` flushes the
segments, so reopening replays nothing.

Segment layout. Points arrive in an appendable segment, which holds its vectors and a sparse
inverted index rebuilt in RAM at every open. So a writer's close compacts (`optimize()`): a
segment past COMPACT_AT_KB of vectors becomes immutable, with its vectors, sparse index and payload in files mapped on demand and an
int8 copy of the vectors kept in RAM; dense search scans the int8 copy and rescores the best
candidates (OVERSAMPLING) with the original vectors, so scores are exact. At 250,000 points a
searcher then held 399 MB instead of 1,865-1,895, opened in 1.6 s instead of 2.8 and answered a
dense query in ~5 ms instead of 22-24 (`benchmarks/results/2026-12-06-edge-layout.txt`). No
HNSW graph is built (m=0): building it took 87 s at 20,000 points and 1,182 s at 200,000, and the int8 scan is fast enough at the
sizes one machine holds. Segments are merged, smallest first, once there are more than
SEGMENTS, never past MAX_SEGMENT_KB: a writer's close never rebuilds a large segment to add a
run's points to it (it did: 53 s and 3.6 GB at 300,000 points). A store written by an earlier
version takes this layout at its next writer's close, or at `rag-pipeline vectors optimize`.
`rag-pipeline vectors optimize --hnsw` builds the graph on demand; the collection keeps it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

import qdrant_edge as qe
from rag_pipeline.core import edge_models as em

STORE_FILE = "store.json"
ALIASES_FILE = "aliases.json"
COLLECTIONS = "collections"
LOCK_FILE = ".lock"
# qdrant-client's local mode and a Qdrant server both default RRF's constant to 2.
RRF_K = 2
# Layouts before compaction: no segment ever indexed (this threshold, in KB of vectors, was
# never reached). Such a store is compacted by its next writer.
NO_AUTO_INDEX_KB = 100_000_000
# A segment is compacted past this size of vectors (Qdrant's default indexing threshold): about
# 6,500 points of 384 dimensions, two or three runs' worth. Smaller ones stay appendable.
COMPACT_AT_KB = 10_000
# Merged, smallest first, once a shard has more segments than this; a merge never makes a
# segment larger than MAX_SEGMENT_KB (about 65,000 points of 384 dimensions).
SEGMENTS = 8
MAX_SEGMENT_KB = 100_000
# Points a writer upserts into one shard before it compacts without waiting for its close.
COMPACT_EVERY = 50_000
# Dense search over int8 vectors takes this many times k candidates, rescored exactly.
OVERSAMPLING = 2.0
_RESCORED = qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING))

_DISTANCES = {"Cosine": qe.Distance.Cosine, "Dot": qe.Distance.Dot, "Euclid": qe.Distance.Euclid, "Manhattan": qe.Distance.Manhattan}
_SCHEMAS = {
    "keyword": qe.PayloadSchemaType.Keyword, "integer": qe.PayloadSchemaType.Integer, "float": qe.PayloadSchemaType.Float,
    "bool": qe.PayloadSchemaType.Bool, "text": qe.PayloadSchemaType.Text, "datetime": qe.PayloadSchemaType.Datetime,
    "uuid": qe.PayloadSchemaType.Uuid, "geo": qe.PayloadSchemaType.Geo,
}


def _kind(obj: Any) -> str:
    # Requests come as edge_models or as qdrant-client's models: the same names and fields.
    return type(obj).__name__


def _value(x: Any) -> Any:
    return getattr(x, "value", x)  # an enum member of either, or its plain value


class StoreBusy(RuntimeError):
    """The store folder is open in another process (or another client of this one)."""


class EdgeError(RuntimeError):
    pass


_DONE = em.UpdateResult(operation_id=0, status=em.UpdateStatus.COMPLETED)


def is_store(path: Path) -> bool:
    return (path / STORE_FILE).is_file()


def _write_json(path: Path, data: Any) -> None:
    # Readers see the old file or the new one, never a part: an alias switch stays atomic.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _point_id(value: Any) -> int | str:
    return value if isinstance(value, int) else str(value)


def _edge_id(value: Any) -> int | str:
    # Edge takes ints and UUIDs (as strings); Qdrant also accepts UUIDs spelt without hyphens.
    return value if isinstance(value, int) else str(uuid.UUID(str(value)))


def layout(dense: dict[str, tuple[int, str]], sparse: dict[str, bool], *, hnsw: bool) -> qe.EdgeConfig:
    """The shard configuration (module doc): `dense` {name: (size, distance)}, `sparse` {name:
    IDF modifier}; `hnsw` builds the graph at Qdrant's defaults instead of none (m=0)."""
    cold = qe.Memory.Cold
    return qe.EdgeConfig(
        vectors={n: qe.EdgeVectorParams(size=size, distance=_DISTANCES[dist], memory=cold) for n, (size, dist) in dense.items()},
        sparse_vectors={
            n: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf if idf else None, memory=cold) for n, idf in sparse.items()
        } or None,
        payload_memory=cold,
        quantization_config=qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, memory=qe.Memory.Pinned),
        hnsw_config=qe.HnswIndexConfig(m=16 if hnsw else 0, ef_construct=100, full_scan_threshold=10_000),
        optimizers=qe.EdgeOptimizersConfig(
            indexing_threshold=COMPACT_AT_KB, default_segment_number=SEGMENTS, max_segment_size=MAX_SEGMENT_KB,
        ),
    )


def has_graph(stored: dict[str, Any]) -> bool:
    """Whether a stored collection configuration asks for an HNSW graph: one built by
    `vectors optimize --hnsw` (Qdrant's default m, or an earlier version's threshold alone)."""
    threshold = (stored.get("optimizers") or {}).get("indexing_threshold")
    if threshold is None or threshold >= NO_AUTO_INDEX_KB:
        return False
    return (stored.get("hnsw_config") or {}).get("m", 16) > 0


class EdgeClient:
    """A QdrantClient look-alike over a folder of Qdrant Edge shards (see the module doc)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            self._lock_fd = None
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreBusy(f"embedded vector store {self.path} is open in another process") from exc
            raise
        self._shards: dict[str, qe.EdgeShard] = {}
        self._dirty: set[str] = set()
        self._written: dict[str, int] = {}  # points upserted since the last compaction
        (self.path / COLLECTIONS).mkdir(exist_ok=True)
        self._aliases: dict[str, str] = self._read_aliases()

    # -- the store ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._lock_fd is None

    def initialise(self, note: dict[str, Any] | None = None) -> None:
        """Mark the store as set up (after a migration, with what it migrated)."""
        _write_json(self.path / STORE_FILE, {"format": 1, **(note or {})})

    def _read_aliases(self) -> dict[str, str]:
        try:
            return dict(json.loads((self.path / ALIASES_FILE).read_text()))
        except FileNotFoundError:
            return {}

    def _collection_dir(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise EdgeError(f"invalid collection name {name!r}")
        return self.path / COLLECTIONS / name

    def _real(self, name: str) -> str:
        # Qdrant resolves an alias wherever a collection name is accepted.
        return self._aliases.get(name, name)

    def _exists(self, name: str) -> bool:
        return (self._collection_dir(name) / "edge_config.json").is_file()

    def _config(self, name: str) -> dict[str, Any]:
        return json.loads((self._collection_dir(name) / "edge_config.json").read_text())

    def _edge_config(self, name: str, *, hnsw: bool | None = None) -> qe.EdgeConfig:
        """The layout for a stored collection; `hnsw` None keeps whether it has a graph."""
        stored = self._config(name)
        return layout(
            {n: (v["size"], v["distance"]) for n, v in (stored.get("vectors") or {}).items()},
            {n: s.get("modifier") == "idf" for n, s in (stored.get("sparse_vectors") or {}).items()},
            hnsw=has_graph(stored) if hnsw is None else hnsw,
        )

    def _shard(self, collection_name: str) -> qe.EdgeShard:
        self._check_open()
        name = self._real(collection_name)
        shard = self._shards.get(name)
        if shard is None:
            if not self._exists(name):
                raise EdgeError(f"Collection {collection_name} not found")
            # With the layout: a store of an earlier layout is compacted when a writer closes it.
            shard = self._shards[name] = qe.EdgeShard.load(str(self._collection_dir(name)), self._edge_config(name))
        return shard

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("the embedded vector store client is closed")

    def close(self, **kwargs: Any) -> None:
        if self.closed:
            return
        try:
            for name, shard in self._shards.items():
                if name in self._dirty:
                    # Compacts, merges and vacuums (module doc); no HNSW build unless chosen.
                    shard.optimize()
                    shard.flush()
                shard.close()
        finally:
            self._shards.clear()
            self._dirty.clear()
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)  # releases the flock

    def __enter__(self) -> "EdgeClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def optimize(self, collection_name: str, *, hnsw: bool = False) -> bool:
        """Compact, merge and vacuum now; with `hnsw`, also build the graph (kept from then on)."""
        name = self._real(collection_name)
        shard = self._shard(name)
        if hnsw:
            shard.close()
            shard = self._shards[name] = qe.EdgeShard.load(
                str(self._collection_dir(name)), self._edge_config(name, hnsw=True),
            )
        changed = shard.optimize()
        shard.flush()
        return changed

    # -- collections -------------------------------------------------------------------------

    def collection_exists(self, collection_name: str) -> bool:
        self._check_open()
        return self._exists(self._real(collection_name))

    def get_collections(self) -> em.CollectionsResponse:
        self._check_open()
        root = self.path / COLLECTIONS
        names = sorted(p.name for p in root.iterdir() if (p / "edge_config.json").is_file())
        return em.CollectionsResponse(collections=[em.CollectionDescription(name=n) for n in names])

    def create_collection(
        self, collection_name: str, vectors_config: Any = None, sparse_vectors_config: Any = None, **kwargs: Any,
    ) -> bool:
        self._check_open()
        if self._exists(collection_name):
            raise EdgeError(f"Collection `{collection_name}` already exists!")
        if collection_name in self._aliases:
            raise EdgeError(f"Alias with name `{collection_name}` already exists")
        items = vectors_config.items() if isinstance(vectors_config, dict) else [("", vectors_config)] if vectors_config else []
        dense = {name: (params.size, _value(params.distance)) for name, params in items}
        sparse = {name: _value(params.modifier) == "idf" for name, params in (sparse_vectors_config or {}).items()}
        path = self._collection_dir(collection_name)
        # A folder left by a create that crashed before its config was written holds nothing.
        shutil.rmtree(path, ignore_errors=True)
        self._shards[collection_name] = qe.EdgeShard.create(str(path), layout(dense, sparse, hnsw=False))
        self._dirty.add(collection_name)
        return True

    def delete_collection(self, collection_name: str, **kwargs: Any) -> bool:
        self._check_open()
        name = self._real(collection_name)
        if not self._exists(name):
            return False
        shard = self._shards.pop(name, None)
        self._dirty.discard(name)
        if shard is not None:
            shard.close()
        # As Qdrant does: the collection's aliases go with it.
        if any(target == name for target in self._aliases.values()):
            self._aliases = {a: c for a, c in self._aliases.items() if c != name}
            _write_json(self.path / ALIASES_FILE, self._aliases)
        # Renamed away first: a crash halfway through the delete leaves no half collection.
        trash = self.path / COLLECTIONS / f".deleted-{name}-{uuid.uuid4().hex}"
        os.rename(self._collection_dir(name), trash)
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def get_collection(self, collection_name: str) -> em.CollectionInfo:
        name = self._real(collection_name)
        shard = self._shard(name)
        stored = self._config(name)
        info = shard.info()
        dense = {
            n: em.VectorParams(size=v["size"], distance=em.Distance(v["distance"]))
            for n, v in (stored.get("vectors") or {}).items()
        }
        sparse = {
            n: em.SparseVectorParams(modifier=em.Modifier.IDF if s.get("modifier") == "idf" else None)
            for n, s in (stored.get("sparse_vectors") or {}).items()
        }
        schema = {
            key: em.PayloadIndexInfo(data_type=em.PayloadSchemaType(str(index.data_type).rsplit(".", 1)[-1].lower()),
                                     points=index.points)
            for key, index in info.payload_schema.items()
        }
        # What callers read of a server's answer; the rest has no meaning here.
        return em.CollectionInfo(
            status=em.CollectionStatus.GREEN, points_count=info.points_count, segments_count=info.segments_count,
            indexed_vectors_count=info.indexed_vectors_count, payload_schema=schema,
            config=em.CollectionConfig(params=em.CollectionParams(
                vectors=dense[""] if list(dense) == [""] else dense, sparse_vectors=sparse or None,
            )),
        )

    def create_payload_index(self, collection_name: str, field_name: str, field_schema: Any = None, **kwargs: Any) -> em.UpdateResult:
        kind = _value(field_schema or "keyword")
        # Keyword indexes in files mapped on demand, not read into RAM at open: at 250,000
        # points that took the open from 2.3-2.5 s to 1.6 s and a searcher from 479-499 MB to
        # 399 MB, with the same latency (benchmarks/results/2026-12-06-edge-layout.txt).
        schema = qe.KeywordIndexParams(memory=qe.Memory.Cold) if kind == "keyword" else _SCHEMAS[kind]
        self._shard(collection_name).update(qe.UpdateOperation.create_field_index(field_name, schema))
        self._dirty.add(self._real(collection_name))
        return _DONE

    # -- aliases -----------------------------------------------------------------------------

    def get_aliases(self, **kwargs: Any) -> em.CollectionsAliasesResponse:
        self._check_open()
        return em.CollectionsAliasesResponse(aliases=[
            em.AliasDescription(alias_name=a, collection_name=c) for a, c in sorted(self._aliases.items())
        ])

    def update_collection_aliases(self, change_aliases_operations: Sequence[Any], **kwargs: Any) -> bool:
        """All operations or none, in one file replacement: readers see the old aliases or the new."""
        self._check_open()
        aliases = dict(self._aliases)
        for op in change_aliases_operations:
            if _kind(op) == "CreateAliasOperation":
                if not self._exists(op.create_alias.collection_name):
                    raise EdgeError(f"Collection {op.create_alias.collection_name} not found")
                if self._exists(op.create_alias.alias_name):
                    raise EdgeError(f"Collection with name `{op.create_alias.alias_name}` already exists")
                aliases[op.create_alias.alias_name] = op.create_alias.collection_name
            elif _kind(op) == "DeleteAliasOperation":
                if aliases.pop(op.delete_alias.alias_name, None) is None:
                    raise EdgeError(f"Alias {op.delete_alias.alias_name} does not exist")
            elif _kind(op) == "RenameAliasOperation":
                old, new = op.rename_alias.old_alias_name, op.rename_alias.new_alias_name
                if old not in aliases:
                    raise EdgeError(f"Alias {old} does not exist")
                aliases[new] = aliases.pop(old)
            else:
                raise EdgeError(f"unsupported alias operation {type(op).__name__}")
        _write_json(self.path / ALIASES_FILE, aliases)
        self._aliases = aliases
        return True

    # -- points ------------------------------------------------------------------------------

    def upsert(self, collection_name: str, points: Any, wait: bool = True, **kwargs: Any) -> em.UpdateResult:
        shard = self._shard(collection_name)
        batch = list(_edge_points(points))
        shard.update(qe.UpdateOperation.upsert_points(batch))
        name = self._real(collection_name)
        self._dirty.add(name)
        # A writer that stays open (a script indexing everything in one go) compacts as it goes:
        # its appendable segment, all in RAM, never grows past COMPACT_EVERY points.
        self._written[name] = self._written.get(name, 0) + len(batch)
        if self._written[name] >= COMPACT_EVERY:
            self._written[name] = 0
            shard.optimize()
        return _DONE

    def delete(self, collection_name: str, points_selector: Any, wait: bool = True, **kwargs: Any) -> em.UpdateResult:
        shard = self._shard(collection_name)
        if _kind(points_selector) == "PointIdsList":
            op = qe.UpdateOperation.delete_points([_edge_id(i) for i in points_selector.points])
        elif _kind(points_selector) in ("FilterSelector", "Filter"):
            flt = points_selector.filter if _kind(points_selector) == "FilterSelector" else points_selector
            op = qe.UpdateOperation.delete_points_by_filter(edge_filter(flt))
        elif isinstance(points_selector, (list, tuple)):
            op = qe.UpdateOperation.delete_points([_edge_id(i) for i in points_selector])
        else:
            raise EdgeError(f"unsupported points selector {type(points_selector).__name__}")
        shard.update(op)
        self._dirty.add(self._real(collection_name))
        return _DONE

    def scroll(
        self, collection_name: str, scroll_filter: Any = None, limit: int = 10, offset: Any = None,
        with_payload: Any = True, with_vectors: Any = False, **kwargs: Any,
    ) -> tuple[list[em.Record], int | str | None]:
        records, next_offset = self._shard(collection_name).scroll(qe.ScrollRequest(
            offset=_edge_id(offset) if offset is not None else None, limit=limit, filter=edge_filter(scroll_filter),
            with_payload=_with_payload(with_payload), with_vector=with_vectors,
        ))
        return (
            [em.Record(id=_point_id(r.id), payload=r.payload, vector=_qm_vector(r.vector)) for r in records],
            _point_id(next_offset) if next_offset is not None else None,
        )

    def count(self, collection_name: str, count_filter: Any = None, exact: bool = True, **kwargs: Any) -> em.CountResult:
        return em.CountResult(count=self._shard(collection_name).count(qe.CountRequest(exact=True, filter=edge_filter(count_filter))))

    def query_points(
        self, collection_name: str, query: Any = None, using: str | None = None, prefetch: Any = None,
        query_filter: Any = None, limit: int = 10, offset: int | None = None, with_payload: Any = True,
        with_vectors: Any = False, score_threshold: float | None = None, **kwargs: Any,
    ) -> em.QueryResponse:
        request = em.QueryRequest(
            query=query, using=using, prefetch=prefetch, filter=query_filter, limit=limit, offset=offset,
            with_payload=with_payload, with_vector=with_vectors, score_threshold=score_threshold,
        )
        [points] = self.query_batch_points(collection_name, requests=[request])
        return points

    def query_batch_points(self, collection_name: str, requests: Sequence[Any], **kwargs: Any) -> list[em.QueryResponse]:
        # One planned batch: the segments are read once for all of them.
        results = self._shard(collection_name).query_batch(qe.QueryBatchRequest([_edge_request(r) for r in requests]))
        return [
            em.QueryResponse(points=[
                em.ScoredPoint(id=_point_id(p.id), version=p.version, score=p.score, payload=p.payload, vector=_qm_vector(p.vector))
                for p in points
            ])
            for points in results
        ]


# -- translation ----------------------------------------------------------------------------


def _edge_scoring(query: Any, using: str | None) -> Any:
    if query is None:
        return None
    kind = _kind(query)
    if kind == "NearestQuery":
        query, kind = query.nearest, _kind(query.nearest)
    if kind == "SparseVector":
        return qe.Query.Nearest(qe.SparseVector(indices=list(query.indices), values=[float(v) for v in query.values]),
                                using=using or "")
    if _is_dense(query):
        return qe.Query.Nearest(query.tolist() if hasattr(query, "tolist") else query, using=using or "")
    if kind in ("FusionQuery", "Fusion"):
        fusion = _value(query.fusion if kind == "FusionQuery" else query)
        return qe.Fusion.Rrf(k=RRF_K) if fusion == "rrf" else qe.Fusion.Dbsf()
    if kind == "RrfQuery":
        return qe.Fusion.Rrf(k=query.rrf.k if query.rrf.k is not None else RRF_K, weights=query.rrf.weights)
    raise EdgeError(f"unsupported query {kind}")


def _is_dense(query: Any) -> bool:
    return isinstance(query, list) or hasattr(query, "tolist")


def _params(query: Any) -> qe.SearchParams | None:
    # Dense queries rescore their int8 candidates with the original vectors: exact scores.
    if _kind(query) == "NearestQuery":
        query = query.nearest
    return _RESCORED if _is_dense(query) else None


def _edge_prefetches(prefetch: Any) -> list[qe.Prefetch] | None:
    if prefetch is None:
        return None
    items = prefetch if isinstance(prefetch, list) else [prefetch]
    return [
        qe.Prefetch(
            limit=p.limit if p.limit is not None else 10, query=_edge_scoring(p.query, p.using),
            prefetches=_edge_prefetches(p.prefetch), filter=edge_filter(p.filter), score_threshold=p.score_threshold,
            params=_params(p.query),
        )
        for p in items
    ]


def _edge_request(r: Any) -> qe.QueryRequest:
    return qe.QueryRequest(
        limit=r.limit if r.limit is not None else 10, offset=r.offset, query=_edge_scoring(r.query, r.using),
        prefetches=_edge_prefetches(r.prefetch), filter=edge_filter(r.filter), score_threshold=r.score_threshold,
        params=_params(r.query),
        with_payload=_with_payload(r.with_payload if r.with_payload is not None else False),
        with_vector=r.with_vector if isinstance(r.with_vector, (bool, list)) else False,
    )


def _with_payload(value: Any) -> Any:
    if _kind(value) == "PayloadSelectorInclude":
        return qe.PayloadSelector.Include(list(value.include))
    if _kind(value) == "PayloadSelectorExclude":
        return qe.PayloadSelector.Exclude(list(value.exclude))
    return value


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def edge_filter(flt: Any) -> qe.Filter | None:
    if flt is None:
        return None
    must, should, must_not = (
        [_edge_condition(c) for c in _as_list(part)] for part in (flt.must, flt.should, flt.must_not)
    )
    min_should = (
        qe.MinShould([_edge_condition(c) for c in flt.min_should.conditions], flt.min_should.min_count)
        if flt.min_should is not None else None
    )
    return qe.Filter(must=must or None, should=should or None, must_not=must_not or None, min_should=min_should)


def _edge_condition(c: Any) -> Any:
    kind = _kind(c)
    if kind == "Filter":
        return edge_filter(c)
    if kind == "HasIdCondition":
        return qe.HasIdCondition({_edge_id(i) for i in c.has_id})
    if kind == "FieldCondition":
        if c.match is None:
            raise EdgeError(f"unsupported condition on {c.key!r}: only matches are translated")
        return qe.FieldCondition(key=c.key, match=_edge_match(c.match))
    raise EdgeError(f"unsupported filter condition {kind}")


def _edge_match(m: Any) -> Any:
    kind = _kind(m)
    if kind == "MatchValue":
        return qe.MatchValue(m.value)
    if kind == "MatchAny":
        return qe.MatchAny(list(m.any))
    if kind == "MatchExcept":
        return qe.MatchExcept(list(m.except_))
    raise EdgeError(f"unsupported match {kind}")


def _edge_vector(vector: Any) -> Any:
    if isinstance(vector, dict):
        return {name: _edge_vector(v) for name, v in vector.items()}
    if _kind(vector) == "SparseVector":
        return qe.SparseVector(indices=list(vector.indices), values=[float(v) for v in vector.values])
    if hasattr(vector, "tolist"):
        return vector.tolist()
    return [float(v) for v in vector]


def _qm_vector(vector: Any) -> Any:
    if vector is None:
        return None
    if isinstance(vector, dict):
        out = {name: _qm_vector(v) for name, v in vector.items()}
        # As a server answers for a collection with only the unnamed vector.
        return out[""] if list(out) == [""] else out
    if isinstance(vector, qe.SparseVector):
        return em.SparseVector(indices=list(vector.indices), values=list(vector.values))
    return list(vector)


def _payload(value: Any) -> Any:
    # NaN and infinities become null, as qdrant-client's JSON encoding sends them to a server
    # (pandas gives NaN for a missing page number); Edge refuses them.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _payload(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_payload(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        return _payload(value.item())
    return value


def _edge_points(points: Any) -> Iterable[qe.Point]:
    if _kind(points) == "Batch":
        ids = points.ids
        payloads = points.payloads or [None] * len(ids)
        vectors = points.vectors
        if isinstance(vectors, dict):
            per_point = [{name: vs[i] for name, vs in vectors.items()} for i in range(len(ids))]
        else:
            per_point = list(vectors)
        for pid, vector, payload in zip(ids, per_point, payloads):
            yield qe.Point(_edge_id(pid), _edge_vector(vector), _payload(payload))
        return
    for p in points:
        yield qe.Point(_edge_id(p.id), _edge_vector(p.vector), _payload(p.payload))


# -- migration from qdrant-client's local mode ----------------------------------------------


def is_legacy_folder(path: Path) -> bool:
    """A folder qdrant-client's local mode wrote (`meta.json` beside `collection/`)."""
    return (path / "meta.json").is_file() and not is_store(path)


def migrate_legacy(source: Path, target: EdgeClient, *, page: int = 1_000) -> dict[str, int]:
    """Copy every collection (points with their vectors and payloads) and every alias of the
    local-mode folder `source` into `target`; collection -> points copied, each verified by count.

    The source is only read, and left in place: deleting it is the operator's call. A collection
    already in the target (a migration interrupted after it) is copied again from scratch."""
    from qdrant_client import QdrantClient

    from rag_pipeline.core.vectorstore import PAYLOAD_INDEXES

    legacy = QdrantClient(path=str(source))
    copied: dict[str, int] = {}
    try:
        for description in legacy.get_collections().collections:
            name = description.name
            params = legacy.get_collection(name).config.params
            if target.collection_exists(name):
                target.delete_collection(name)
            target.create_collection(name, vectors_config=params.vectors, sparse_vectors_config=params.sparse_vectors)
            # Local mode had no payload indexes; a server-built collection has these.
            for field in PAYLOAD_INDEXES:
                target.create_payload_index(name, field, field_schema=em.PayloadSchemaType.KEYWORD)
            offset = None
            while True:
                points, offset = legacy.scroll(name, limit=page, offset=offset, with_payload=True, with_vectors=True)
                if points:
                    target.upsert(name, points=[em.PointStruct(id=p.id, vector=p.vector, payload=p.payload) for p in points])
                if offset is None:
                    break
            expected, got = legacy.count(name, exact=True).count, target.count(name).count
            if expected != got:
                raise EdgeError(f"migrating {name!r} from {source}: {got} points copied of {expected}")
            copied[name] = got
        aliases = legacy.get_aliases().aliases
        if aliases:
            target.update_collection_aliases(change_aliases_operations=[
                em.CreateAliasOperation(create_alias=em.CreateAlias(collection_name=a.collection_name, alias_name=a.alias_name))
                for a in aliases
            ])
    finally:
        legacy.close()
    for name in copied:
        target.optimize(name)
    return copied
