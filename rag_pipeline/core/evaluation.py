"""Retrieval quality: recall@1/5/10 and MRR of a labelled query set, per search mode.

A query set is JSON lines: `{"query": ..., "expect": ...}` with an optional `kb` (search only
that knowledge base) and `kind` (a label the report breaks figures down by, e.g. `identifier`
or `paraphrase`). `expect` names the document that answers: its path, `kb/path`, or its id.

Figures are per document, not per chunk: a hit list is read as the documents in the order of
their best chunk (a document found three times is one result), so recall@5 is "the answering
document is among the first five documents", and MRR is the mean of 1/rank of that document
within the first 10 (0 when it is not there).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rag_pipeline.core.search import Searcher, SearchHit

CUTOFFS = (1, 5, 10)
# Chunks fetched per query: enough for ten distinct documents when documents have several.
CHUNKS_PER_QUERY = 40


@dataclass(frozen=True)
class LabelledQuery:
    query: str
    expect: str
    kb: str | None = None
    kind: str | None = None


class QuerySetError(ValueError):
    pass


def load_queries(path: Path) -> list[LabelledQuery]:
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            item = json.loads(line)
            out.append(LabelledQuery(str(item["query"]), str(item["expect"]), item.get("kb"), item.get("kind")))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise QuerySetError(f"{path}:{number}: expected {{\"query\": ..., \"expect\": ...}} ({exc})") from None
    if not out:
        raise QuerySetError(f"{path}: no queries")
    return out


def _matches(hit: SearchHit, expect: str) -> bool:
    c = hit.citation
    return expect in (hit.document_id, c.path, f"{c.knowledge_base}/{c.path}")


def rank_of(hits: Sequence[SearchHit], expect: str) -> int | None:
    """The 1-based rank of the expected document among the distinct documents hit."""
    seen: list[str] = []
    for hit in hits:
        if hit.document_id in seen:
            continue
        seen.append(hit.document_id)
        if _matches(hit, expect):
            return len(seen)
    return None


@dataclass
class Scores:
    queries: int = 0
    found_at: dict[int, int] = field(default_factory=lambda: {k: 0 for k in CUTOFFS})
    reciprocal: float = 0.0
    seconds: float = 0.0

    def add(self, rank: int | None) -> None:
        self.queries += 1
        for k in CUTOFFS:
            if rank is not None and rank <= k:
                self.found_at[k] += 1
        if rank is not None and rank <= max(CUTOFFS):
            self.reciprocal += 1 / rank

    def as_dict(self) -> dict[str, Any]:
        n = max(self.queries, 1)
        return {
            "queries": self.queries,
            **{f"recall@{k}": round(self.found_at[k] / n, 3) for k in CUTOFFS},
            "mrr": round(self.reciprocal / n, 3),
            "ms_per_query": round(1000 * self.seconds / n, 1),
        }


def evaluate(searcher: Searcher, queries: Sequence[LabelledQuery], modes: Sequence[str]) -> dict[str, Any]:
    """{mode: figures, "by_kind": {kind: {mode: figures}}, "misses": {mode: [queries]}}."""
    overall = {m: Scores() for m in modes}
    by_kind: dict[str, dict[str, Scores]] = {}
    misses: dict[str, list[str]] = {m: [] for m in modes}
    answered: dict[str, str] = {}
    for mode in modes:
        for q in queries:
            started = time.perf_counter()
            result = searcher.search(q.query, k=CHUNKS_PER_QUERY, mode=mode, knowledge_base=q.kb)
            elapsed = time.perf_counter() - started
            answered[mode] = result.mode
            rank = rank_of(result.hits, q.expect)
            for scores in (overall[mode], by_kind.setdefault(q.kind or "all", {m: Scores() for m in modes})[mode]):
                scores.add(rank)
                scores.seconds += elapsed
            if rank is None or rank > 5:
                misses[mode].append(q.query)
    return {
        "modes": {m: overall[m].as_dict() for m in modes},
        "answered_as": answered,
        "by_kind": {kind: {m: s.as_dict() for m, s in per.items()} for kind, per in sorted(by_kind.items())},
        "misses_at_5": misses,
    }


def render(report: dict[str, Any]) -> str:
    """The report as a table: one row per mode, then per kind of query."""
    head = f"{'mode':<10} {'kind':<12} {'queries':>7} " + " ".join(f"{f'R@{k}':>6}" for k in CUTOFFS) + f" {'MRR':>6} {'ms/q':>7}"
    lines = [head, "-" * len(head)]

    def row(mode: str, kind: str, f: dict[str, Any]) -> str:
        return (f"{mode:<10} {kind:<12} {f['queries']:>7} " + " ".join(f"{f[f'recall@{k}']:>6.3f}" for k in CUTOFFS)
                + f" {f['mrr']:>6.3f} {f['ms_per_query']:>7.1f}")

    for mode, figures in report["modes"].items():
        lines.append(row(mode, "all", figures))
    if len(report["by_kind"]) > 1:
        for kind, per in report["by_kind"].items():
            for mode, figures in per.items():
                lines.append(row(mode, kind, figures))
    fallback = [m for m, a in report["answered_as"].items() if a != m]
    if fallback:
        lines.append(f"note: {', '.join(fallback)} answered densely: the index being served has no keyword vectors yet")
    return "\n".join(lines)
