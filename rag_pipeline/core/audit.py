"""Consistency between our chunk rows and Qdrant's points."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from rag_pipeline.core import records
from rag_pipeline.core.vectorstore import VectorStore


def audit_document(store: VectorStore, row) -> str | None:  # noqa: ANN001
    """None when the document's points are exactly its indexed chunks."""
    if row.status != records.INDEXED:
        return None
    current = store.count(row.id, row.indexed_version)
    total = store.count(row.id)
    if current != (row.chunk_count or 0):
        return f"{current} points for version {row.indexed_version[:12]}, expected {row.chunk_count}"
    if total != current:
        return f"{total - current} point(s) left from other versions"
    return None


@dataclass
class AuditReport:
    documents_checked: int = 0
    points_checked: int = 0
    missing_points: dict[str, int] = field(default_factory=dict)
    orphan_points: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing_points and not self.orphan_points


def audit_all(engine: Engine, store: VectorStore) -> AuditReport:
    """Every indexed chunk has its point and every point belongs to an indexed chunk."""
    expected = records.indexed_chunk_ids(engine)
    report = AuditReport(documents_checked=len(expected))
    all_expected = {cid: doc for doc, ids in expected.items() for cid in ids}
    seen: set[str] = set()
    for point_id, payload in store.iter_points():
        report.points_checked += 1
        if point_id in all_expected:
            seen.add(point_id)
        else:
            report.orphan_points.append(point_id)
    for cid, doc in all_expected.items():
        if cid not in seen:
            report.missing_points[doc] = report.missing_points.get(doc, 0) + 1
    return report
