"""Shared fixtures: a real PostgreSQL database per test, the local OpenAI-compatible server,
and an isolated data folder. PostgreSQL comes from RAG_TEST_PG_URL (default: the local server)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pytest

from rag_pipeline.core import db as core_db
from rag_pipeline.devtools.embedding_server import EmbeddingServer

BASE_PG = os.environ.get("RAG_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin() -> psycopg.Connection:
    return psycopg.connect(BASE_PG, autocommit=True, connect_timeout=10)


@pytest.fixture
def pg_url() -> str:
    name = f"ragtest_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _ = BASE_PG.rsplit("/", 1)
    url = f"{base}/{name}"
    yield url
    for key in list(core_db._engines):
        core_db.dispose_engine(key)
    core_db._migrated.clear()
    with _admin() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(scope="session")
def embedding_server() -> EmbeddingServer:
    with EmbeddingServer(dimensions=256) as server:
        yield server


@pytest.fixture
def rag_env(tmp_path: Path, pg_url: str, embedding_server: EmbeddingServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for a pipeline on PostgreSQL + embedded Qdrant + the openai client over HTTP."""
    env = {
        "RAG_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": pg_url,
        "RAG_EMBEDDER": "openai",
        "RAG_EMBEDDING_MODEL": "test-embed",
        "RAG_EMBEDDING_DIMENSIONS": "256",
        "OPENAI_BASE_URL": embedding_server.base_url,
        "OPENAI_API_KEY": "sk-test-not-a-secret",
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "RAG_CHUNK_TOKENS": "120",
        "RAG_CHUNK_OVERLAP": "20",
        # Enough retries for the fault tests' bursts, few enough that an outage fails fast.
        "RAG_EMBED_MAX_RETRIES": "3",
        # Tests write a file and tick at once; the settling test sets its own.
        "RAG_SETTLE_SECONDS": "0",
    }
    for name in ("QDRANT_URL", "QDRANT_PATH", "RAG_INBOX_DIR", "RAG_COLLECTION"):
        monkeypatch.delenv(name, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    Path(env["DAGSTER_HOME"]).mkdir()
    (Path(env["DAGSTER_HOME"]) / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return env


@pytest.fixture
def rig(pg_url: str, embedding_server: EmbeddingServer, tmp_path: Path):
    """The core steps wired to real parts (see integrity_rig)."""
    from collections import Counter

    from rag_pipeline.core.db import open_engine
    from rag_pipeline.core.embedding import OpenAIEmbedder
    from rag_pipeline.core.vectorstore import VectorStore, open_client
    from rag_pipeline_tests.integrity_rig import Rig

    store = VectorStore(open_client(None, tmp_path / "qdrant"), "test_chunks")
    # Few retries, so a test that exhausts them is quick; batches of 8 make several calls.
    embedder = OpenAIEmbedder("test-embed", 256, "sk-test-not-a-secret", embedding_server.base_url, max_retries=2, batch_size=8)
    (tmp_path / "inbox").mkdir()
    yield Rig(open_engine(pg_url), store, embedder, tmp_path / "inbox", embedding_server,
              texts_before=Counter(embedding_server.texts))
    embedding_server.release()
    embedding_server.set_faults()
    embedder.close()
    store.close()
