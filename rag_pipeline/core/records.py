"""Record-keeping: what documents exist, which version each is at, and what is indexed.

Every state change is one short transaction. Writes that finish work compare-and-set on the
document's version, so a step working on a superseded version can never overwrite a newer one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Container, Iterable, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from rag_pipeline.core.batching import batched
from rag_pipeline.core.db import chunks, document_versions, documents
from rag_pipeline.core.identity import document_id, partition_key
from rag_pipeline.core.parsing import ParsedDocument

if TYPE_CHECKING:
    # Imported where used: the code server, which only runs the sensor, then holds no pandas,
    # qdrant-client or openai (about 100 MB; see ARCHITECTURE.md, "Code server").
    import pandas as pd

PENDING, INDEXED, FAILED = "pending", "indexed", "failed"
# DELETING: the file is gone, its points and rows are still to be purged. DELETED: purged; the
# row stays as a tombstone so a late run's compare-and-set fails and the id is never reused wrongly.
DELETING, DELETED = "deleting", "deleted"
GONE = (DELETING, DELETED)
# The version of a file refused without being read (it has no content hash).
REFUSED_PREFIX = "refused:"
# The version of an upload registered from its listing, unread (an object: size and ETag); the
# run that reads it replaces it with the sha256 of the bytes (`resolve_version`).
LISTED_PREFIX = "listed:"


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def seconds_since(ts: dt.datetime | None) -> float:
    if ts is None:
        return 0.0
    return (now() - _aware(ts)).total_seconds()


@dataclass(frozen=True)
class Known:
    id: str
    version: str
    size_bytes: int
    mtime_ns: int
    status: str
    change_token: str | None = None


@dataclass(frozen=True)
class Change:
    document_id: str
    knowledge_base: str
    path: str
    kind: str  # "new" | "changed" | "unchanged"


def known_documents(
    engine: Engine, *, tokens: str | None = None, not_tokens: str | None = None,
) -> dict[tuple[str, str], Known]:
    """Every registered document, or one source's: `tokens`, those whose change token starts
    with it (a SQL source's rows); `not_tokens`, those whose token does not (the landing zone's).
    A source's tick then holds its own documents only, not every source's."""
    query = sa.select(
        documents.c.knowledge_base, documents.c.path, documents.c.id, documents.c.version,
        documents.c.size_bytes, documents.c.mtime_ns, documents.c.status, documents.c.change_token,
    )
    if tokens is not None:
        query = query.where(documents.c.change_token.startswith(tokens, autoescape=True))
    if not_tokens is not None:
        query = query.where(
            documents.c.change_token.is_(None) | ~documents.c.change_token.startswith(not_tokens, autoescape=True)
        )
    with engine.connect() as conn:
        return {(r[0], r[1]): Known(*r[2:]) for r in conn.execute(query)}


def latest_mtime_ns(engine: Engine, token_prefix: str) -> int | None:
    """The latest time registered for documents whose change token starts with `token_prefix`
    (a SQL source's rows: their updated_at), the watermark of its incremental listing."""
    # Refusals are registered whatever the tick's budget, so they could be ahead of rows a
    # budget left for the next tick; rows are registered in updated_at order (`sql.py`).
    query = sa.select(sa.func.max(documents.c.mtime_ns)).where(
        documents.c.change_token.startswith(token_prefix, autoescape=True),
        ~documents.c.version.startswith(REFUSED_PREFIX),
    )
    with engine.connect() as conn:
        value = conn.execute(query).scalar()
    return int(value) if value else None


def register_upload(
    engine: Engine, knowledge_base: str, path: str, version: str, size_bytes: int, mtime_ns: int,
    refusal: str | None = None, *, change_token: str | None = None,
) -> Change:
    """Record that (kb, path) now holds content `version`. Idempotent; safe under concurrency:
    the unique (knowledge_base, path) constraint makes a second writer update, never duplicate,
    and the row lock orders it after any run switching this document. With `refusal`, the file
    was refused unread: registered failed with that reason, never handed to a run."""
    doc_id = document_id(knowledge_base, path)
    ts = now()
    status, error = (PENDING, None) if refusal is None else (FAILED, refusal[:2000])
    with engine.begin() as conn:
        insert = insert_for(conn, documents).values(
            id=doc_id, knowledge_base=knowledge_base, path=path, partition_key=partition_key(knowledge_base, path),
            version=version, size_bytes=size_bytes, mtime_ns=mtime_ns, change_token=change_token, status=status, error=error, attempts=0,
            detected_at=ts, updated_at=ts, registered_at=ts, revision=1,
        ).on_conflict_do_nothing().returning(documents.c.id)
        # No conflict target: the id is derived from (kb, path), so a concurrent writer can trip
        # either unique index first, and PostgreSQL only absorbs conflicts on the target's.
        # RETURNING, not rowcount: drivers disagree on rowcount for ON CONFLICT DO NOTHING.
        if conn.execute(insert).first() is not None:
            return Change(doc_id, knowledge_base, path, "new")
        row = lock_document(conn, doc_id)
        if row.version == version and row.status not in GONE:
            # Same bytes: only refresh the stat fingerprint so the next scan skips hashing.
            conn.execute(
                documents.update().where(documents.c.id == doc_id)
                .values(size_bytes=size_bytes, mtime_ns=mtime_ns, change_token=change_token)
            )
            return Change(doc_id, knowledge_base, path, "unchanged")
        conn.execute(
            documents.update().where(documents.c.id == doc_id).values(
                version=version, size_bytes=size_bytes, mtime_ns=mtime_ns, change_token=change_token, status=status,
                # A new version has never been requested, whatever happened to the old one.
                error=error, attempts=0, updated_at=ts, requested_at=None, request_token=None, registered_at=ts,
                overdue_reported_at=None, revision=documents.c.revision + 1,
            )
        )
        return Change(doc_id, knowledge_base, path, "new" if row.status in GONE else "changed")


def register_new_uploads(engine: Engine, uploads: Sequence[tuple]) -> set[str]:
    """First registrations in bulk: (kb, path, version, size, mtime_ns[, change token]) each. Returns the ids
    inserted; a path someone else registered meanwhile is not among them, and goes through
    `register_upload` like any change."""
    if not uploads:
        return set()
    ts = now()
    values = [
        dict(id=document_id(kb, path), knowledge_base=kb, path=path, partition_key=partition_key(kb, path), version=version, size_bytes=size,
             mtime_ns=mtime, change_token=token[0] if token else None, status=PENDING, attempts=0, detected_at=ts,
             updated_at=ts, registered_at=ts, revision=1)
        for kb, path, version, size, mtime, *token in uploads
    ]
    with engine.begin() as conn:
        # A list of parameter sets, not `.values(list)`: SQLAlchemy compiles the statement once
        # and sends it as multi-row inserts of a bounded size ("insertmanyvalues"). A literal
        # 2,000-row VALUES list was compiled anew every time: 24 s for 20,000 first uploads.
        insert = insert_for(conn, documents).on_conflict_do_nothing().returning(documents.c.id)
        return {r[0] for r in conn.execute(insert, values)}


@dataclass(frozen=True)
class DocumentRef:
    """How a document is named: its id (the identity of rows and points), its partition key
    (the UI's name for it) and the knowledge base and path it came from."""
    id: str
    partition_key: str
    knowledge_base: str
    path: str
    status: str = PENDING

    @property
    def name(self) -> str:
        return f"{self.knowledge_base}/{self.path}"


_REF_COLUMNS = (documents.c.id, documents.c.partition_key, documents.c.knowledge_base, documents.c.path, documents.c.status)


def refs_by_id(engine: Engine, doc_ids: Iterable[str]) -> dict[str, DocumentRef]:
    """{document id: its names}, in bounded statements."""
    out: dict[str, DocumentRef] = {}
    with engine.connect() as conn:
        for part in batched(dict.fromkeys(doc_ids)):
            out.update((r.id, DocumentRef(*r)) for r in conn.execute(sa.select(*_REF_COLUMNS).where(documents.c.id.in_(part))))
    return out


def refs_by_key(engine: Engine, keys: Iterable[str]) -> dict[str, DocumentRef]:
    """{partition key: the document it names}. A key that is a document id is found too: the
    partition keys of an index built before readable keys, still named by runs in flight."""
    out: dict[str, DocumentRef] = {}
    with engine.connect() as conn:
        for part in batched(dict.fromkeys(keys)):
            query = sa.select(*_REF_COLUMNS).where(documents.c.partition_key.in_(part) | documents.c.id.in_(part))
            wanted = set(part)
            for r in conn.execute(query):
                ref = DocumentRef(*r)
                out.update((k, ref) for k in (ref.partition_key, ref.id) if k in wanted)
    return out


def mark_deleting(engine: Engine, doc_ids: Sequence[str]) -> list[str]:
    """The files are gone: tombstone the documents (their purge follows). Returns those marked."""
    marked: list[str] = []
    with engine.begin() as conn:
        for part in batched(sorted(doc_ids)):
            # Locked in id order first, like every multi-row locker: no deadlocks with a run.
            lock_documents(conn, part)
            result = conn.execute(
                documents.update()
                .where(documents.c.id.in_(part) & documents.c.status.not_in(GONE))
                .values(status=DELETING, requested_at=None, request_token=None, updated_at=now(),
                        revision=documents.c.revision + 1)
                .returning(documents.c.id)
            )
            marked.extend(result.scalars())
    return sorted(marked)


def insert_for(conn: sa.Connection, table: sa.Table):  # noqa: ANN201
    """INSERT with ON CONFLICT support for the connection's dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def lock_document(conn: sa.Connection, doc_id: str) -> sa.Row | None:
    """The document row, locked until the transaction ends: the per-document guard that orders
    registrations, switches and purges. SQLite has no row locks; a no-op write takes its
    database write lock instead."""
    if conn.dialect.name == "sqlite":
        conn.execute(documents.update().where(documents.c.id == doc_id).values(revision=documents.c.revision))
        return conn.execute(sa.select(documents).where(documents.c.id == doc_id)).one_or_none()
    return conn.execute(sa.select(documents).where(documents.c.id == doc_id).with_for_update()).one_or_none()


def lock_documents(conn: sa.Connection, doc_ids: Sequence[str]) -> dict[str, sa.Row]:
    """Several rows, locked in id order (the order every multi-row locker uses: no deadlocks),
    slice by slice: sorted slices keep that one global order."""
    rows: dict[str, sa.Row] = {}
    for ids in batched(sorted(doc_ids)):
        if conn.dialect.name == "sqlite":
            conn.execute(documents.update().where(documents.c.id.in_(ids)).values(revision=documents.c.revision))
            query = sa.select(documents).where(documents.c.id.in_(ids))
        else:
            query = sa.select(documents).where(documents.c.id.in_(ids)).order_by(documents.c.id).with_for_update()
        rows.update((r.id, r) for r in conn.execute(query))
    return rows


def get_documents(engine: Engine, ids: Sequence[str]) -> dict[str, sa.Row]:
    out: dict[str, sa.Row] = {}
    with engine.connect() as conn:
        for part in batched(ids):
            out.update((r.id, r) for r in conn.execute(sa.select(documents).where(documents.c.id.in_(part))))
    return out


def save_versions(engine: Engine, items: Sequence[tuple[str, str, ParsedDocument]]) -> set[str]:
    """Store extracted text for each (document, version) in one transaction; returns the
    documents saved (the others have moved on to another version).

    An upsert, never delete-and-insert: the row may already carry the chunks (and through them
    the points) being served for this version, and a cascade would pull them out from under it."""
    if not items:
        return set()
    ts = now()
    with engine.begin() as conn:
        rows = lock_documents(conn, [doc_id for doc_id, _, _ in items])
        live = [(d, v, p) for d, v, p in items if _is_live_at(rows.get(d), v)]
        if not live:
            return set()
        values = [
            dict(
                document_id=d, version=v, created_at=ts, parser=p.parser,
                text="\n\n".join(s.text for s in p.sections), info=dict(p.info),
                sections=[{"text": s.text, "page": s.page, "heading": s.heading} for s in p.sections],
            )
            for d, v, p in live
        ]
        insert = insert_for(conn, document_versions)
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["document_id", "version"],
                set_={c: insert.excluded[c] for c in ("parser", "text", "sections", "info")},
            ),
            values,
        )
        conn.execute(
            documents.update().where(documents.c.id == sa.bindparam("b_doc")).values(title=sa.bindparam("b_title"), **_pending_again(ts)),
            [{"b_doc": d, "b_title": p.title} for d, _, p in live],
        )
        return {d for d, _, _ in live}


def _pending_again(ts: dt.datetime) -> dict:
    # Pending again if it had failed or is being rebuilt for a new configuration: the next
    # steps work on pending documents only. One taken up by a run the sensor did not hand it
    # to (a backfill) is stamped requested: in hand now, so the sensor must not hand it out.
    # A pending document keeps its "waiting: ..." reason until it is indexed: during an
    # outage each new run parses before it fails again, and status must not blink empty.
    return dict(
        status=PENDING, updated_at=ts,
        error=sa.case((documents.c.status == PENDING, documents.c.error), else_=None),
        requested_at=sa.case((documents.c.status == PENDING, documents.c.requested_at), else_=ts),
    )


def reopen(engine: Engine, versions: Mapping[str, str]) -> set[str]:
    """Documents indexed at their current version ({id: version}) are rebuilt for a new
    configuration from the text already stored for that version: pending again, unparsed.
    Returns the documents reopened (the others moved on to another version)."""
    if not versions:
        return set()
    with engine.begin() as conn:
        rows = lock_documents(conn, list(versions))
        live = [d for d, v in versions.items() if _is_live_at(rows.get(d), v)]
        for part in batched(live):
            conn.execute(documents.update().where(documents.c.id.in_(part)).values(**_pending_again(now())))
        return set(live)


def _is_live_at(row: sa.Row | None, version: str) -> bool:
    return row is not None and row.version == version and row.status not in GONE


def load_sections(engine: Engine, pairs: Sequence[tuple[str, str]]) -> dict[str, tuple[list[dict], str]]:
    """{document id: (sections, parser)} of these (document, version) pairs, in one query."""
    out: dict[str, tuple[list[dict], str]] = {}
    with engine.connect() as conn:
        for part in batched(pairs):
            query = sa.select(
                document_versions.c.document_id, document_versions.c.sections, document_versions.c.parser
            ).where(sa.tuple_(document_versions.c.document_id, document_versions.c.version).in_(part))
            out.update((r.document_id, (r.sections, r.parser)) for r in conn.execute(query))
    return out


@dataclass(frozen=True)
class Layout:
    """Where a version's sections start in its extracted text (the sections joined by a blank
    line, as stored), and what its parser declared about it."""

    section_starts: list[int]
    info: dict[str, str]
    sections: list[str]
    parser: str = ""

    @property
    def record_metadata(self) -> dict[str, str]:
        """A SQL row's declared metadata columns (`parsing/rows.py` keeps them in its info)."""
        if self.parser != "record":
            return {}
        return {k: v for k, v in self.info.items() if k != "encoding"}


