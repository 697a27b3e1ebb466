"""The three processing steps, over a batch of documents, with per-document isolation.

Each step reads only committed rows written by the step before it, does its work, and commits
before returning. A document's failure is recorded against that document and never stops the
others. Errors that are not the document's fault (database or endpoint down) propagate, so the
run fails and the documents stay pending for the retry.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from rag_pipeline.core import embedding_cache, generations, records
from rag_pipeline.core.chunking import ChunkerConfig, chunk_frame, chunk_rows
from rag_pipeline.core.embedding import Embedder, EmbeddingError
from rag_pipeline.core.identity import text_hash
from rag_pipeline.core.sources import Source, SourceChanged, SourceError, as_source, stream_size
from rag_pipeline.core.parsing import Limits, ParsedDocument, ParseError, Section, over_file_limit
from rag_pipeline.core.sandbox import ParserSandbox
from rag_pipeline.core.vectorstore import VectorStore


@dataclass
class Outcome:
    document_id: str
    status: str  # processed | skipped | failed | superseded | missing
    version: str | None = None
    reason: str | None = None
    metrics: dict = field(default_factory=dict)


# Extracted text is saved once this much is in hand (one transaction), and chunked in groups of
# this many documents: per-batch database work instead of per-document, with memory bounded.
FLUSH_CHARACTERS = 8_000_000
FLUSH_DOCUMENTS = 500  # and at most this many per statement (database parameter limits)
CHUNK_GROUP = 50


def index_config(chunker: ChunkerConfig, embedding: str) -> str:
    """What an index was built with. `embedding` comes from configuration (provider:model:dims),
    so every step computes it without constructing, or calling, the embedder."""
    return f"{chunker.fingerprint}|{embedding}"


def _failed(engine: Engine, doc_id: str, version: str, reason: str) -> Outcome:
    records.record_failure(engine, doc_id, version, reason)
    return Outcome(doc_id, "failed", version, reason)


def _superseded(doc_id: str, version: str) -> Outcome:
    return Outcome(doc_id, "superseded", version, "a newer version was registered")


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
    engine: Engine, inbox: Source | Path, doc_ids: Sequence[str], config: str, limits: Limits,
    started_at: dt.datetime | None = None,
) -> list[Outcome]:
    """Read, check and parse each document's registered version from `inbox` (a source, or a
    folder path taken as the landing directory). The step reads the source itself, so a run on
    another machine needs only the bucket, not the sensor's disk."""
    with ParserSandbox(limits) as sandbox:
        return _extract(engine, as_source(inbox), doc_ids, config, limits, sandbox, started_at)


