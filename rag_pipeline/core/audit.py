"""Consistency between our chunk rows and Qdrant's points, and its repair.

A point is accounted for when it is one of the chunks being served for its document, or when
it belongs to the version a pending run is building (it will be switched to or cleaned up by
that run). Anything else is an orphan; a served chunk without its point is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from rag_pipeline.core import records
from rag_pipeline.core.batching import batched
from rag_pipeline.core.db import documents

if TYPE_CHECKING:  # imported where used (see records.py)
    from rag_pipeline.core.vectorstore import VectorStore


@dataclass
class AuditReport:
    documents_checked: int = 0
    points_checked: int = 0
    missing_points: dict[str, int] = field(default_factory=dict)  # document id -> count
    orphan_points: dict[str, list[str]] = field(default_factory=dict)  # document id -> point ids

    @property
    def ok(self) -> bool:
        return not self.missing_points and not self.orphan_points

    def problems(self) -> dict[str, str]:
        """document id -> what is wrong with it, in words."""
        out: dict[str, str] = {}
        for doc, n in self.missing_points.items():
            out[doc] = f"{n} served chunk(s) have no point in Qdrant"
        for doc, ids in self.orphan_points.items():
            text = f"{len(ids)} point(s) match no served chunk"
            out[doc] = f"{out[doc]}; {text}" if doc in out else text
        return out


def _states(engine: Engine, doc_ids: Sequence[str] | None) -> dict[str, tuple[str, str]]:
    query = sa.select(documents.c.id, documents.c.status, documents.c.version)
    queries = [query] if doc_ids is None else [query.where(documents.c.id.in_(part)) for part in batched(doc_ids)]
    with engine.connect() as conn:
        return {r.id: (r.status, r.version) for q in queries for r in conn.execute(q)}


def _classify(
    engine: Engine, doc_ids: Sequence[str] | None, points: Mapping[str, Mapping[str, str]], embedding: str | None = None,
) -> AuditReport:
    states = _states(engine, doc_ids)
    served = records.indexed_chunk_ids(engine, doc_ids, embedding)
    report = AuditReport(documents_checked=len(served), points_checked=sum(len(p) for p in points.values()))
    for doc, doc_points in points.items():
        status, version = states.get(doc, (None, None))
        expected = served.get(doc, set())
        orphans = [
            pid for pid, point_version in doc_points.items()
            if pid not in expected and not (status == records.PENDING and point_version == version)
        ]
        if orphans:
            report.orphan_points[doc] = orphans
    for doc, expected in served.items():
        missing = len(expected - set(points.get(doc, {})))
        if missing:
            report.missing_points[doc] = missing
    return report


def audit_documents(engine: Engine, store: VectorStore, doc_ids: Sequence[str]) -> AuditReport:
    """The audit for a few documents (a run's): one scroll over their points."""
    return _classify(engine, doc_ids, store.points_of(doc_ids))


def audit_all(engine: Engine, store: VectorStore, embedding: str | None = None) -> AuditReport:
    """The whole corpus: every point in the collection, every served chunk (of the documents
    indexed with `embedding`, the collection's configuration, when given: during a
    re-embedding the others are served from the previous collection)."""
    points: dict[str, dict[str, str]] = {}
    for point_id, payload in store.iter_points():
        points.setdefault(payload.get("document_id", ""), {})[point_id] = payload.get("version", "")
    return _classify(engine, None, points, embedding)


def repair(engine: Engine, store: VectorStore, report: AuditReport) -> dict[str, int]:
    """Delete orphan points; make documents with missing points pending, so the sensor (or
    `rag-pipeline run`) re-indexes them (the embedding cache makes that free of endpoint calls);
    drop chunk sets an interrupted switch left behind."""
    orphan_ids = [pid for ids in report.orphan_points.values() for pid in ids]
    store.delete_ids(orphan_ids)
    requested = records.request_again(engine, list(report.missing_points)) if report.missing_points else 0
    dropped = records.drop_unserved_chunk_sets(engine)
    return {"orphan_points_deleted": len(orphan_ids), "documents_requested": requested, "unserved_rows_dropped": dropped}