def load_layouts(db: Engine | sa.Connection, pairs: Sequence[tuple[str, str]]) -> dict[str, Layout]:
    """{document id: Layout} of these (document, version) pairs, in one query per slice; on
    the caller's connection when it holds one (the write step, inside its locked transaction)."""
    out: dict[str, Layout] = {}
    columns = (document_versions.c.document_id, document_versions.c.sections, document_versions.c.parser,
               document_versions.c.info)
    with (db.connect() if isinstance(db, Engine) else contextlib.nullcontext(db)) as conn:
        for part in batched(pairs):
            query = sa.select(*columns).where(
                sa.tuple_(document_versions.c.document_id, document_versions.c.version).in_(part)
            )
            for doc_id, sections, parser, info in conn.execute(query):
                starts, at = [], 0
                for section in sections:
                    starts.append(at)
                    at += len(section["text"]) + 2  # the "\n\n" between sections in document_versions.text
                out[doc_id] = Layout(
                    starts, {str(k): str(v) for k, v in (info or {}).items()}, [section["text"] for section in sections],
                    parser or "",
                )
    return out


def chunk_spans(
    engine: Engine, windows: Sequence[tuple[str, str, str, int, int]],
) -> dict[tuple[str, str, str], list[tuple[int, int, int, int]]]:
    """{(document, version, chunker): [(chunk index, section, char start, char end), ...]} of
    the chunks in each window (document, version, chunker, first index, last index), in index
    order: one query per slice of windows, whatever the number of hits a search wants context for."""
    out: dict[tuple[str, str, str], list[tuple[int, int, int, int]]] = {}
    columns = (chunks.c.document_id, chunks.c.version, chunks.c.chunker, chunks.c.chunk_index, chunks.c.section,
               chunks.c.char_start, chunks.c.char_end)
    with engine.connect() as conn:
        for part in batched(windows, 500):  # five parameters each: far inside any driver's limit
            query = sa.select(*columns).where(sa.or_(*(
                (chunks.c.document_id == doc) & (chunks.c.version == version) & (chunks.c.chunker == chunker)
                & chunks.c.chunk_index.between(first, last)
                for doc, version, chunker, first, last in part
            ))).order_by(chunks.c.document_id, chunks.c.version, chunks.c.chunker, chunks.c.chunk_index)
            for doc, version, chunker, *span in conn.execute(query):
                out.setdefault((doc, version, chunker), []).append(tuple(span))
    return out