def _extract(
    engine: Engine, source: Source, doc_ids: Sequence[str], config: str, limits: Limits, sandbox: ParserSandbox,
    started_at: dt.datetime | None = None,
) -> list[Outcome]:
    rows = records.get_documents(engine, doc_ids)
    outcomes: list[Outcome] = []
    # Parsed documents are saved together, one transaction per FLUSH_CHARACTERS of text.
    parsed_batch: list[tuple[str, str, ParsedDocument]] = []
    metrics: dict[str, dict] = {}
    reuse: dict[str, str] = {}  # indexed at its version under another configuration
    batch_chars = 0

    def flush() -> None:
        nonlocal batch_chars
        saved = records.save_versions(engine, parsed_batch)
        for doc_id, version, _ in parsed_batch:
            ok = doc_id in saved
            outcomes.append(Outcome(doc_id, "processed", version, metrics=metrics.pop(doc_id)) if ok else _superseded(doc_id, version))
        parsed_batch.clear()
        batch_chars = 0

    for doc_id in doc_ids:
        row = rows.get(doc_id)
        if row is None or row.status in records.GONE:
            outcomes.append(Outcome(doc_id, "missing", reason="document was deleted"))
            continue
        if _is_current(row, config):
            outcomes.append(Outcome(doc_id, "skipped", row.version, "already indexed at this version"))
            continue
        if _rebuildable(row, lambda r: r.indexed_config != config, started_at):
            reuse[doc_id] = row.version  # only the configuration changed: its text is stored
            continue
        if row.status == records.INDEXED and row.indexed_version == row.version:
            outcomes.append(Outcome(doc_id, "skipped", row.version, "indexed since this run started, with another configuration"))
            continue
        started = time.perf_counter()
        try:
            # Conditional on the token registered (an object's ETag): a newer upload's bytes are
            # never read under this version; the hash check below covers sources without one.
            with source.open(row.knowledge_base, row.path, token=row.change_token) as fh:
                # Sized before reading: an oversized file is refused without loading it.
                size = stream_size(fh)
                if size > limits.max_file_bytes:
                    raise ParseError(over_file_limit(size, limits.max_file_bytes))
                data = fh.read(limits.max_file_bytes + 1)
            if len(data) > limits.max_file_bytes:  # grew after the fstat
                raise ParseError(over_file_limit(len(data), limits.max_file_bytes))
            version = hashlib.sha256(data).hexdigest()
            if version != row.version:
                # The file changed after detection; the sensor registers the new bytes.
                outcomes.append(Outcome(doc_id, "superseded", row.version, "file changed since detection"))
                continue
            parsed = sandbox.parse(data, row.path)
        except SourceChanged:
            # Re-uploaded since the listing: the next listing registers the new version, which
            # is then handed to a run; this one indexes nothing under the old version.
            outcomes.append(Outcome(doc_id, "superseded", row.version, "changed in the landing zone since detection"))
            continue
        except SourceError:
            raise  # the source is unreachable or misconfigured: the step fails, documents wait
        except FileNotFoundError:
            outcomes.append(Outcome(doc_id, "missing", row.version, "file removed from the landing directory"))
            continue
        except PermissionError as exc:
            # errno set: the OS said no (file mode); unset: our confinement check refused it.
            reason = f"cannot read the file: {exc.strerror}" if exc.errno else f"refused: {exc}"
            outcomes.append(_failed(engine, doc_id, row.version, reason))
            continue
        except ParseError as exc:
            outcomes.append(_failed(engine, doc_id, row.version, str(exc)))
            continue
        except Exception as exc:  # a parser library bug on hostile input is still the file's problem
            outcomes.append(_failed(engine, doc_id, row.version, f"could not parse: {type(exc).__name__}: {exc}"[:500]))
            continue
        parsed_batch.append((doc_id, row.version, parsed))
        batch_chars += parsed.char_count
        metrics[doc_id] = {
            "bytes": len(data), "characters": parsed.char_count, "sections": len(parsed.sections),
            "parser": parsed.parser, "title": parsed.title or "", "path": f"{row.knowledge_base}/{row.path}",
            "source": source.describe(),
            "seconds": round(time.perf_counter() - started, 4), **parsed.info,
        }
        if batch_chars >= FLUSH_CHARACTERS or len(parsed_batch) >= FLUSH_DOCUMENTS:
            flush()
    flush()
    reopened = records.reopen(engine, reuse)
    outcomes += [
        Outcome(d, "processed", v, metrics={"reused_text": True}) if d in reopened else _superseded(d, v)
        for d, v in reuse.items()
    ]
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
    engine: Engine, doc_ids: Sequence[str], chunker: ChunkerConfig, max_chunks: int, started_at: dt.datetime | None = None
) -> list[Outcome]:
    rows = _reopen_reconfigured(
        engine, doc_ids, records.get_documents(engine, doc_ids), lambda r: r.indexed_chunker != chunker.fingerprint, started_at
    )
    outcomes: list[Outcome] = []
    todo = []
    for doc_id in doc_ids:
        row = rows.get(doc_id)
        if row is None:
            outcomes.append(Outcome(doc_id, "missing", None, "document no longer registered"))
        elif row.status != records.PENDING:
            outcomes.append(Outcome(doc_id, "skipped", row.version, f"status {row.status}"))
        else:
            todo.append((doc_id, row.version, row.size_bytes or 0))
    # A group's texts are read in one query and its chunk sets written in one transaction; a
    # group is bounded in documents and in bytes, so large files never pile up in memory.
    group: list[tuple[str, str]] = []
    group_bytes = 0
    for doc_id, version, size in todo:
        if group and (len(group) >= CHUNK_GROUP or group_bytes + size > FLUSH_CHARACTERS):
            outcomes += _chunk_group(engine, group, chunker, max_chunks)
            group, group_bytes = [], 0
        group.append((doc_id, version))
        group_bytes += size
    if group:
        outcomes += _chunk_group(engine, group, chunker, max_chunks)
    return outcomes


