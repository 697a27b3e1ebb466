"""The three processing steps, over a batch of documents, with per-document isolation.

Each step reads only committed rows written by the step before it, does its work, and commits
before returning. A document's failure is recorded against that document and never stops the
others. Errors that are not the document's fault (database or endpoint down) propagate, so the
run fails and the documents stay pending for the retry.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from enum import StrEnum
from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from rag_pipeline.core import embedding_cache, generations, progress, records
from rag_pipeline.core.chunking import ChunkerConfig, chunk_frame, chunk_rows
from rag_pipeline.core.embedding import Embedder, EmbeddingError
from rag_pipeline.core.identity import text_hash
from rag_pipeline.core.sources import Source, SourceChanged, SourceError, as_source, source_for, stream_size
from rag_pipeline.core.parsing import Limits, ParsedDocument, ParseError, Section, over_file_limit
from rag_pipeline.core.sandbox import ParserSandbox
from rag_pipeline.core.vectorstore import VectorStore

_T = TypeVar("_T")
_R = TypeVar("_R")


class Status(StrEnum):
    """What a step made of one document."""
    PROCESSED = "processed"  # done by this step
    SKIPPED = "skipped"  # nothing to do here (already current, not this step's turn)
    FAILED = "failed"  # the document's own fault, parked with the reason
    SUPERSEDED = "superseded"  # a newer version was registered meanwhile; nothing written for this one
    MISSING = "missing"  # deleted, or gone from the landing zone


@dataclass
class Outcome:
    document_id: str
    status: Status
    version: str | None = None
    reason: str | None = None
    metrics: dict = field(default_factory=dict)  # this document's own figures


@dataclass
class StepResult:
    """What a step did: one outcome per document it was given, and the figures of the step as
    a whole (shared by its documents, reported once)."""
    outcomes: list[Outcome]
    metrics: dict = field(default_factory=dict)

    def with_status(self, status: Status) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]


# Extracted text is saved once this much is in hand (one transaction), and chunked in groups of
# this many documents: per-batch database work instead of per-document, with memory bounded.
FLUSH_CHARACTERS = 8_000_000
FLUSH_DOCUMENTS = 500  # and at most this many per statement (database parameter limits)
CHUNK_GROUP = 50
# Bytes of uploads read ahead of the parser at most (a bucket's objects, `_read_ahead`).
READ_AHEAD_BYTES = 64 * 2**20


def index_config(chunker: ChunkerConfig, embedding: str) -> str:
    """What an index was built with. `embedding` comes from configuration (provider:model:dims),
    so every step computes it without constructing, or calling, the embedder."""
    return f"{chunker.fingerprint}|{embedding}"


def _failed(engine: Engine, doc_id: str, version: str, reason: str) -> Outcome:
    records.record_failure(engine, doc_id, version, reason)
    return Outcome(doc_id, Status.FAILED, version, reason)


def _superseded(doc_id: str, version: str) -> Outcome:
    return Outcome(doc_id, Status.SUPERSEDED, version, "a newer version was registered")


def _is_current(row, config: str) -> bool:  # noqa: ANN001
    return row.status == records.INDEXED and row.indexed_version == row.version and row.indexed_config == config


def _rebuildable(row, built_otherwise: Callable[[sa.Row], bool], started_at: dt.datetime | None) -> bool:  # noqa: ANN001
    """Indexed at its current version with another configuration, before this run started: it
    is rebuilt from its stored text. One indexed since was indexed by a run at least as new,
    whose configuration this run must not undo."""
    return (
        row.status == records.INDEXED and row.indexed_version == row.version and built_otherwise(row)
        and (started_at is None or records.seconds_since(row.indexed_at) > records.seconds_since(started_at))
    )


def extract(
    engine: Engine, inbox: Source | Path, doc_ids: Sequence[str], *, config: str, limits: Limits,
    started_at: dt.datetime | None = None,
) -> StepResult:
    """Read, check and parse each document's registered version from `inbox` (a source, or a
    folder path taken as the landing directory). The step reads the source itself, so a run on
    another machine needs only the bucket, not the sensor's disk."""
    source = as_source(inbox)
    with ParserSandbox(limits) as sandbox:
        outcomes = _extract(engine, source, doc_ids, config, limits, sandbox, started_at)
    return StepResult(outcomes, {"source": source.describe()})


