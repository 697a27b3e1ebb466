"""Index generations: one Qdrant collection per embedding configuration, behind one alias.

Vectors from two models must never answer one query, so a new embedding configuration builds
its own collection while search keeps reading the alias, which still names the old one. When no
document is served under another configuration any more, the alias is moved in one Qdrant call
(atomic for readers) and the collections it replaced are dropped.

A chunker change alone stays in the same collection: each document switches to its new chunk
set in its own locked write, and both sets embed with the same model.

Lock order: a run's write locks its document rows, then its generation row FOR SHARE; a
promotion locks the generation rows FOR UPDATE and reads documents without locking them. So a
promotion waits for writes into a collection it is about to retire, and a write that comes
after it finds its generation retired and writes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from rag_pipeline.core import records
from rag_pipeline.core.db import documents, index_generations
from rag_pipeline.core.sparse import KEYWORD_VERSION

if TYPE_CHECKING:  # imported where used (see records.py)
    from qdrant_client import QdrantClient

BUILDING, SERVING, RETIRED = "building", "serving", "retired"


class GenerationRetired(Exception):
    """A run is writing with an embedding configuration that has been replaced since."""


@dataclass(frozen=True)
class EmbeddingSpec:
    """An embedding configuration without its secret: enough to embed a query the way a
    collection was built."""

    provider: str
    model: str
    dimensions: int | None
    base_url: str | None = None
    # Keyword (sparse BM25) vectors beside the dense ones: part of the index's configuration,
    # so turning them on or changing their scheme builds a new generation, like a new model.
    keyword: bool = False

    @property
    def dense_fingerprint(self) -> str:
        """What the dense vectors depend on: the embedding cache's key (keyword vectors are
        computed from the text at write time, so a new keyword scheme re-embeds nothing)."""
        return f"{self.provider}:{self.model}:{self.dimensions}"

    @property
    def fingerprint(self) -> str:
        return self.dense_fingerprint + (KEYWORD_SUFFIX if self.keyword else "")


KEYWORD_SUFFIX = f"+{KEYWORD_VERSION}"


def dense_part(fingerprint: str) -> str:
    """An index configuration's fingerprint without its keyword scheme."""
    return fingerprint.removesuffix(KEYWORD_SUFFIX)


def collection_name(alias: str, embedding: str) -> str:
    return f"{alias}__{hashlib.sha256(embedding.encode()).hexdigest()[:12]}"


def _public_url(url: str | None) -> str | None:
    # A URL can carry credentials (user:password@host); they are not ours to store.
    if not url:
        return None
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else ""))) if parts.hostname else url


@dataclass(frozen=True)
class Generation:
    alias: str
    embedding: str
    collection: str
    spec: EmbeddingSpec
    state: str


def _generation(row: sa.Row) -> Generation:
    return Generation(
        row.alias, row.embedding, row.collection,
        EmbeddingSpec(row.provider, row.model, row.dimensions, row.base_url, row.embedding.endswith(KEYWORD_SUFFIX)),
        row.state,
    )


def register(engine: Engine, alias: str, spec: EmbeddingSpec, started_at: dt.datetime | None = None) -> Generation:
    """The generation for `spec`, created (building) on first use.

    A retired generation is built again (someone went back to that configuration), unless it
    was retired after `started_at`: then the caller is a run that started with the old
    configuration, and it must write nothing."""
    key = (index_generations.c.alias == alias) & (index_generations.c.embedding == spec.fingerprint)
    with engine.begin() as conn:
        conn.execute(
            records.insert_for(conn, index_generations).values(
                alias=alias, embedding=spec.fingerprint, collection=collection_name(alias, spec.fingerprint),
                provider=spec.provider, model=spec.model, dimensions=spec.dimensions,
                base_url=_public_url(spec.base_url), state=BUILDING, created_at=records.now(),
            ).on_conflict_do_nothing()
        )
        query = sa.select(index_generations).where(key)
        row = conn.execute(query if conn.dialect.name == "sqlite" else query.with_for_update()).one()
        if row.state == RETIRED:
            if started_at is not None and records.seconds_since(row.retired_at) <= records.seconds_since(started_at):
                raise GenerationRetired(
                    f"the index built with {spec.fingerprint} was replaced while this run was starting; "
                    "it writes nothing (the documents are re-indexed with the current configuration)"
                )
            conn.execute(index_generations.update().where(key).values(
                state=BUILDING, created_at=records.now(), switched_at=None, retired_at=None,
                # The legacy collection's name is the alias's now.
                collection=collection_name(alias, spec.fingerprint),
            ))
            row = conn.execute(sa.select(index_generations).where(key)).one()
    return _generation(row)