def _chunk_group(
    engine: Engine, group: Sequence[tuple[str, str]], chunker: ChunkerConfig, max_chunks: int
) -> list[Outcome]:
    loaded = records.load_sections(engine, group)
    outcomes, rows, metrics = [], [], {}
    for doc_id, version in group:
        if doc_id not in loaded:
            outcomes.append(Outcome(doc_id, "skipped", version, "no extracted text for this version yet"))
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
            outcomes.append(Outcome(doc_id, "processed", versions[doc_id], metrics=m) if ok else _superseded(doc_id, versions[doc_id]))
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
    engine: Engine, store: VectorStore, embedder: Embedder, doc_ids: Sequence[str],
    chunker: ChunkerConfig, embedding: str, batch_size: int = 128,
) -> list[Outcome]:
    """Vectors for the pending documents' chunks (cache first, each distinct text once), then
    one locked write that upserts the points and switches every document still current."""
    computed, _ = compute_vectors(engine, embedder, doc_ids, chunker, embedding, batch_size)
    return write_points(engine, store, computed)


@dataclass
class Computed:
    """Vectors for a run's pending chunk sets, in hand but not yet written to the index."""
    ready: dict  # document id -> its row as read before embedding (revision = the CAS token)
    frame: pd.DataFrame  # chunk rows (+ text_sha256) of the documents to write
    vectors: dict[str, Sequence[float]]  # text sha256 -> vector (float32 arrays from the cache)
    chunker: str
    config: str
    dimensions: int | None  # None: as wide as the vectors (an endpoint whose width was not configured)
    outcomes: list[Outcome]  # documents that will not be written (skipped, failed, ...)
    metrics: dict


def _pending_chunk_sets(
    engine: Engine, doc_ids: Sequence[str], chunker: ChunkerConfig, reopen_unless: str | None = None,
    started_at: dt.datetime | None = None,
) -> tuple[dict, pd.DataFrame, list[Outcome]]:
    rows = records.get_documents(engine, doc_ids)
    if reopen_unless is not None:
        rows = _reopen_reconfigured(engine, doc_ids, rows, lambda r: r.indexed_config != reopen_unless, started_at)
    ready = {d: r for d, r in rows.items() if r.status == records.PENDING}
    outcomes = [
        Outcome(d, "skipped" if d in rows else "missing", rows[d].version if d in rows else None,
                f"status {rows[d].status}" if d in rows else "document no longer registered")
        for d in doc_ids if d not in ready
    ]
    frame = records.load_chunks(engine, [(d, r.version) for d, r in ready.items()], chunker.fingerprint)
    with_chunks = set(frame["document_id"])
    outcomes += [Outcome(d, "skipped", r.version, "no chunks for this version yet") for d, r in ready.items() if d not in with_chunks]
    frame["text_sha256"] = frame["text"].map(text_hash)
    return ready, frame, outcomes


def compute_vectors(
    engine: Engine, embedder: Embedder, doc_ids: Sequence[str], chunker: ChunkerConfig, embedding: str,
    batch_size: int = 128, started_at: dt.datetime | None = None, requests: int = 1,
) -> tuple[Computed, list[Outcome]]:
    """Every distinct text of the pending chunk sets gets a vector, from the cache or the
    endpoint (and is cached at once), with up to `requests` batches in flight at once.
    Returns what the write needs, and per-document outcomes of this step (cache hits, texts
    embedded; the refused documents parked)."""
    ready, frame, outcomes = _pending_chunk_sets(
        engine, doc_ids, chunker, reopen_unless=index_config(chunker, embedding), started_at=started_at
    )
    started = time.perf_counter()
    calls_before = embedder.calls
    vectors = _vectors(engine, embedder, embedding, frame, batch_size, requests)
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
        step.append(Outcome(doc_id, "processed", ready[doc_id].version, metrics={
            "chunks": int(len(part)), "cache_hits": hits, "embedded": int(len(part)) - hits, **run_metrics,
        }))
    computed = Computed(
        ready=ready, frame=frame, vectors=every, chunker=chunker.fingerprint,
        config=index_config(chunker, embedding), dimensions=width, outcomes=outcomes,
        metrics=run_metrics,
    )
    return computed, step


