"""Index integrity: Qdrant must hold exactly the indexed version's chunks of each document."""

from __future__ import annotations

from typing import Sequence

from sqlalchemy.engine import Engine

from rag_pipeline.core import records
from rag_pipeline.core.audit import audit_document


def audit_documents(engine: Engine, store, doc_ids: Sequence[str]) -> dict[str, str]:  # noqa: ANN001
    rows = records.get_documents(engine, doc_ids)
    problems = {}
    for doc_id, row in rows.items():
        problem = audit_document(store, row)
        if problem:
            problems[doc_id] = problem
    return problems