def _extract(
    engine: Engine, source: Source, doc_ids: Sequence[str], config: str, limits: Limits, sandbox: ParserSandbox,
    started_at: dt.datetime | None = None,
) -> list[Outcome]:
    rows = records.get_documents(engine, doc_ids)
    outcomes: list[Outcome] = []
    reuse: dict[str, str] = {}  # indexed at its version under another configuration
    to_read: list[sa.Row] = []
    for doc_id in doc_ids:
        row = rows.get(doc_id)
        triaged = _triage(doc_id, row, config, started_at)
        if triaged is None:
            to_read.append(row)
        elif triaged == "reuse":
            reuse[doc_id] = row.version  # only the configuration changed: its text is stored
        else:
            outcomes.append(triaged)
    if len(to_read) < len(doc_ids):
        progress.advance("extract", len(doc_ids) - len(to_read))
    batch = _TextBatch(engine)
    for row, read in _read_ahead(source, to_read, limits):
        outcome = _parse(engine, source, row, read, config, sandbox)
        progress.advance("extract")
        if isinstance(outcome, Outcome):
            outcomes.append(outcome)
        elif batch.add(row.id, *outcome):
            outcomes += batch.flush()
    outcomes += batch.flush()
    reopened = records.reopen(engine, reuse)
    outcomes += [
        Outcome(d, Status.PROCESSED, v, metrics={"reused_text": True}) if d in reopened else _superseded(d, v)
        for d, v in reuse.items()
    ]
    return outcomes


def _triage(doc_id: str, row: sa.Row | None, config: str, started_at: dt.datetime | None) -> Outcome | str | None:
    """What a document needs before anything is read: an outcome already (gone, current),
    "reuse" (its stored text serves a new configuration), or None (read it)."""
    if row is None or row.status in records.GONE:
        return Outcome(doc_id, Status.MISSING, reason="document was deleted")
    if _is_current(row, config):
        return Outcome(doc_id, Status.SKIPPED, row.version, "already indexed at this version")
    if _rebuildable(row, lambda r: r.indexed_config != config, started_at):
        return "reuse"
    if row.status == records.INDEXED and row.indexed_version == row.version:
        return Outcome(doc_id, Status.SKIPPED, row.version, "indexed since this run started, with another configuration")
    return None


@dataclass
class _Read:
    data: bytes | None
    error: BaseException | None
    seconds: float


def _read(source: Source, row: sa.Row, limits: Limits) -> _Read:
    """The upload's bytes, or the exception reading them raised (handled per document)."""
    started = time.perf_counter()
    try:
        # Conditional on the token registered (an object's ETag): a newer upload's bytes are
        # never read under this version; the hash check covers sources without one.
        with source.open(row.knowledge_base, row.path, token=row.change_token) as fh:
            # Sized before reading: an oversized file is refused without loading it.
            size = stream_size(fh)
            if size > limits.max_file_bytes:
                raise ParseError(over_file_limit(size, limits.max_file_bytes))
            data = fh.read(limits.max_file_bytes + 1)
        if len(data) > limits.max_file_bytes:  # grew after the fstat
            raise ParseError(over_file_limit(len(data), limits.max_file_bytes))
    except Exception as exc:
        return _Read(None, exc, time.perf_counter() - started)
    return _Read(data, None, time.perf_counter() - started)


