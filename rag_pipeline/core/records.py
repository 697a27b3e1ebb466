"""Record-keeping: what documents exist, which version each is at, and what is indexed.

Every state change is one short transaction. Writes that finish work compare-and-set on the
document's version, so a step working on a superseded version can never overwrite a newer one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable, Sequence

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from rag_pipeline.core.db import chunks, document_versions, documents
from rag_pipeline.core.identity import document_id
from rag_pipeline.core.parsing import ParsedDocument

PENDING, INDEXED, FAILED, DELETED = "pending", "indexed", "failed", "deleted"


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True)
class Known:
    id: str
    version: str
    size_bytes: int
    mtime_ns: int
    status: str


@dataclass(frozen=True)
class Change:
    document_id: str
    knowledge_base: str
    path: str
    kind: str  # "new" | "changed" | "unchanged"


def known_documents(engine: Engine) -> dict[tuple[str, str], Known]:
    query = sa.select(
        documents.c.knowledge_base, documents.c.path, documents.c.id, documents.c.version,
        documents.c.size_bytes, documents.c.mtime_ns, documents.c.status,
    )
    with engine.connect() as conn:
        return {(r[0], r[1]): Known(*r[2:]) for r in conn.execute(query)}


def register_upload(
    engine: Engine, knowledge_base: str, path: str, version: str, size_bytes: int, mtime_ns: int
) -> Change:
    """Record that (kb, path) now holds content `version`. Idempotent; safe under concurrency:
    the unique (knowledge_base, path) constraint makes a second writer update, never duplicate."""
    doc_id = document_id(knowledge_base, path)
    ts = now()
    with engine.begin() as conn:
        insert = _insert(conn).values(
            id=doc_id, knowledge_base=knowledge_base, path=path, version=version,
            size_bytes=size_bytes, mtime_ns=mtime_ns, status=PENDING, attempts=0,
            detected_at=ts, updated_at=ts,
        ).on_conflict_do_nothing(index_elements=["knowledge_base", "path"])
        if conn.execute(insert).rowcount == 1:
            return Change(doc_id, knowledge_base, path, "new")
        row = conn.execute(
            sa.select(documents.c.version, documents.c.status).where(documents.c.id == doc_id)
        ).one()
        if row.version == version and row.status != DELETED:
            # Same bytes: only refresh the stat fingerprint so the next scan skips hashing.
            conn.execute(
                documents.update().where(documents.c.id == doc_id)
                .values(size_bytes=size_bytes, mtime_ns=mtime_ns)
            )
            return Change(doc_id, knowledge_base, path, "unchanged")
        conn.execute(
            documents.update().where(documents.c.id == doc_id).values(
                version=version, size_bytes=size_bytes, mtime_ns=mtime_ns, status=PENDING,
                # A new version has never been requested, whatever happened to the old one.
                error=None, attempts=0, updated_at=ts, requested_at=None,
            )
        )
        return Change(doc_id, knowledge_base, path, "changed")


def _insert(conn: sa.Connection):  # noqa: ANN202
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(documents)


def get_documents(engine: Engine, ids: Sequence[str]) -> dict[str, sa.Row]:
    if not ids:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(sa.select(documents).where(documents.c.id.in_(list(ids))))
        return {r.id: r for r in rows}


def save_version(engine: Engine, doc_id: str, version: str, parsed: ParsedDocument) -> bool:
    """Store extracted text for `version`. False if the document has moved on to another version."""
    with engine.begin() as conn:
        if not _lock_if_current(conn, doc_id, version):
            return False
        conn.execute(
            document_versions.delete().where(
                (document_versions.c.document_id == doc_id) & (document_versions.c.version == version)
            )
        )
        conn.execute(
            document_versions.insert().values(
                document_id=doc_id, version=version, parser=parsed.parser,
                text="\n\n".join(s.text for s in parsed.sections),
                sections=[{"text": s.text, "page": s.page, "heading": s.heading} for s in parsed.sections],
                info=dict(parsed.info), created_at=now(),
            )
        )
        conn.execute(documents.update().where(documents.c.id == doc_id).values(title=parsed.title, updated_at=now()))
        return True


def _lock_if_current(conn: sa.Connection, doc_id: str, version: str) -> bool:
    """Lock the document row for this transaction if it is still at `version`."""
    current = conn.execute(
        sa.select(documents.c.version).where(documents.c.id == doc_id).with_for_update()
    ).scalar_one_or_none()
    return current == version


def load_sections(engine: Engine, doc_id: str, version: str) -> tuple[list[dict], str] | None:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(document_versions.c.sections, document_versions.c.parser).where(
                (document_versions.c.document_id == doc_id) & (document_versions.c.version == version)
            )
        ).one_or_none()
    return (row.sections, row.parser) if row else None


def record_failure(engine: Engine, doc_id: str, version: str, reason: str) -> bool:
    with engine.begin() as conn:
        result = conn.execute(
            documents.update()
            .where((documents.c.id == doc_id) & (documents.c.version == version))
            .values(status=FAILED, error=reason[:2000], attempts=documents.c.attempts + 1, updated_at=now())
        )
        return result.rowcount == 1


def replace_chunks(engine: Engine, doc_id: str, version: str, frame: pd.DataFrame, chunker: str) -> bool:
    """Write this version's chunks in one transaction (a retry replaces a partial earlier try).
    Other versions' chunks stay: search keeps serving them until the new version is indexed."""
    records = frame.assign(chunker=chunker).to_dict("records")
    for record in records:
        if pd.isna(record["page"]):
            record["page"] = None
        else:
            record["page"] = int(record["page"])
    with engine.begin() as conn:
        if not _lock_if_current(conn, doc_id, version):
            return False
        conn.execute(chunks.delete().where((chunks.c.document_id == doc_id) & (chunks.c.version == version)))
        if records:
            conn.execute(chunks.insert(), records)
        return True