def record_failure(engine: Engine, doc_id: str, version: str, reason: str) -> bool:
    with engine.begin() as conn:
        result = conn.execute(
            documents.update()
            .where((documents.c.id == doc_id) & (documents.c.version == version) & documents.c.status.not_in(GONE))
            .values(status=FAILED, error=reason[:2000], updated_at=now())
        )
        return result.rowcount == 1


def resolve_version(engine: Engine, doc_id: str, *, listed: str, version: str, config: str) -> str | None:
    """The run read the upload registered as `listed` (conditionally on its change token) and
    hashed it: record the hash as its version. Compare-and-set on `listed`: None if the
    document moved on meanwhile (a newer upload registered, or deleted), else its status now.
    Bytes already indexed with `config` (re-uploaded identical, under another ETag) are indexed
    again at once: there is nothing to rebuild."""
    same = (documents.c.indexed_version == version) & (documents.c.indexed_config == config)
    with engine.begin() as conn:
        row = conn.execute(
            documents.update()
            .where((documents.c.id == doc_id) & (documents.c.version == listed) & documents.c.status.not_in(GONE))
            .values(
                version=version,
                status=sa.case((same, INDEXED), else_=documents.c.status),
                error=sa.case((same, None), else_=documents.c.error),
                requested_at=sa.case((same, None), else_=documents.c.requested_at),
                request_token=sa.case((same, None), else_=documents.c.request_token),
                updated_at=now(),
            )
            .returning(documents.c.status)
        ).first()
        return None if row is None else row.status