def _read_ahead(source: Source, rows: Sequence[sa.Row], limits: Limits) -> Iterator[tuple[sa.Row, _Read]]:
    """`rows` with their bytes, in order. A source that is a network away (a bucket) is read
    up to `concurrent_reads` uploads and READ_AHEAD_BYTES ahead, so the parser is not idle for
    each round trip while memory stays bounded (the registered sizes decide)."""
    ahead = max(1, source.concurrent_reads)
    if ahead == 1 or len(rows) < 2:
        for row in rows:
            yield row, _read(source, row, limits)
        return
    pool = ThreadPoolExecutor(ahead, thread_name_prefix="read")
    pending: deque[tuple[sa.Row, Future[_Read]]] = deque()
    in_flight, following = 0, 0
    try:
        while pending or following < len(rows):
            while following < len(rows) and len(pending) < ahead and (
                not pending or in_flight + (rows[following].size_bytes or 0) <= READ_AHEAD_BYTES
            ):
                row = rows[following]
                pending.append((row, pool.submit(_read, source, row, limits)))
                in_flight += row.size_bytes or 0
                following += 1
            row, future = pending.popleft()
            read = future.result()
            in_flight -= row.size_bytes or 0
            yield row, read
    finally:
        # A failed step (the source went away) stops reading; reads in flight end on their timeouts.
        pool.shutdown(wait=False, cancel_futures=True)


def _parse(
    engine: Engine, source: Source, row: sa.Row, read: _Read, config: str, sandbox: ParserSandbox,
) -> Outcome | tuple[str, ParsedDocument, dict]:
    """One document from its bytes: (version, parsed text, metrics) to save, or its outcome."""
    doc_id = row.id
    started = time.perf_counter()
    version = ""  # the hash of the bytes, once read
    try:
        if read.error is not None:
            raise read.error
        data = read.data
        version = hashlib.sha256(data).hexdigest()
        if row.version.startswith(records.LISTED_PREFIX):
            # Registered from its listing, unread: these bytes (read conditionally on the
            # ETag listed) are that version, and their hash becomes its identity.
            resolved = records.resolve_version(engine, doc_id, listed=row.version, version=version, config=config)
            if resolved is None:
                return _superseded(doc_id, row.version)
            if resolved == records.INDEXED:
                return Outcome(doc_id, Status.SKIPPED, version, "re-uploaded with the bytes already indexed")
        elif version != row.version:
            # The file changed after detection; the sensor registers the new bytes.
            return Outcome(doc_id, Status.SUPERSEDED, row.version, "file changed since detection")
        origin = source_for(source, row.change_token)
        # A SQL source's row has no extension: it names the parser of its rendering.
        name = origin.parse_name(row.path) if hasattr(origin, "parse_name") else row.path
        parsed = sandbox.parse(data, name)
    except SourceChanged:
        # Re-uploaded since the listing: the next listing registers the new version, which
        # is then handed to a run; this one indexes nothing under the old version.
        return Outcome(doc_id, Status.SUPERSEDED, row.version, "changed in the landing zone since detection")
    except SourceError:
        raise  # the source is unreachable or misconfigured: the step fails, documents wait
    except FileNotFoundError:
        return Outcome(doc_id, Status.MISSING, row.version, "file removed from the landing directory")
    except PermissionError as exc:
        # errno set: the OS said no (file mode); unset: our confinement check refused it.
        reason = f"cannot read the file: {exc.strerror}" if exc.errno else f"refused: {exc}"
        return _failed(engine, doc_id, row.version, reason)
    except ParseError as exc:
        return _failed(engine, doc_id, version or row.version, str(exc))
    except Exception as exc:  # a parser library bug on hostile input is still the file's problem
        return _failed(engine, doc_id, version or row.version, f"could not parse: {type(exc).__name__}: {exc}"[:500])
    metrics = {
        "bytes": len(data), "characters": parsed.char_count, "sections": len(parsed.sections),
        "parser": parsed.parser, "title": parsed.title or "", "source": origin.describe(),
        "seconds": round(read.seconds + time.perf_counter() - started, 4), **parsed.info,
    }
    return version, parsed, metrics


