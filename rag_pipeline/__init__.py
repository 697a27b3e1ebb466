"""rag_pipeline: uploads become searchable chunks through Dagster partitioned assets.

`rag_pipeline.search("query", k=5)` searches the index without Dagster (see core/search.py);
nothing heavy is imported until it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from rag_pipeline.core.search import Citation, Searcher, SearchHit, SearchResult

__all__ = ["search", "Searcher", "SearchHit", "SearchResult", "Citation"]


def search(query: str, **options: Any) -> "list[SearchHit]":
    """The top hits for `query`: keyword-only options of `rag_pipeline.core.search.search`
    (k, mode, knowledge_base, path_prefix, file_types, metadata, settings)."""
    from rag_pipeline.core.search import search as _search

    return _search(query, **options)


def __getattr__(name: str) -> Any:
    # The types on first use, so `import rag_pipeline` stays free of qdrant-client and SQLAlchemy.
    if name in ("Searcher", "SearchHit", "SearchResult", "Citation"):
        from rag_pipeline.core import search as module

        return getattr(module, name)
    raise AttributeError(name)
