"""The three processing steps, over a batch of documents, with per-document isolation.

Each step reads only committed rows written by the step before it, does its work, and commits
before returning. A document's failure is recorded against that document and never stops the
others. Errors that are not the document's fault (database or endpoint down) propagate, so the
run fails and the documents stay pending for the retry.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
from sqlalchemy.engine import Engine

from rag_pipeline.core import records
from rag_pipeline.core.chunking import ChunkerConfig, chunk_document
from rag_pipeline.core.embedding import Embedder, EmbeddingError
from rag_pipeline.core.inbox import open_inside
from rag_pipeline.core.parsing import ParsedDocument, ParseError, Section, parse_bytes
from rag_pipeline.core.vectorstore import VectorStore


@dataclass
class Outcome:
    document_id: str
    status: str  # processed | skipped | failed | superseded | missing
    version: str | None = None
    reason: str | None = None
    metrics: dict = field(default_factory=dict)


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


def extract(engine: Engine, inbox: Path, doc_ids: Sequence[str], config: str, max_bytes: int) -> list[Outcome]:
    rows = records.get_documents(engine, doc_ids)
    outcomes = []
    for doc_id in doc_ids:
        row = rows.get(doc_id)
        if row is None or row.status == records.DELETED:
            outcomes.append(Outcome(doc_id, "missing", reason="document no longer registered"))
            continue
        if _is_current(row, config):
            outcomes.append(Outcome(doc_id, "skipped", row.version, "already indexed at this version"))
            continue
        started = time.perf_counter()
        try:
            with open_inside(inbox, row.knowledge_base, row.path) as fh:
                data = fh.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise ParseError(f"file is larger than the limit of {max_bytes} bytes (RAG_MAX_FILE_BYTES)")
            version = hashlib.sha256(data).hexdigest()
            if version != row.version:
                # The file changed after detection; the sensor registers the new bytes.
                outcomes.append(Outcome(doc_id, "superseded", row.version, "file changed since detection"))
                continue
            parsed = parse_bytes(data, row.path)
        except FileNotFoundError:
            outcomes.append(Outcome(doc_id, "missing", row.version, "file removed from the landing directory"))
            continue
        except PermissionError as exc:
            outcomes.append(_failed(engine, doc_id, row.version, f"refused: {exc}"))
            continue
        except ParseError as exc:
            outcomes.append(_failed(engine, doc_id, row.version, str(exc)))
            continue
        except Exception as exc:  # a parser library bug on hostile input is still the file's problem
            outcomes.append(_failed(engine, doc_id, row.version, f"could not parse: {type(exc).__name__}: {exc}"[:500]))
            continue
        if not records.save_version(engine, doc_id, row.version, parsed):
            outcomes.append(_superseded(doc_id, row.version))
            continue
        outcomes.append(
            Outcome(
                doc_id, "processed", row.version,
                metrics={
                    "bytes": len(data), "characters": parsed.char_count, "sections": len(parsed.sections),
                    "parser": parsed.parser, "title": parsed.title or "", "path": f"{row.knowledge_base}/{row.path}",
                    "seconds": round(time.perf_counter() - started, 4), **parsed.info,
                },
            )
        )
    return outcomes


def chunk(engine: Engine, doc_ids: Sequence[str], chunker: ChunkerConfig) -> list[Outcome]:
    rows = records.get_documents(engine, doc_ids)
    outcomes = []
    for doc_id in doc_ids:
        row = rows.get(doc_id)
        if row is None:
            outcomes.append(Outcome(doc_id, "missing", None, "document no longer registered"))
            continue
        if row.status != records.PENDING:
            outcomes.append(Outcome(doc_id, "skipped", row.version, f"status {row.status}"))
            continue
        loaded = records.load_sections(engine, doc_id, row.version)
        if loaded is None:
            outcomes.append(Outcome(doc_id, "skipped", row.version, "no extracted text for this version yet"))
            continue
        started = time.perf_counter()
        sections, parser = loaded
        parsed = ParsedDocument([Section(s["text"], s.get("page"), s.get("heading")) for s in sections], parser)
        frame = chunk_document(doc_id, row.version, parsed, chunker)
        if frame.empty:
            outcomes.append(_failed(engine, doc_id, row.version, "no extractable text"))
            continue
        if not records.replace_chunks(engine, doc_id, row.version, frame, chunker.fingerprint):
            outcomes.append(_superseded(doc_id, row.version))
            continue
        outcomes.append(
            Outcome(
                doc_id, "processed", row.version,
                metrics={
                    "chunks": int(len(frame)), "tokens": int(frame["token_count"].sum()),
                    "max_chunk_tokens": int(frame["token_count"].max()),
                    "seconds": round(time.perf_counter() - started, 4),
                    "preview": frame.head(3)[["chunk_index", "token_count", "heading", "page", "text"]]
                    .assign(text=lambda f: f["text"].str.slice(0, 160).str.replace("\n", " ").str.replace("|", "\\|"))
                    .to_markdown(index=False),
                },
            )
        )
    return outcomes


def embed(
    engine: Engine, store: VectorStore, embedder: Embedder, doc_ids: Sequence[str], config: str, batch_size: int = 128
) -> list[Outcome]:
    rows = records.get_documents(engine, doc_ids)
    ready = {d: r for d, r in rows.items() if r.status == records.PENDING}
    outcomes = [
        Outcome(d, "skipped" if d in rows else "missing", rows[d].version if d in rows else None,
                f"status {rows[d].status}" if d in rows else "document no longer registered")
        for d in doc_ids if d not in ready
    ]
    frame = records.load_chunks(engine, [(d, r.version) for d, r in ready.items()])
    with_chunks = set(frame["document_id"]) if not frame.empty else set()
    for d, r in ready.items():
        if d not in with_chunks:
            outcomes.append(Outcome(d, "skipped", r.version, "no chunks for this version yet"))
    if frame.empty:
        return outcomes
    store.ensure_collection(embedder.dimensions)
    started = time.perf_counter()
    calls_before = getattr(embedder, "calls", 0)
    failed_docs: dict[str, str] = {}
    vectors: list[list[float]] = []
    texts = frame["text"].tolist()
    for start in range(0, len(texts), batch_size):
        try:
            vectors.extend(embedder.embed(texts[start : start + batch_size]))
        except EmbeddingError as exc:
            # Permanent refusal for this batch: park its documents with the endpoint's reason.
            for d in set(frame["document_id"].iloc[start : start + batch_size]):
                failed_docs[d] = str(exc)
            vectors.extend([[]] * len(texts[start : start + batch_size]))
    embed_seconds = time.perf_counter() - started
    frame = frame.assign(vector=vectors)
    for doc_id, reason in failed_docs.items():
        outcomes.append(_failed(engine, doc_id, ready[doc_id].version, reason))
    frame = frame[~frame["document_id"].isin(failed_docs)]
    if frame.empty:
        return outcomes
    meta = pd.DataFrame(
        [(d, r.knowledge_base, r.path) for d, r in ready.items()], columns=["document_id", "knowledge_base", "source_path"]
    )
    points = frame.merge(meta, on="document_id", how="left")
    payloads = [
        {
            "knowledge_base": c.knowledge_base, "document_id": c.document_id, "version": c.version,
            "chunk_index": int(c.chunk_index), "text": c.text, "source_path": c.source_path,
            "page": None if pd.isna(c.page) else int(c.page), "heading": c.heading,
        }
        for c in points.itertuples()
    ]
    # Order matters: new points first (one batched upsert for the whole run), then per document
    # the switch, then its old points, then its old chunks. Search never loses a document
    # mid-update and no point outlives its chunk row.
    t0 = time.perf_counter()
    store.upsert(points["chunk_id"].tolist(), points["vector"].tolist(), payloads)
    upsert_seconds = time.perf_counter() - t0
    for doc_id, n_points in frame.groupby("document_id", sort=False).size().items():
        row = ready[doc_id]
        if not records.mark_indexed(engine, doc_id, row.version, config, int(n_points)):
            # A newer version arrived meanwhile: leave ours for that version's run to clean.
            outcomes.append(_superseded(doc_id, row.version))
            continue
        store.delete_document(doc_id, keep_version=row.version)
        records.prune_versions(engine, doc_id, row.version)
        outcomes.append(
            Outcome(
                doc_id, "processed", row.version,
                metrics={
                    "points": int(n_points), "dimensions": embedder.dimensions, "model": embedder.model,
                    "provider": embedder.provider, "collection": store.collection,
                    "upsert_seconds_batch": round(upsert_seconds, 4),
                    "embed_seconds_batch": round(embed_seconds, 4),
                },
            )
        )
    calls = getattr(embedder, "calls", 0) - calls_before
    for o in outcomes:
        if o.status == "processed":
            o.metrics["embedding_calls_in_run"] = calls
    return outcomes