def replace_chunk_sets(engine: Engine, versions: Mapping[str, str], frame: pd.DataFrame, chunker: str) -> set[str]:
    """Write the chunk sets ({document id: version}, rows in `frame`) for `chunker` in one
    transaction; returns the documents written (the others moved on to another version). A retry
    replaces a partial earlier try with the same ids. Other chunk sets stay: search keeps serving
    them until the new set is indexed."""
    with engine.begin() as conn:
        rows = lock_documents(conn, list(versions))
        live = {d: v for d, v in versions.items() if _is_live_at(rows.get(d), v)}
        if not live:
            return set()
        for part in batched(live.items()):
            conn.execute(chunks.delete().where(
                sa.tuple_(chunks.c.document_id, chunks.c.version).in_(part) & (chunks.c.chunker == chunker)
            ))
        part = frame[frame["document_id"].isin(live)]
        records = part.assign(chunker=chunker, page=part["page"].astype(object).where(part["page"].notna(), None)).to_dict("records")
        if records:
            conn.execute(chunks.insert(), records)
        return set(live)


CHUNK_FIELDS = [
    "chunk_id", "document_id", "version", "chunk_index", "text", "token_count", "page", "heading", "chunker",
    "section", "char_start", "char_end",
]


def load_chunks(engine: Engine, pairs: Iterable[tuple[str, str]], chunker: str) -> pd.DataFrame:
    """The `chunker` chunk sets of these (document, version) pairs, in document order."""
    import pandas as pd

    pairs = list(pairs)
    if not pairs:
        return pd.DataFrame(columns=CHUNK_FIELDS)
    frames = []
    with engine.connect() as conn:
        for part in batched(pairs):
            cond = sa.tuple_(chunks.c.document_id, chunks.c.version).in_(part)
            query = (
                sa.select(*[chunks.c[c] for c in CHUNK_FIELDS])
                .where(cond & (chunks.c.chunker == chunker))
                .order_by(chunks.c.document_id, chunks.c.chunk_index)
            )
            frames.append(pd.DataFrame(conn.execute(query).fetchall(), columns=CHUNK_FIELDS))
    return pd.concat(frames, ignore_index=True)