class _TextBatch:
    """Extracted text waiting to be saved: one transaction per FLUSH_CHARACTERS of text or
    FLUSH_DOCUMENTS documents, so database work is per batch and memory stays bounded."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.items: list[tuple[str, str, ParsedDocument]] = []
        self.metrics: dict[str, dict] = {}
        self.characters = 0

    def add(self, doc_id: str, version: str, parsed: ParsedDocument, metrics: dict) -> bool:
        """True when the batch is full and should be flushed."""
        self.items.append((doc_id, version, parsed))
        self.metrics[doc_id] = metrics
        self.characters += parsed.char_count
        return self.characters >= FLUSH_CHARACTERS or len(self.items) >= FLUSH_DOCUMENTS

    def flush(self) -> list[Outcome]:
        saved = records.save_versions(self.engine, self.items)
        outcomes = [
            Outcome(d, Status.PROCESSED, v, metrics=self.metrics[d]) if d in saved else _superseded(d, v)
            for d, v, _ in self.items
        ]
        self.items, self.metrics, self.characters = [], {}, 0
        return outcomes


def _reopen_reconfigured(
    engine: Engine, doc_ids: Sequence[str], rows: dict[str, sa.Row], built_otherwise: Callable[[sa.Row], bool],
    started_at: dt.datetime | None,
) -> dict[str, sa.Row]:
    """A step selected on its own after a configuration change (the UI's "Materialize stale"
    picks chunks and vectors, not the source) takes up the documents the source step would
    have (`_rebuildable`): pending again, from their stored text. Returns the rows as they are now."""
    reconfigured = {d: r.version for d, r in rows.items() if _rebuildable(r, built_otherwise, started_at)}
    if not reconfigured or not records.reopen(engine, reconfigured):
        return rows
    return records.get_documents(engine, doc_ids)


def chunk(
    engine: Engine, doc_ids: Sequence[str], *, chunker: ChunkerConfig, max_chunks: int,
    started_at: dt.datetime | None = None,
) -> StepResult:
    rows = _reopen_reconfigured(
        engine, doc_ids, records.get_documents(engine, doc_ids), lambda r: r.indexed_chunker != chunker.fingerprint, started_at
    )
    outcomes: list[Outcome] = []
    todo = []
    for doc_id in doc_ids:
        row = rows.get(doc_id)
        if row is None:
            outcomes.append(Outcome(doc_id, Status.MISSING, None, "document no longer registered"))
        elif row.status != records.PENDING:
            outcomes.append(Outcome(doc_id, Status.SKIPPED, row.version, f"status {row.status}"))
        else:
            todo.append((doc_id, row.version, row.size_bytes or 0))
    progress.advance("chunk", len(doc_ids) - len(todo))
    # A group's texts are read in one query and its chunk sets written in one transaction; a
    # group is bounded in documents and in bytes, so large files never pile up in memory.
    group: list[tuple[str, str]] = []
    group_bytes = 0
    for doc_id, version, size in todo:
        if group and (len(group) >= CHUNK_GROUP or group_bytes + size > FLUSH_CHARACTERS):
            outcomes += _chunk_group(engine, group, chunker, max_chunks)
            progress.advance("chunk", len(group))
            group, group_bytes = [], 0
        group.append((doc_id, version))
        group_bytes += size
    if group:
        outcomes += _chunk_group(engine, group, chunker, max_chunks)
        progress.advance("chunk", len(group))
    return StepResult(outcomes, {"chunker": chunker.fingerprint})


def _chunk_group(
    engine: Engine, group: Sequence[tuple[str, str]], chunker: ChunkerConfig, max_chunks: int
) -> list[Outcome]:
    loaded = records.load_sections(engine, group)
    outcomes, rows, metrics = [], [], {}
    for doc_id, version in group:
        if doc_id not in loaded:
            outcomes.append(Outcome(doc_id, Status.SKIPPED, version, "no extracted text for this version yet"))
            continue
        started = time.perf_counter()
        sections, parser = loaded[doc_id]
        parsed = ParsedDocument([Section(s["text"], s.get("page"), s.get("heading")) for s in sections], parser)
        doc_rows = chunk_rows(doc_id, version, parsed, chunker)
        if not doc_rows:
            outcomes.append(_failed(engine, doc_id, version, "no extractable text"))
            continue
        if len(doc_rows) > max_chunks:
            reason = f"document makes {len(doc_rows)} chunks, over the limit of {max_chunks} (RAG_MAX_CHUNKS)"
            outcomes.append(_failed(engine, doc_id, version, reason))
            continue
        rows += doc_rows
        tokens = [r["token_count"] for r in doc_rows]
        metrics[doc_id] = {
            "chunks": len(doc_rows), "tokens": sum(tokens), "max_chunk_tokens": max(tokens),
            "seconds": round(time.perf_counter() - started, 4), "preview": _preview(doc_rows),
        }
    if rows:
        versions = dict(group)
        written = records.replace_chunk_sets(
            engine, {d: versions[d] for d in metrics}, chunk_frame(rows), chunker.fingerprint
        )
        for doc_id, m in metrics.items():
            ok = doc_id in written
            outcomes.append(Outcome(doc_id, Status.PROCESSED, versions[doc_id], metrics=m) if ok else _superseded(doc_id, versions[doc_id]))
    return outcomes


def _preview(chunks: Sequence[dict], rows: int = 3) -> str:
    """The first chunks as a markdown table, for the materialization in the UI."""
    lines = ["| chunk | tokens | heading | page | text |", "|---:|---:|---|---:|---|"]
    for c in chunks[:rows]:
        text = c["text"][:160].replace("\n", " ").replace("|", "\\|")
        page = "" if c["page"] is None else int(c["page"])
        lines.append(f"| {c['chunk_index']} | {c['token_count']} | {c['heading'] or ''} | {page} | {text} |")
    return "\n".join(lines)


def embed(
    engine: Engine, store: VectorStore, doc_ids: Sequence[str], *, embedder: Embedder,
    chunker: ChunkerConfig, embedding: str, batch_size: int = 128,
) -> StepResult:
    """Vectors for the pending documents' chunks (cache first, each distinct text once), then
    one locked write that upserts the points and switches every document still current."""
    computed = compute_vectors(engine, doc_ids, embedder=embedder, chunker=chunker, embedding=embedding, batch_size=batch_size)
    return write_points(engine, store, computed)


@dataclass
class Computed(StepResult):
    """The vector step's result (`outcomes` per document, `metrics` of the step: endpoint calls,
    texts embedded, model), with what the write needs: vectors for the run's pending chunk sets,
    in hand but not yet written to the index."""
    ready: dict = field(default_factory=dict)  # document id -> its row as read before embedding (revision = the CAS token)
    frame: pd.DataFrame = field(default_factory=pd.DataFrame)  # chunk rows (+ text_sha256) of the documents to write
    vectors: dict[str, Sequence[float]] = field(default_factory=dict)  # text sha256 -> vector (float32 arrays)
    chunker: str = ""
    config: str = ""
    dimensions: int | None = None  # None: as wide as the vectors (an endpoint whose width was not configured)
    not_written: list[Outcome] = field(default_factory=list)  # documents the write passes over (skipped, failed, ...)


def _pending_chunk_sets(
    engine: Engine, doc_ids: Sequence[str], chunker: ChunkerConfig, reopen_unless: str | None = None,
    started_at: dt.datetime | None = None,
) -> tuple[dict, pd.DataFrame, list[Outcome]]:
    rows = records.get_documents(engine, doc_ids)
    if reopen_unless is not None:
        rows = _reopen_reconfigured(engine, doc_ids, rows, lambda r: r.indexed_config != reopen_unless, started_at)
    ready = {d: r for d, r in rows.items() if r.status == records.PENDING}
    outcomes = [
        Outcome(d, Status.SKIPPED if d in rows else Status.MISSING, rows[d].version if d in rows else None,
                f"status {rows[d].status}" if d in rows else "document no longer registered")
        for d in doc_ids if d not in ready
    ]
    frame = records.load_chunks(engine, [(d, r.version) for d, r in ready.items()], chunker.fingerprint)
    with_chunks = set(frame["document_id"])
    outcomes += [Outcome(d, Status.SKIPPED, r.version, "no chunks for this version yet") for d, r in ready.items() if d not in with_chunks]
    frame["text_sha256"] = frame["text"].map(text_hash)
    return ready, frame, outcomes


def compute_vectors(
    engine: Engine, doc_ids: Sequence[str], *, embedder: Embedder, chunker: ChunkerConfig, embedding: str,
    batch_size: int = 128, started_at: dt.datetime | None = None, requests: int = 1,
) -> Computed:
    """Every distinct text of the pending chunk sets gets a vector, from the cache or the
    endpoint (and is cached at once), with up to `requests` batches in flight at once.
    Per document: cache hits and texts embedded; the refused documents parked."""
    ready, frame, outcomes = _pending_chunk_sets(
        engine, doc_ids, chunker, reopen_unless=index_config(chunker, embedding), started_at=started_at
    )
    started = time.perf_counter()
    calls_before = embedder.calls
    vectors = _vectors(engine, embedder, embedding, frame, batch_size, requests, documents=len(doc_ids))
    failed_docs = frame.loc[frame["text_sha256"].isin(vectors.failed), ["document_id", "text_sha256"]].drop_duplicates("document_id")
    for doc_id, digest in failed_docs.itertuples(index=False):
        outcomes.append(_failed(engine, doc_id, ready[doc_id].version, vectors.failed[digest]))
    frame = frame[~frame["document_id"].isin(failed_docs["document_id"])]
    every = {**vectors.cached, **vectors.fresh}
    # The width from the vectors themselves: asking an unconfigured endpoint would cost a call.
    width = len(next(iter(every.values()))) if every else None
    run_metrics = {
        "embedding_calls_in_run": embedder.calls - calls_before, "texts_embedded_in_run": len(vectors.fresh),
        "embed_seconds_batch": round(time.perf_counter() - started, 4),
        "dimensions": width, "model": embedder.model, "provider": embedder.provider,
    }
    step = list(outcomes)
    for doc_id, part in frame.groupby("document_id", sort=False):
        hits = int(part["text_sha256"].isin(vectors.cached).sum())
        step.append(Outcome(doc_id, Status.PROCESSED, ready[doc_id].version, metrics={
            "chunks": int(len(part)), "cache_hits": hits, "embedded": int(len(part)) - hits,
        }))
    return Computed(
        step, run_metrics, ready=ready, frame=frame, vectors=every, chunker=chunker.fingerprint,
        config=index_config(chunker, embedding), dimensions=width, not_written=outcomes,
    )


def cached_vectors(
    engine: Engine, doc_ids: Sequence[str], *, chunker: ChunkerConfig, embedding: str, dimensions: int | None,
) -> Computed:
    """What the write step needs, when the vectors were computed by an earlier step: the
    pending chunk sets whose every text is in the cache."""
    ready, frame, outcomes = _pending_chunk_sets(engine, doc_ids, chunker)
    vectors = embedding_cache.lookup(engine, embedding, frame["text_sha256"])
    incomplete = set(frame.loc[~frame["text_sha256"].isin(vectors), "document_id"])
    outcomes += [Outcome(d, Status.SKIPPED, ready[d].version, "vectors not computed for this version yet") for d in sorted(incomplete)]
    return Computed(
        [], {}, ready=ready, frame=frame[~frame["document_id"].isin(incomplete)], vectors=vectors,
        chunker=chunker.fingerprint, config=index_config(chunker, embedding), dimensions=dimensions, not_written=outcomes,
    )


def write_points(engine: Engine, store: VectorStore, computed: Computed) -> StepResult:
    """Upsert the computed points and switch every document still at the revision read, in one
    locked write; documents moved on meanwhile are superseded."""
    outcomes = list(computed.not_written)
    frame = computed.frame
    if frame.empty:
        return StepResult(outcomes, {"collection": store.collection})
    store.ensure_collection(computed.dimensions or len(next(iter(computed.vectors.values()))))
    t0 = time.perf_counter()
    switched = _write_and_switch(engine, store, computed.ready, frame, computed.vectors, computed.chunker, computed.config)
    metrics = {"write_seconds_batch": round(time.perf_counter() - t0, 4), "collection": store.collection}
    for doc_id, part in frame.groupby("document_id", sort=False):
        row = computed.ready[doc_id]
        if doc_id not in switched:
            outcomes.append(_superseded(doc_id, row.version))
            continue
        outcomes.append(Outcome(doc_id, Status.PROCESSED, row.version, metrics={
            "points": int(len(part)), "seconds_since_upload": round(records.seconds_since(row.registered_at), 1),
        }))
    return StepResult(outcomes, metrics)


def _write_and_switch(
    engine: Engine, store: VectorStore, ready: dict, frame: pd.DataFrame, vectors: dict[str, Sequence[float]],
    chunker: str, config: str,
) -> set[str]:
    """Write the points of the documents still at the revision we read and switch them, under
    their row locks (locks taken in id order, so runs cannot deadlock); then retire what the
    switch replaced.

    A registration, purge or other run touching these documents waits for us, so: no point is
    written for a version that was superseded or deleted meanwhile (the re-upload race of the
    post-mortem); the old chunk set's points and rows go together, after the switch; and
    nothing this run deletes can belong to a newer revision. Returns the documents switched."""
    with engine.begin() as conn:
        current = records.lock_documents(conn, list(set(frame["document_id"])))
        generations.hold_for_write(conn, store.collection)
        live = {
            d for d, row in current.items()
            if row.revision == ready[d].revision and row.status not in records.GONE
        }
        points = frame[frame["document_id"].isin(live)]
        # A SQL row's declared metadata columns are keys of its version's info, which reaches
        # each chunk's payload under "meta": indexed on a Qdrant server, for `--meta KEY=VALUE`.
        layouts = records.load_layouts(conn, [(d, ready[d].version) for d in sorted(live)])
        declared = {f"meta.{k}" for layout in layouts.values() for k in layout.record_metadata}
        if declared:
            store.ensure_payload_indexes(sorted(declared))
        payloads = chunk_payloads(ready, points, layouts, records.now())
        store.upsert(points["chunk_id"].tolist(), [vectors[h] for h in points["text_sha256"]], payloads)
        counts = points.groupby("document_id", sort=False).size()
        records.set_indexed(conn, {d: (ready[d].version, int(n)) for d, n in counts.items()}, chunker, config)
    # What the switch replaced goes only once the switch is committed (a failed commit leaves
    # the old version served and whole), and only where it still stands: any later writer of
    # points switches in the same transaction, so an unchanged indexed set means nobody wrote.
    with engine.begin() as conn:
        current = records.lock_documents(conn, list(live))
        keep = [
            doc_id for doc_id, row in current.items()
            if (row.indexed_version, row.indexed_chunker) == (ready[doc_id].version, chunker)
        ]
        # By id, not by a payload filter: an id delete costs the same at any collection size
        # (embedded Qdrant evaluates a filter against every point it holds).
        store.delete_ids(records.replaced_chunk_ids(conn, keep))
        records.drop_replaced(conn, keep)
    return live


def _folders(path: str) -> list[str]:
    # "a/b/c.md" -> ["a/", "a/b/"]: a path-prefix filter is then an exact match on one of them.
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) + "/" for i in range(len(parts))]


def chunk_payloads(
    ready: dict, points: pd.DataFrame, layouts: dict[str, records.Layout], indexed_at: dt.datetime,
) -> list[dict]:
    """Each point's payload: what search filters on and what a hit cites (knowledge base, path,
    page or heading, chunk index, offsets in the extracted text, version, when indexed)."""
    out = []
    stamp = indexed_at.isoformat()
    for c in points.itertuples():
        row = ready[c.document_id]
        layout = layouts.get(c.document_id)
        # The chunk's text is its slice of the section, stripped: the offsets are the stripped
        # text's, in the document's extracted text (sections joined by a blank line).
        start = int(c.char_start)
        if layout is not None:
            raw = layout.sections[int(c.section)][int(c.char_start) : int(c.char_end)]
            start += layout.section_starts[int(c.section)] + len(raw) - len(raw.lstrip())
        suffix = Path(row.path).suffix.lower().lstrip(".")
        out.append({
            "knowledge_base": row.knowledge_base, "document_id": c.document_id, "version": c.version,
            "chunker": c.chunker, "chunk_index": int(c.chunk_index), "text": c.text, "source_path": row.path,
            "page": None if pd.isna(c.page) else int(c.page), "heading": c.heading,
            "file_type": suffix, "folders": _folders(row.path), "section": int(c.section),
            "start": start, "end": start + len(c.text), "indexed_at": stamp,
            "meta": dict(layout.info) if layout else {}, "title": getattr(row, "title", None),
        })
    return out


@dataclass
class _Vectors:
    cached: dict[str, Sequence[float]]
    fresh: dict[str, Sequence[float]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # text hash -> the endpoint's refusal


def _vectors(
    engine: Engine, embedder: Embedder, embedding: str, frame: pd.DataFrame, batch_size: int, requests: int = 1,
    documents: int = 0,
) -> _Vectors:
    """Each distinct text once: from the cache, else from the endpoint (then cached at once).
    With `requests` > 1, that many batches are in flight together: the step otherwise sat idle
    while the endpoint computed each batch."""
    result = _Vectors(cached=embedding_cache.lookup(engine, embedding, frame["text_sha256"]))
    todo = frame.drop_duplicates("text_sha256")
    todo = todo[~todo["text_sha256"].isin(result.cached)]
    batches = [
        (todo["text_sha256"].iloc[s : s + batch_size].tolist(), todo["text"].iloc[s : s + batch_size].tolist())
        for s in range(0, len(todo), batch_size)
    ]
    # Progress in documents' worth of texts: the endpoint's batches are what take the time.
    per_text = documents / len(todo) if len(todo) else 0.0
    if not batches:
        progress.advance("embed", documents)

    def one(batch: tuple[list[str], list[str]]) -> tuple[dict[str, Sequence[float]], dict[str, str]]:
        digests, texts = batch
        failed: dict[str, str] = {}
        try:
            got = dict(zip(digests, embedder.embed(texts)))
        except EmbeddingError:
            # Some text in the batch was refused: find which, one text at a time, so only the
            # documents holding it are parked.
            got = {}
            for digest, text in zip(digests, texts):
                try:
                    got[digest] = embedder.embed([text])[0]
                except EmbeddingError as exc:
                    failed[digest] = str(exc)
        # float32 arrays, as the cache stores and hands them out: a Python float list is 8 times larger.
        got = {d: np.asarray(v, dtype=np.float32) for d, v in got.items()}
        embedding_cache.store(engine, embedding, got)
        progress.advance("embed", len(digests) * per_text)
        return got, failed

    if requests > 1 and len(batches) > 1:
        done = _in_flight(one, batches, requests)
    else:
        done = [one(batch) for batch in batches]
    for got, failed in done:
        result.fresh.update(got)
        result.failed.update(failed)
    return result


def _in_flight(one: Callable[[_T], _R], items: Sequence[_T], requests: int) -> list[_R]:
    """`one` over `items` with at most `requests` calls running, results in order. A new call
    starts only when one has succeeded: a bad key or a dead endpoint fails the step after the
    calls already in flight, not after every queued one has tried too (a pool's queue hands the
    next item to a worker before the caller sees the failure)."""
    results: dict[int, _R] = {}
    pending: dict[Future[_R], int] = {}
    queue = iter(enumerate(items))
    pool = ThreadPoolExecutor(min(requests, len(items)), thread_name_prefix="embed")
    try:
        for i, item in itertools.islice(queue, requests):
            pending[pool.submit(one, item)] = i
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                results[pending.pop(future)] = future.result()
                for i, item in itertools.islice(queue, 1):
                    pending[pool.submit(one, item)] = i
    except BaseException:
        # Fail now, without waiting for the calls in flight (an interrupted step stops too).
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return [results[i] for i in range(len(items))]


def purge(engine: Engine, stores: Sequence[VectorStore], doc_ids: Sequence[str]) -> StepResult:
    """Remove deleted documents' points (from every collection search reads now or after a
    pending switch) and rows. Under each row lock: a re-upload of the same path waits, and then
    starts from a clean slate instead of racing the purge."""
    outcomes = []
    for doc_id in doc_ids:
        with engine.begin() as conn:
            row = records.lock_document(conn, doc_id)
            if row is None or row.status != records.DELETING:
                outcomes.append(Outcome(doc_id, Status.SKIPPED, reason="no longer marked deleted"))
                continue
            for store in stores:
                store.delete_document(doc_id)
            records.set_purged(conn, doc_id)
            outcomes.append(Outcome(doc_id, Status.PROCESSED, row.version))
    return StepResult(outcomes)