def for_writing(
    engine: Engine, client: QdrantClient, alias: str, spec: EmbeddingSpec, started_at: dt.datetime | None = None
) -> Generation:
    """The generation a writer with `spec` writes into (see `register`), after recording a
    pre-generation collection, if there is one, as what it replaces."""
    adopt_legacy(engine, client, alias, spec)
    return register(engine, alias, spec, started_at)


def hold_for_write(conn: sa.Connection, collection: str) -> None:
    """Inside a write's transaction: the collection must not be retired (a promotion waits for
    us). Collections without a generation (scripts, tests) are not tracked."""
    query = sa.select(index_generations.c.state, index_generations.c.embedding).where(index_generations.c.collection == collection)
    if conn.dialect.name != "sqlite":
        query = query.with_for_update(read=True)
    row = conn.execute(query).one_or_none()
    if row is not None and row.state == RETIRED:
        raise GenerationRetired(
            f"the index built with {row.embedding} has been replaced by a newer embedding configuration; "
            "this run was started with the old one and writes nothing"
        )


def by_collection(engine: Engine, collection: str) -> Generation | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(index_generations).where(index_generations.c.collection == collection)).one_or_none()
    return _generation(row) if row is not None else None


def live_collections(engine: Engine, alias: str) -> list[str]:
    """Every collection search reads now or may read after a switch (serving and building)."""
    with engine.connect() as conn:
        return list(conn.execute(
            sa.select(index_generations.c.collection)
            .where((index_generations.c.alias == alias) & (index_generations.c.state != RETIRED))
            .order_by(index_generations.c.collection)
        ).scalars())


def _real_collections(client: QdrantClient) -> set[str]:
    # Qdrant resolves an alias wherever a collection name is accepted (collection_exists
    # included): only this listing tells a collection from an alias.
    return {c.name for c in client.get_collections().collections}


def _served(client: QdrantClient, alias: str) -> tuple[str | None, str | None]:
    """(the collection the alias names, what search reads): the same, or for an index built
    before generations, no alias and the collection named like it."""
    aliased = aliased_collection(client, alias)
    return aliased, aliased or (alias if alias in _real_collections(client) else None)


def serving_collection(client: QdrantClient, alias: str) -> str | None:
    return _served(client, alias)[1]


def _spec_of(fingerprint: str, known: EmbeddingSpec | None) -> EmbeddingSpec:
    if known is not None and fingerprint == known.fingerprint:
        return known
    provider, _, rest = dense_part(fingerprint).partition(":")
    model, _, dims = rest.rpartition(":")  # model names may hold ':' (ollama's "name:tag")
    return EmbeddingSpec(provider, model, int(dims) if dims.isdigit() else None, keyword=fingerprint.endswith(KEYWORD_SUFFIX))


def adopt_legacy(engine: Engine, client: QdrantClient, alias: str, current: EmbeddingSpec | None = None) -> None:
    """An index built before generations keeps its points in a collection named like the
    alias. It is recorded as the serving generation of the configuration its documents were
    indexed with, so search and writes go on using it until a new configuration replaces it
    (the first switch drops it, then creates the alias)."""
    if _served(client, alias) != (None, alias):
        return
    with engine.begin() as conn:
        if conn.execute(sa.select(index_generations.c.alias).where(index_generations.c.collection == alias)).first():
            return
        configs = conn.execute(
            sa.select(documents.c.indexed_config, sa.func.count())
            .where(documents.c.indexed_config.is_not(None))
            .group_by(documents.c.indexed_config)
        ).all()
        counts: dict[str, int] = {}
        for config, n in configs:
            embedding = config.split("|", 1)[-1]
            counts[embedding] = counts.get(embedding, 0) + n
        if not counts and current is None:
            return  # nothing was ever indexed: nothing to serve or delete from it yet
        spec = _spec_of(max(counts, key=counts.get) if counts else current.fingerprint, current)
        ts = records.now()
        conn.execute(
            records.insert_for(conn, index_generations).values(
                alias=alias, embedding=spec.fingerprint, collection=alias, provider=spec.provider, model=spec.model,
                dimensions=spec.dimensions, base_url=_public_url(spec.base_url), state=SERVING, created_at=ts, switched_at=ts,
            ).on_conflict_do_nothing()
        )