def set_indexed(conn: sa.Connection, switched: Mapping[str, tuple[str, int]], chunker: str, config: str) -> None:
    """Switch documents ({id: (version, chunk count)}) to their chunk set for `chunker`, in one
    statement. Call with the rows locked and their revisions checked."""
    if not switched:
        return
    ts = now()
    conn.execute(
        documents.update().where(documents.c.id == sa.bindparam("b_doc")).values(
            status=INDEXED, indexed_version=sa.bindparam("b_version"), indexed_chunker=chunker, indexed_config=config,
            chunk_count=sa.bindparam("b_chunks"), error=None, indexed_at=ts, updated_at=ts, overdue_reported_at=None,
            attempts=0, requested_at=None, request_token=None,
        ),
        [{"b_doc": d, "b_version": v, "b_chunks": n} for d, (v, n) in switched.items()],
    )


def replaced_chunk_ids(conn: sa.Connection, doc_ids: Iterable[str]) -> list[str]:
    """The chunk (= point) ids of every chunk set of these documents but the one each serves
    (its indexed version and chunker). Every point ever written had its chunk row first, and
    rows go only with or after their points, so these ids are all the points that retiring the
    other sets must delete. Call with the rows locked."""
    out: list[str] = []
    for part in batched(doc_ids):
        # A join on the document rows, not a NOT IN over (document, version, chunker) tuples:
        # PostgreSQL planned and tested such a list for every row (13 s over 66,000 ids).
        query = (
            sa.select(chunks.c.chunk_id)
            .select_from(chunks.join(documents, documents.c.id == chunks.c.document_id))
            .where(
                chunks.c.document_id.in_(part)
                & ~((chunks.c.version == documents.c.indexed_version) & (chunks.c.chunker == documents.c.indexed_chunker))
            )
        )
        out.extend(r[0] for r in conn.execute(query))
    return out