def cached_vectors(
    engine: Engine, doc_ids: Sequence[str], chunker: ChunkerConfig, embedding: str, dimensions: int | None
) -> Computed:
    """What the write step needs, when the vectors were computed by an earlier step: the
    pending chunk sets whose every text is in the cache."""
    ready, frame, outcomes = _pending_chunk_sets(engine, doc_ids, chunker)
    vectors = embedding_cache.lookup(engine, embedding, frame["text_sha256"])
    incomplete = set(frame.loc[~frame["text_sha256"].isin(vectors), "document_id"])
    outcomes += [Outcome(d, "skipped", ready[d].version, "vectors not computed for this version yet") for d in sorted(incomplete)]
    return Computed(
        ready=ready, frame=frame[~frame["document_id"].isin(incomplete)], vectors=vectors, chunker=chunker.fingerprint,
        config=index_config(chunker, embedding), dimensions=dimensions, outcomes=outcomes, metrics={},
    )


def write_points(engine: Engine, store: VectorStore, computed: Computed) -> list[Outcome]:
    outcomes = list(computed.outcomes)
    frame = computed.frame
    if frame.empty:
        return outcomes
    store.ensure_collection(computed.dimensions or len(next(iter(computed.vectors.values()))))
    t0 = time.perf_counter()
    switched = _write_and_switch(engine, store, computed.ready, frame, computed.vectors, computed.chunker, computed.config)
    metrics = {**computed.metrics, "write_seconds_batch": round(time.perf_counter() - t0, 4), "collection": store.collection}
    for doc_id, part in frame.groupby("document_id", sort=False):
        row = computed.ready[doc_id]
        if doc_id not in switched:
            outcomes.append(_superseded(doc_id, row.version))
            continue
        outcomes.append(
            Outcome(
                doc_id, "processed", row.version,
                metrics={
                    "points": int(len(part)), "seconds_since_upload": round(records.seconds_since(row.registered_at), 1),
                    **metrics,
                },
            )
        )
    return outcomes


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
        payloads = [
            {
                "knowledge_base": ready[c.document_id].knowledge_base, "document_id": c.document_id,
                "version": c.version, "chunker": c.chunker, "chunk_index": int(c.chunk_index), "text": c.text,
                "source_path": ready[c.document_id].path, "page": None if pd.isna(c.page) else int(c.page),
                "heading": c.heading,
            }
            for c in points.itertuples()
        ]
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


@dataclass
class _Vectors:
    cached: dict[str, Sequence[float]]
    fresh: dict[str, Sequence[float]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # text hash -> the endpoint's refusal


def _vectors(
    engine: Engine, embedder: Embedder, embedding: str, frame: pd.DataFrame, batch_size: int, requests: int = 1
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
        return got, failed

    if requests > 1 and len(batches) > 1:
        pool = ThreadPoolExecutor(min(requests, len(batches)), thread_name_prefix="embed")
        try:
            done = [future.result() for future in [pool.submit(one, batch) for batch in batches]]
        except BaseException:
            # A bad key or a dead endpoint fails the step now, not after every queued batch has
            # tried too (and an interrupted step stops sending).
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    else:
        done = [one(batch) for batch in batches]
    for got, failed in done:
        result.fresh.update(got)
        result.failed.update(failed)
    return result


def purge(engine: Engine, stores: Sequence[VectorStore], doc_ids: Sequence[str]) -> list[Outcome]:
    """Remove deleted documents' points (from every collection search reads now or after a
    pending switch) and rows. Under each row lock: a re-upload of the same path waits, and then
    starts from a clean slate instead of racing the purge."""
    outcomes = []
    for doc_id in doc_ids:
        with engine.begin() as conn:
            row = records.lock_document(conn, doc_id)
            if row is None or row.status != records.DELETING:
                outcomes.append(Outcome(doc_id, "skipped", reason="no longer marked deleted"))
                continue
            for store in stores:
                store.delete_document(doc_id)
            records.set_purged(conn, doc_id)
            outcomes.append(Outcome(doc_id, "processed", row.version))
    return outcomes