def load_chunks(engine: Engine, pairs: Iterable[tuple[str, str]]) -> pd.DataFrame:
    pairs = list(pairs)
    columns = ["chunk_id", "document_id", "version", "chunk_index", "text", "token_count", "page", "heading", "chunker"]
    if not pairs:
        return pd.DataFrame(columns=columns)
    frames = []
    with engine.connect() as conn:
        for start in range(0, len(pairs), 500):
            cond = sa.tuple_(chunks.c.document_id, chunks.c.version).in_(pairs[start : start + 500])
            query = sa.select(*[chunks.c[c] for c in columns]).where(cond).order_by(chunks.c.document_id, chunks.c.chunk_index)
            frames.append(pd.DataFrame(conn.execute(query).fetchall(), columns=columns))
    return pd.concat(frames, ignore_index=True)


def mark_indexed(engine: Engine, doc_id: str, version: str, config: str, chunk_count: int) -> bool:
    """Compare-and-set: only the version the document is still at becomes the indexed one."""
    with engine.begin() as conn:
        result = conn.execute(
            documents.update()
            .where((documents.c.id == doc_id) & (documents.c.version == version))
            .values(
                status=INDEXED, indexed_version=version, indexed_config=config, chunk_count=chunk_count,
                error=None, indexed_at=now(), updated_at=now(),
            )
        )
        return result.rowcount == 1


def prune_versions(engine: Engine, doc_id: str, keep_version: str) -> None:
    """Drop extracted text and chunks of versions other than the indexed one (cascade)."""
    with engine.begin() as conn:
        conn.execute(
            document_versions.delete().where(
                (document_versions.c.document_id == doc_id) & (document_versions.c.version != keep_version)
            )
        )


def list_documents(engine: Engine, knowledge_base: str | None = None) -> list[sa.Row]:
    query = sa.select(
        documents.c.id, documents.c.knowledge_base, documents.c.path, documents.c.status,
        documents.c.version, documents.c.indexed_version, documents.c.error, documents.c.chunk_count,
        documents.c.attempts, documents.c.updated_at, documents.c.indexed_at,
    ).order_by(documents.c.knowledge_base, documents.c.path)
    if knowledge_base:
        query = query.where(documents.c.knowledge_base == knowledge_base)
    with engine.connect() as conn:
        return list(conn.execute(query))


def indexed_chunk_ids(engine: Engine) -> dict[str, set[str]]:
    """document id -> ids of the chunks of its indexed version (what Qdrant must hold)."""
    query = (
        sa.select(chunks.c.document_id, chunks.c.chunk_id)
        .select_from(chunks.join(documents, documents.c.id == chunks.c.document_id))
        .where((documents.c.status == INDEXED) & (chunks.c.version == documents.c.indexed_version))
    )
    out: dict[str, set[str]] = {}
    with engine.connect() as conn:
        for doc, cid in conn.execute(query):
            out.setdefault(doc, set()).add(cid)
    return out