def aliased_collection(client: QdrantClient, alias: str) -> str | None:
    """The collection the alias names now (what search reads), resolved explicitly."""
    for description in client.get_aliases().aliases:
        if description.alias_name == alias:
            return description.collection_name
    return None


def served_elsewhere(conn: sa.Connection, embedding: str) -> int:
    """Documents whose served vectors were made with another embedding configuration and that
    will be re-indexed (indexed or pending). A document whose newest version failed keeps its
    old vectors only until the switch: it is listed by `status --failed` and must not hold a
    corpus-wide switch forever."""
    return conn.execute(
        sa.select(sa.func.count()).select_from(documents).where(
            documents.c.status.in_([records.INDEXED, records.PENDING])
            & documents.c.indexed_version.is_not(None)
            & ~documents.c.indexed_config.endswith(f"|{embedding}", autoescape=True)
        )
    ).scalar_one()


@dataclass
class Promotion:
    serving: str  # the collection the alias names after the call
    switched: bool
    waiting_for: int  # documents still served by another configuration
    dropped: list[str]


def status(engine: Engine, client: QdrantClient, alias: str, embedding: str) -> Promotion:
    """What `promote_if_complete` would find, without switching anything."""
    with engine.connect() as conn:
        return Promotion(serving_collection(client, alias) or "", False, served_elsewhere(conn, embedding), [])


def promote_if_complete(engine: Engine, client: QdrantClient, alias: str, embedding: str) -> Promotion:
    """Point the alias at `embedding`'s collection once nothing is served by another
    configuration, retire the generations it replaces and drop their collections."""
    with engine.begin() as conn:
        query = sa.select(index_generations).where(index_generations.c.alias == alias).order_by(index_generations.c.embedding)
        if conn.dialect.name == "sqlite":
            # SQLite takes its write lock at the first write, not at a SELECT: take it first, so
            # no write into a collection can commit between our reads and the switch.
            conn.execute(index_generations.update().where(index_generations.c.alias == alias).values(state=index_generations.c.state))
        else:
            query = query.with_for_update()
        rows = {r.embedding: _generation(r) for r in conn.execute(query)}
        target = rows.get(embedding)
        if target is None or target.state == RETIRED:
            raise GenerationRetired(f"no live index generation for {embedding} behind {alias!r}")
        aliased, current = _served(client, alias)
        switch = not (target.state == SERVING and current == target.collection)
        if switch:
            waiting = served_elsewhere(conn, embedding)
            if waiting and current is not None:
                return Promotion(current, False, waiting, [])
            _switch(conn, client, alias, target, aliased, current, rows)
    # After the commit (and on later calls, should it have failed): a collection nobody reads.
    return Promotion(target.collection, switch, 0, drop_retired(engine, client, alias))


def _switch(
    conn: sa.Connection, client: QdrantClient, alias: str, target: Generation, aliased: str | None,
    current: str | None, rows: dict[str, Generation],
) -> None:
    from rag_pipeline.core.vectorstore import models_for

    qm = models_for(client)
    # One call, so readers see the old collection or the new one, never neither. Except once
    # after an upgrade: the pre-generation collection holds the alias's name and must go first.
    operations: list = []
    if aliased is not None:
        operations.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=alias)))
    elif current == alias:
        client.delete_collection(alias)
    operations.append(qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=target.collection, alias_name=alias)))
    client.update_collection_aliases(change_aliases_operations=operations)
    ts = records.now()
    replaced = [g.embedding for g in rows.values() if g.embedding != target.embedding and g.state != RETIRED]
    conn.execute(
        index_generations.update()
        .where((index_generations.c.alias == alias) & (index_generations.c.embedding == target.embedding))
        .values(state=SERVING, switched_at=ts)
    )
    if replaced:
        conn.execute(
            index_generations.update()
            .where((index_generations.c.alias == alias) & index_generations.c.embedding.in_(replaced))
            .values(state=RETIRED, retired_at=ts)
        )


def drop_retired(engine: Engine, client: QdrantClient, alias: str) -> list[str]:
    """Drop the collections of retired generations that still exist."""
    with engine.connect() as conn:
        names = list(conn.execute(
            sa.select(index_generations.c.collection)
            .where((index_generations.c.alias == alias) & (index_generations.c.state == RETIRED))
        ).scalars())
    existing = _real_collections(client)
    dropped = []
    for name in names:
        if name in existing and name != alias:
            client.delete_collection(name)
            dropped.append(name)
    return dropped