def drop_replaced(conn: sa.Connection, doc_ids: Iterable[str]) -> None:
    """Every chunk set of these documents but the one each serves, in two statements per slice.
    Call with the rows locked."""
    for part in batched(doc_ids):
        served = sa.select(documents.c.indexed_version).where(documents.c.id == document_versions.c.document_id)
        conn.execute(
            document_versions.delete().where(
                document_versions.c.document_id.in_(part) & (document_versions.c.version != served.scalar_subquery())
            )
        )
        # The other versions' chunks went with their version rows (ON DELETE CASCADE); what is
        # left is the served version's chunk sets of other chunkers.
        chunker = sa.select(documents.c.indexed_chunker).where(documents.c.id == chunks.c.document_id)
        conn.execute(
            chunks.delete().where(chunks.c.document_id.in_(part) & (chunks.c.chunker != chunker.scalar_subquery()))
        )


def drop_unserved_chunk_sets(engine: Engine) -> int:
    """Chunk sets left behind by a retirement that did not complete, on documents with nothing
    in flight (indexed at their current version). Returns the rows removed."""
    settled = sa.select(documents.c.id).where((documents.c.status == INDEXED) & (documents.c.indexed_version == documents.c.version))
    with engine.begin() as conn:
        versions = conn.execute(
            document_versions.delete().where(
                document_versions.c.document_id.in_(settled)
                & (document_versions.c.version != sa.select(documents.c.indexed_version)
                   .where(documents.c.id == document_versions.c.document_id).scalar_subquery())
            )
        ).rowcount
        sets = conn.execute(
            chunks.delete().where(
                chunks.c.document_id.in_(settled)
                & (chunks.c.chunker != sa.select(documents.c.indexed_chunker)
                   .where(documents.c.id == chunks.c.document_id).scalar_subquery())
            )
        ).rowcount
    return versions + sets


def set_purged(conn: sa.Connection, doc_id: str) -> None:
    """The deleted document's rows are gone; its tombstone stays. Call with the row locked."""
    conn.execute(document_versions.delete().where(document_versions.c.document_id == doc_id))
    conn.execute(
        documents.update().where(documents.c.id == doc_id).values(
            status=DELETED, indexed_version=None, indexed_chunker=None, indexed_config=None,
            chunk_count=None, updated_at=now(),
        )
    )


def documents_in(engine: Engine, *statuses: str) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.select(documents.c.id).where(documents.c.status.in_(statuses)))]


