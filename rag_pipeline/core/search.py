"""Search: the one API behind `rag_pipeline.search`, the CLI's `search` and `eval`, and `serve`.

Plain Python, no Dagster: a notebook or an application searches the index with the data
folder's settings and nothing running. A `Searcher` is long-lived (one store client, one
database engine, one embedder per index configuration it has met), so a server pays for them
once; `search()` is the one-shot form.

What is searched is the collection the alias names now, with the embedding configuration that
collection was built with (during a re-indexing that is still the previous one), in the mode
asked for: `hybrid` (dense and keyword rankings fused by reciprocal rank, in Qdrant), `dense` or
`keyword`. A collection built without keyword vectors answers every mode densely, and says so
(`SearchResult.mode`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from rag_pipeline.core import generations, records, sparse
from rag_pipeline.core.vectorstore import MODES, Hit, SearchFilter, VectorStore, is_embedded

if TYPE_CHECKING:
    from qdrant_client import QdrantClient
    from sqlalchemy.engine import Engine

    from rag_pipeline.core.embedding import Embedder
    from rag_pipeline.settings import Settings


@dataclass(frozen=True)
class Citation:
    """What a UI needs to cite a hit and take the reader to it."""

    knowledge_base: str
    path: str
    page: int | None
    heading: str | None  # the heading path ("Leave > Carry-over") for Markdown, HTML, DOCX
    chunk_index: int
    start: int | None  # character offsets of the hit's text in the document's extracted text
    end: int | None
    version: str  # sha256 of the file's bytes
    indexed_at: str | None


@dataclass(frozen=True)
class SearchHit:
    document_id: str
    text: str
    score: float  # the score of the mode searched (RRF for hybrid)
    scores: dict[str, float]  # per mode that ranked it: "hybrid", "dense", "keyword"
    citation: Citation
    file_type: str | None = None
    title: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    # With `context`: the hit's neighbouring chunks merged with it (see `Searcher.with_context`).
    context: str | None = None
    chunker: str | None = field(default=None, repr=False)  # the chunk set it belongs to

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("chunker")
        return out


@dataclass(frozen=True)
class SearchResult:
    query: str
    mode: str  # the mode that answered (dense when the collection has no keyword vectors)
    hits: list[SearchHit]
    collection: str | None  # the collection read, None before anything was indexed

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "mode": self.mode, "collection": self.collection,
                "hits": [h.to_dict() for h in self.hits]}


# Tokens of context (all hits together) when the caller names no budget: what fits beside a
# question and instructions in a small model's prompt.
CONTEXT_TOKENS = 2000


def _as_hit(hit: Hit) -> SearchHit:
    citation = Citation(
        knowledge_base=hit.knowledge_base, path=hit.path, page=hit.page, heading=hit.heading,
        chunk_index=hit.chunk_index, start=hit.start, end=hit.end, version=hit.version, indexed_at=hit.indexed_at,
    )
    return SearchHit(
        document_id=hit.document_id, text=hit.text, score=round(hit.score, 6),
        scores={m: round(s, 6) for m, s in hit.scores.items()}, citation=citation, file_type=hit.file_type,
        title=hit.title, metadata=dict(hit.meta), chunker=hit.chunker,
    )


class Searcher:
    """Searches the index; safe to share between threads (one query at a time reaches
    embedded Qdrant; a server takes them concurrently)."""

    def __init__(
        self, *, client: QdrantClient, engine: Engine, alias: str, default_mode: str = "hybrid",
        make_embedder: Any, configured: generations.EmbeddingSpec | None = None,
    ) -> None:
        if default_mode not in MODES:
            raise ValueError(f"unknown search mode {default_mode!r}; expected one of {', '.join(MODES)}")
        self.client = client
        self.engine = engine
        self.alias = alias
        self.default_mode = default_mode
        # spec -> Embedder; the configured spec is used as it is when it is the one serving (the
        # recorded one has the endpoint's URL without credentials).
        self._make_embedder = make_embedder
        self._configured = configured
        self._embedders: dict[str, Embedder] = {}
        self._lock = threading.Lock()
        # Embedded Qdrant is not safe for concurrent queries from threads; a server is.
        self._query_lock: threading.Lock | contextlib.nullcontext = (
            threading.Lock() if is_embedded(client) else contextlib.nullcontext()
        )

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> "Searcher":
        from rag_pipeline.core.db import get_engine
        from rag_pipeline.core.vectorstore import open_client
        from rag_pipeline.settings import Settings, make_settings_embedder

        settings = settings or Settings.from_env()
        client = open_client(settings.qdrant_url, settings.qdrant_path, settings.qdrant_api_key, legacy=settings.legacy_qdrant_path)
        return cls(
            # Not migrated here (alembic costs a CLI search ~0.4 s): search reads tables the
            # pipeline created, and only once a collection is served.
            client=client, engine=get_engine(settings.database_url), alias=settings.collection,
            default_mode=settings.search_mode, configured=settings.embedding_spec,
            make_embedder=lambda spec: make_settings_embedder(settings, spec),
        )

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for embedder in self._embedders.values():
            embedder.close()
        self._embedders.clear()
        self.client.close()

    def serving_collection(self) -> str | None:
        """The collection search reads now (None before anything was indexed)."""
        with self._query_lock:
            return generations.serving_collection(self.client, self.alias)

    def _serving(self) -> tuple[VectorStore, generations.EmbeddingSpec | None] | None:
        collection = generations.serving_collection(self.client, self.alias)
        if collection is None:
            return None
        generation = generations.by_collection(self.engine, collection)
        spec = generation.spec if generation is not None else None
        if spec is not None and self._configured is not None and spec.fingerprint == self._configured.fingerprint:
            spec = self._configured
        return VectorStore(self.client, collection, keyword=bool(spec and spec.keyword)), spec

    def _embedder(self, spec: generations.EmbeddingSpec | None) -> Embedder:
        key = spec.fingerprint if spec is not None else ""
        with self._lock:
            if key not in self._embedders:
                self._embedders[key] = self._make_embedder(spec)
            return self._embedders[key]

    def search(
        self, query: str, *, k: int = 5, mode: str | None = None, knowledge_base: str | None = None,
        path_prefix: str | None = None, file_types: Sequence[str] = (), metadata: Mapping[str, str] | None = None,
        context: int = 0, context_tokens: int = CONTEXT_TOKENS,
    ) -> SearchResult:
        """The top `k` hits for `query` (see the module docstring for `mode`); with `context`,
        each hit's `context` holds it and up to that many chunks either side (`with_context`)."""
        [result] = self.search_many(
            [query], k=k, mode=mode, knowledge_base=knowledge_base, path_prefix=path_prefix,
            file_types=file_types, metadata=metadata,
        )
        if context:
            result = dataclasses.replace(result, hits=self.with_context(result.hits, context=context, tokens=context_tokens))
        return result

    def search_many(
        self, queries: Sequence[str], *, k: int = 5, mode: str | None = None, knowledge_base: str | None = None,
        path_prefix: str | None = None, file_types: Sequence[str] = (), metadata: Mapping[str, str] | None = None,
        knowledge_bases: Sequence[str | None] | None = None,
    ) -> list[SearchResult]:
        """Several queries with one embedding call; `knowledge_bases`, when given, is one per query."""
        mode = mode or self.default_mode
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r}; expected one of {', '.join(MODES)}")
        if k < 1:
            raise ValueError("k must be at least 1")
        with self._query_lock:
            return self._search_many(queries, k, mode, knowledge_base, path_prefix, file_types, metadata, knowledge_bases)

    def _search_many(
        self, queries: Sequence[str], k: int, mode: str, knowledge_base: str | None, path_prefix: str | None,
        file_types: Sequence[str], metadata: Mapping[str, str] | None, knowledge_bases: Sequence[str | None] | None,
    ) -> list[SearchResult]:
        served = self._serving()
        if served is None:
            return [SearchResult(q, mode, [], None) for q in queries]
        store, spec = served
        answered = mode if mode == "dense" or store.has_keyword_vectors() else "dense"
        dense_vectors: list[Any] = [None] * len(queries)
        if answered != "keyword":
            dense_vectors = list(self._embedder(spec).embed(list(queries)))
        # Tombstoned at the last tick, purged by a run soon after: out of search already.
        deleting = records.documents_in(self.engine, records.DELETING)
        kbs = list(knowledge_bases) if knowledge_bases is not None else [knowledge_base] * len(queries)
        results = []
        for query, vector, kb in zip(queries, dense_vectors, kbs):
            where = SearchFilter(
                knowledge_base=kb, path_prefix=path_prefix, file_types=tuple(file_types), metadata=dict(metadata or {}),
            )
            keyword = sparse.query_vector(query) if answered != "dense" else None
            hits = store.query(dense=vector, keyword=keyword, k=k, mode=answered, where=where, exclude_documents=deleting)
            if answered == "dense":
                # A hit sharing nothing with the query (score 0 at the precision shown: the
                # offline embedder's unrelated chunks) is filler, not a result.
                hits = [h for h in hits if round(h.score, 3) > 0]
            results.append(SearchResult(query, answered, [_as_hit(h) for h in hits], store.collection))
        return results

    def with_context(self, hits: Sequence[SearchHit], *, context: int, tokens: int = CONTEXT_TOKENS) -> list[SearchHit]:
        """The hits, each with `context`: the document's text from `context` chunks before it to
        `context` chunks after it. Per document, hits whose neighbourhoods overlap share one
        context, given to the best-ranked of them (the others get none: a prompt gets each
        passage once). Contexts are taken in rank order until `tokens` (cl100k, all contexts
        together) is spent; one that does not fit shrinks to the hit's own chunk, or is left out."""
        from rag_pipeline.core.tokens import get_encoding

        enc = get_encoding()
        spent = 0
        out: list[SearchHit] = []
        covered: dict[tuple[str, str], list[tuple[int, int]]] = {}
        # Every document's text and every span a context may need, in two queries: the widest
        # window any hit of a chunk set can ask for, sliced below.
        windows: dict[tuple[str, str, str], tuple[int, int]] = {}
        for hit in hits:
            if hit.chunker is not None:
                key3, i = (hit.document_id, hit.citation.version, hit.chunker), hit.citation.chunk_index
                lo, hi = windows.get(key3, (i, i))
                windows[key3] = (min(lo, i), max(hi, i))
        spans = records.chunk_spans(
            self.engine, [(*key3, lo - context, hi + context) for key3, (lo, hi) in windows.items()]
        ) if windows else {}
        layouts = records.load_layouts(self.engine, sorted({(d, v) for d, v, _ in windows}))
        for hit in hits:
            c = hit.citation
            key = (hit.document_id, c.version)
            if any(lo <= c.chunk_index <= hi for lo, hi in covered.get(key, [])) or hit.chunker is None:
                out.append(hit)
                continue
            layout = layouts.get(hit.document_id)
            chunk_set = spans.get((hit.document_id, c.version, hit.chunker), [])
            merged = None
            for radius in (context, 0):
                lo, hi = c.chunk_index - radius, c.chunk_index + radius
                # Widen to the neighbourhoods of this document's other hits it overlaps.
                for other in hits:
                    if (other.document_id, other.citation.version) == key:
                        o = other.citation.chunk_index
                        if o - radius <= hi and o + radius >= lo:
                            lo, hi = min(lo, o - radius), max(hi, o + radius)
                text = _span_text([s for s in chunk_set if lo <= s[0] <= hi], layout)
                if text is None:
                    break
                cost = len(enc.encode(text, disallowed_special=()))
                if spent + cost <= tokens:
                    spent += cost
                    merged = text
                    covered.setdefault(key, []).append((lo, hi))
                    break
            out.append(dataclasses.replace(hit, context=merged))
        return out


def _span_text(spans: list[tuple[int, int, int, int]], layout: records.Layout | None) -> str | None:
    """The extracted text from the first span's start to the last span's end (overlapping
    chunks are thus read once)."""
    if not spans or layout is None:
        return None
    text = "\n\n".join(layout.sections)
    (_, s0, a, _), (_, s1, _, b) = spans[0], spans[-1]
    return text[layout.section_starts[s0] + a : layout.section_starts[s1] + b].strip()


def search(
    query: str, *, k: int = 5, mode: str | None = None, knowledge_base: str | None = None,
    path_prefix: str | None = None, file_types: Sequence[str] = (), metadata: Mapping[str, str] | None = None,
    context: int = 0, context_tokens: int = CONTEXT_TOKENS, settings: Settings | None = None,
) -> list[SearchHit]:
    """The top `k` hits for `query` in the index the settings (by default the environment's)
    name; opens and closes the store. For many queries keep a `Searcher`."""
    with Searcher.from_settings(settings) as searcher:
        return searcher.search(
            query, k=k, mode=mode, knowledge_base=knowledge_base, path_prefix=path_prefix,
            file_types=file_types, metadata=metadata, context=context, context_tokens=context_tokens,
        ).hits
