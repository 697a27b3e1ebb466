"""Every statement that takes a list of ids or pairs stays under the database's parameter limit.

PostgreSQL refuses more than 65,535 bound parameters in one statement and SQLite more than
32,766. A backlog of 70,000 overdue documents once failed every sensor tick on one
`UPDATE ... WHERE id IN (<every id>)`. Each entry point is driven here with more ids than the
limit allows, on both databases."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from rag_pipeline.core import audit, detection, embedding_cache, records
from rag_pipeline.core.batching import batched
from rag_pipeline.core.db import documents, open_engine
from rag_pipeline.core.identity import document_id
from rag_pipeline.core.parsing import ParsedDocument
from rag_pipeline.core.parsing.base import Section

# More than each database's limit on bound parameters in one statement.
OVER_LIMIT = {"postgresql": 65_536 + 1_000, "sqlite": 32_767 + 1_000}


# Real documents, spread over several slices of the id list; the rest of each list names
# documents that do not exist (cheap to send, and the statement's size is what is tested).
REAL = 1_200


@pytest.fixture(params=["postgresql", "sqlite"])
def many(request, tmp_path: Path):  # noqa: ANN201
    """An engine with REAL registered documents, and lists naming more documents than one
    statement may: (engine, every id sorted, the real (id, version) pairs)."""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'rag.db'}"
    engine = open_engine(url)
    uploads = [("kb", f"f{i:06d}.txt", f"{i:064x}", 10, 1) for i in range(REAL)]
    assert len(records.register_new_uploads(engine, uploads)) == REAL
    pairs = [(document_id(kb, path), version) for kb, path, version, _, _ in uploads]
    absent = [str(uuid.uuid4()) for _ in range(OVER_LIMIT[request.param])]
    return engine, sorted([d for d, _ in pairs] + absent), pairs, [(d, "0" * 64) for d in absent]


def test_batched_slices_in_order() -> None:
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched([], 3)) == []
    with pytest.raises(ValueError):
        list(batched([1], 0))


# Slow tier: some twenty statements over 66,000 ids each, on both databases.
@pytest.mark.slow
def test_every_list_taking_statement_accepts_more_ids_than_the_limit(many) -> None:
    engine, ids, real, absent = many
    n = len(real)
    real_ids = {d for d, _ in real}
    pairs = real + absent

    assert records.get_documents(engine, ids).keys() == real_ids
    with engine.begin() as conn:
        assert records.lock_documents(conn, ids).keys() == real_ids

    detection.mark_requested(engine, ids, "sensor-big")
    assert [(h.token, h.documents) for h in records.handoffs(engine, records.now() + dt.timedelta(seconds=1))] == [
        ("sensor-big", n)
    ]
    records.note_wait(engine, ids, "endpoint down", refund=True)
    assert records.release(engine, ["sensor-big", *ids]) == n  # tokens, too, are a list
    due = records.due(engine, records.PENDING, limit=len(ids))
    assert len(due) == n and {r.attempts for r in due} == {0}

    with engine.begin() as conn:  # one attempt spent by every document
        conn.execute(documents.update().values(attempts=1, registered_at=records.now() - dt.timedelta(hours=1)))
    assert len(records.overdue(engine, records.now(), limit=len(ids))) == n
    assert records.overdue(engine, records.now(), limit=len(ids)) == []  # reported once
    assert len(records.park(engine, ids, max_attempts=1)) == n
    assert records.request_again(engine, ids) == n

    versions = [(d, v, ParsedDocument([Section("t")], "text")) for d, v in pairs]
    assert records.save_versions(engine, versions) == real_ids
    assert records.load_sections(engine, pairs).keys() == real_ids
    frame = pd.DataFrame(
        [{"chunk_id": str(uuid.uuid5(uuid.NAMESPACE_URL, d)), "document_id": d, "version": v, "chunk_index": 0,
          "text": "t", "token_count": 1, "char_start": 0, "char_end": 1, "section": 0, "page": None, "heading": None}
         for d, v in real]
    )
    assert records.replace_chunk_sets(engine, dict(pairs), frame, "chunker-a") == real_ids
    assert len(records.load_chunks(engine, pairs, "chunker-a")) == n
    with engine.begin() as conn:
        records.set_indexed(conn, {d: (v, 1) for d, v in real}, "chunker-a", "cfg")
        assert records.replaced_chunk_ids(conn, ids) == []
    assert records.indexed_chunk_ids(engine, ids).keys() == real_ids
    with engine.begin() as conn:  # served by another chunker now: every chunker-a chunk is replaced
        records.set_indexed(conn, {d: (v, 1) for d, v in real}, "chunker-b", "cfg")
        assert len(records.replaced_chunk_ids(conn, ids)) == n
        records.drop_replaced(conn, ids)
    assert records.load_chunks(engine, pairs, "chunker-a").empty and records.load_sections(engine, pairs).keys() == real_ids
    assert records.reopen(engine, dict(pairs)) == real_ids
    assert audit._states(engine, ids).keys() == real_ids
    assert embedding_cache.lookup(engine, "hash:x:4", [f"{i:064x}" for i in range(len(ids))]) == {}

    assert len(records.mark_deleting(engine, ids)) == n
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(documents.c.status == records.DELETING)).scalar() == n