def partition_keys_in(engine: Engine, *statuses: str) -> set[str]:
    """The partition keys of documents in `statuses`, and their ids (the keys of an index built
    before readable keys, until the sensor has moved them)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(documents.c.partition_key, documents.c.id).where(documents.c.status.in_(statuses)))
        return {name for row in rows for name in row}


def request_again(engine: Engine, doc_ids: Sequence[str] | None = None, status: str | None = None) -> int:
    """Make documents pending again, with a fresh attempt budget: those named, or all in
    `status` (`rag-pipeline retry` re-drives the failed ones; the audit's repair, the
    inconsistent ones)."""
    base = documents.c.status.not_in(GONE)
    if status is not None:
        base &= documents.c.status == status
    ts = now()
    values = dict(
        status=PENDING, requested_at=None, request_token=None, attempts=0, error=None, updated_at=ts,
        registered_at=ts, overdue_reported_at=None,
    )
    with engine.begin() as conn:
        if doc_ids is None:
            return conn.execute(documents.update().where(base).values(**values)).rowcount
        return sum(
            conn.execute(documents.update().where(base & documents.c.id.in_(part)).values(**values)).rowcount
            for part in batched(doc_ids)
        )


def note_wait(engine: Engine, doc_ids: Sequence[str], reason: str, refund: bool) -> None:
    """A run holding these documents failed. The reason shows in `status` while they wait.
    With `refund`, the failure was the infrastructure's (endpoint, database or vector store
    unavailable), so it does not count against the documents' attempt budget."""
    values: dict = {"error": f"waiting: {reason}"[:2000], "updated_at": now()}
    if refund:
        values["attempts"] = sa.case((documents.c.attempts > 0, documents.c.attempts - 1), else_=0)
    with engine.begin() as conn:
        for part in batched(doc_ids):
            conn.execute(
                documents.update().where(documents.c.id.in_(part) & (documents.c.status == PENDING)).values(**values)
            )


@dataclass(frozen=True)
class Handoff:
    """The documents (pending, or deleting for a purge) handed to runs under one request token:
    when that was, and how many are still waiting."""
    token: str
    status: str
    requested_at: dt.datetime
    documents: int


def handoffs(engine: Engine, requested_before: dt.datetime) -> list[Handoff]:
    """Hand-offs still outstanding (their documents neither done nor changed since) that were
    made before `requested_before`: one row per token, however many documents it holds."""
    query = (
        sa.select(documents.c.request_token, documents.c.status, sa.func.min(documents.c.requested_at), sa.func.count())
        .where(
            documents.c.status.in_([PENDING, DELETING]) & documents.c.request_token.is_not(None)
            & (documents.c.requested_at < requested_before)
        )
        .group_by(documents.c.request_token, documents.c.status)
    )
    with engine.connect() as conn:
        return [Handoff(t, st, _aware(at), n) for t, st, at, n in conn.execute(query)]


def release(engine: Engine, tokens: Sequence[str]) -> int:
    """The runs of these hand-offs are over (or never appeared) and left documents behind: those
    documents are due for a hand-off again. Their spent attempts stay spent."""
    released = 0
    with engine.begin() as conn:
        for part in batched(tokens):
            released += conn.execute(
                documents.update()
                .where(documents.c.request_token.in_(part) & documents.c.status.in_([PENDING, DELETING]))
                .values(requested_at=None, request_token=None)
            ).rowcount
    return released


def due(
    engine: Engine, status: str, limit: int, legacy_before: dt.datetime | None = None, *, take_all: bool = False,
    attempts: tuple[int, int | None] = (0, None),
) -> list[sa.Row]:
    """Up to `limit` documents in `status` due for a hand-off (never handed out, or released),
    oldest registration first: (id, attempts, partition_key). Hand-offs without a token (made before tokens
    existed, or a backfill's own) are due once older than `legacy_before`. `take_all`: every
    document in `status`, handed out or not (`rag-pipeline run` is an explicit "now").
    `attempts`: only documents handed out at least, and fewer than, so many times."""
    if limit <= 0:
        return []
    cond = documents.c.status == status
    low, high = attempts
    if low:
        cond &= documents.c.attempts >= low
    if high is not None:
        cond &= documents.c.attempts < high
    if not take_all:
        untokened = documents.c.request_token.is_(None) & (documents.c.requested_at < legacy_before) \
            if legacy_before is not None else sa.false()
        cond &= documents.c.requested_at.is_(None) | untokened
    query = (
        sa.select(documents.c.id, documents.c.attempts, documents.c.partition_key)
        .where(cond)
        .order_by(documents.c.registered_at, documents.c.id)
        .limit(limit)
    )
    with engine.connect() as conn:
        return list(conn.execute(query))


def park(engine: Engine, doc_ids: Sequence[str], max_attempts: int) -> list[sa.Row]:
    """Pending documents already handed to `max_attempts` runs that never finished them become
    failed (the dead letter), keeping the last error. Returns (id, error) of those parked (a
    document that changed meanwhile has a fresh budget, and is left alone)."""
    cond = (documents.c.status == PENDING) & (documents.c.attempts >= max_attempts)
    parked: list[sa.Row] = []
    with engine.begin() as conn:
        for part in batched(sorted(doc_ids)):
            lock_documents(conn, part)  # id order, as runs lock documents: no deadlock with one
            parked += conn.execute(
                documents.update()
                .where(documents.c.id.in_(part) & cond)
                .values(
                    status=FAILED, updated_at=now(),
                    error=sa.literal(f"gave up after {max_attempts} runs")
                    + sa.case((documents.c.error.is_not(None), sa.literal("; last error: ") + documents.c.error), else_=""),
                )
                .returning(documents.c.id, documents.c.error)
            ).all()
    return parked


