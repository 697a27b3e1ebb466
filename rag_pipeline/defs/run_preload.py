"""What every run needs before its first document, imported once by the code server's
forkserver (`dagster_internals.fork_runs`): each run is a fork of that process and starts with
it in memory instead of importing it (Dagster's run entry point, the definitions, the steps'
libraries, the pooled storages its instance builds, the tokenizer's tables and token lengths).

Nothing here may raise: the forkserver dies on any error but ImportError while preloading, and
every run launch would fail with it. What fails to load here is loaded by the run itself, as a
spawned run would.
"""

from __future__ import annotations

import importlib

from rag_pipeline.defs.dagster_internals import RUN_ENTRY_MODULE

MODULES = (
    RUN_ENTRY_MODULE,
    "dagster_postgres",
    "rag_pipeline.defs.storage",
    "rag_pipeline.definitions",
    "rag_pipeline.core.pipeline",  # pandas, the parsers, Qdrant Edge
    "openai",  # the embedding step's client
)


def preload() -> list[str]:
    """Import MODULES and warm what the steps load on first use; the names that failed."""
    failed = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # see the module docstring
            failed.append(name)
    try:
        from rag_pipeline.core.chunking import ChunkerConfig, token_lengths
        from rag_pipeline.settings import Settings

        # The chunker's encoding: its tables are read and checked, and its token lengths
        # counted (~0.2 s), on first use.
        token_lengths(ChunkerConfig.encoding)
        if Settings.from_env().qdrant_url:  # a server's client: ~0.6 s to import
            importlib.import_module("qdrant_client")
    except Exception:
        failed.append("warm-up")
    return failed


FAILED = preload()