def overdue(engine: Engine, older_than: dt.datetime, limit: int) -> list[sa.Row]:
    """Up to `limit` pending documents registered before `older_than` whose lateness was not yet
    reported; marked reported in the same transaction (the rest follow on later calls)."""
    cond = (
        (documents.c.status == PENDING) & (documents.c.registered_at < older_than)
        & documents.c.overdue_reported_at.is_(None)
    )
    query = (
        sa.select(documents.c.id, documents.c.registered_at, documents.c.error)
        .where(cond).order_by(documents.c.registered_at, documents.c.id).limit(limit)
        # A run writing a document holds its row through the point upsert (34 s once, under
        # load, with embedded Qdrant): its lateness is reported on a later tick instead of the
        # sensor waiting. SQLite has no row locks, and the clause is left out there.
        .with_for_update(skip_locked=True)
    )
    with engine.begin() as conn:
        rows = list(conn.execute(query))
        ts = now()
        for part in batched([r.id for r in rows]):
            conn.execute(documents.update().where(documents.c.id.in_(part)).values(overdue_reported_at=ts))
        return rows


def _aware(ts: dt.datetime) -> dt.datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=dt.timezone.utc)  # SQLite returns naive UTC


# Dagster's SQLite storage has failed near 36,000 dynamic partitions (dagster #16260), one per
# document here: said with room to spare, on every surface an operator reads.
SQLITE_DOCUMENT_LIMIT = 25_000


def sqlite_scale_problem(engine: Engine) -> str | None:
    """One line when an index on SQLite (an older version's data folder) nears the size its
    storage fails at; None on PostgreSQL or below SQLITE_DOCUMENT_LIMIT."""
    if engine.dialect.name != "sqlite":
        return None
    with engine.connect() as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(documents).where(documents.c.status != DELETED)).scalar_one()
    if n < SQLITE_DOCUMENT_LIMIT:
        return None
    return (
        f"{n:,} documents on SQLite (an older version's data folder, or DATABASE_URL=sqlite:...): Dagster's SQLite "
        "storage has failed near 36,000 document partitions (dagster #16260); index into a new RAG_DATA_DIR "
        "(its default is PostgreSQL) or set DATABASE_URL to a PostgreSQL server before the corpus grows further"
    )


def list_documents(engine: Engine, knowledge_base: str | None = None) -> list[sa.Row]:
    query = sa.select(
        documents.c.id, documents.c.knowledge_base, documents.c.path, documents.c.status,
        documents.c.version, documents.c.indexed_version, documents.c.error, documents.c.chunk_count,
        documents.c.attempts, documents.c.updated_at, documents.c.indexed_at, documents.c.partition_key,
    ).where(documents.c.status != DELETED).order_by(documents.c.knowledge_base, documents.c.path)
    if knowledge_base:
        query = query.where(documents.c.knowledge_base == knowledge_base)
    with engine.connect() as conn:
        return list(conn.execute(query))


def indexed_chunk_ids(engine: Engine, doc_ids: Sequence[str] | None = None, embedding: str | None = None) -> dict[str, set[str]]:
    """document id -> ids of the chunks being served for it (what Qdrant must hold), of the
    documents indexed with `embedding` if given. A document whose newer version is pending or
    failed is still served at its indexed version."""
    query = (
        sa.select(chunks.c.document_id, chunks.c.chunk_id)
        .select_from(chunks.join(documents, documents.c.id == chunks.c.document_id))
        .where(
            documents.c.status.not_in(GONE)
            & (chunks.c.version == documents.c.indexed_version)
            & (chunks.c.chunker == documents.c.indexed_chunker)
        )
    )
    if embedding is not None:
        query = query.where(documents.c.indexed_config.endswith(f"|{embedding}", autoescape=True))
    queries = [query] if doc_ids is None else [query.where(chunks.c.document_id.in_(p)) for p in batched(doc_ids)]
    out: dict[str, set[str]] = {}
    with engine.connect() as conn:
        for q in queries:
            for doc, cid in conn.execute(q):
                out.setdefault(doc, set()).add(cid)
    return out
