"""Shared fixtures: a real PostgreSQL database per test, the local OpenAI-compatible server,
and an isolated data folder. PostgreSQL comes from RAG_TEST_PG_URL (default: the local server).

Each test's database is a copy of a template migrated once per session (per pytest-xdist
worker): `CREATE DATABASE ... TEMPLATE` instead of running the migrations again. The template
is built from the current migrations in every session under a name of its own, and dropped at
the session's end."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from rag_pipeline.core import db as core_db
from rag_pipeline.devtools.embedding_server import EmbeddingServer
from rag_pipeline.devtools.s3_server import S3Server

BASE_PG = os.environ.get("RAG_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin() -> psycopg.Connection:
    return psycopg.connect(BASE_PG, autocommit=True, connect_timeout=10)


def _database_url(name: str) -> str:
    base, _ = BASE_PG.rsplit("/", 1)
    return f"{base}/{name}"


def _drop_database(name: str) -> None:
    with _admin() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def _write_dagster_home(home: Path, pg_url: str) -> None:
    """A DAGSTER_HOME whose runs and events live in the test's own database, through the
    storage the shipped dagster.yaml uses, and nothing else of it (no queue, launcher, pools or
    retries: tests execute runs in process). Dagster's SQLite storage opens a connection per
    stored event: on it the fast tier took a fifth more CPU and a third more time."""
    url = pg_url.replace("postgresql://", "postgresql+psycopg2://", 1)  # see dagster.yaml
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(
        "run_storage:\n  module: rag_pipeline.defs.storage\n  class: PooledPostgresRunStorage\n"
        f"  config: {{postgres_url: '{url}'}}\n"
        "event_log_storage:\n  module: rag_pipeline.defs.storage\n  class: PooledPostgresEventLogStorage\n"
        f"  config: {{postgres_url: '{url}'}}\n"
        "schedule_storage:\n  module: rag_pipeline.defs.storage\n  class: PooledPostgresScheduleStorage\n"
        f"  config: {{postgres_url: '{url}'}}\n"
        "telemetry:\n  enabled: false\n"
    )


def _create_dagster_tables(url: str, home: Path) -> None:
    """Dagster's own tables in the template, so no test pays for creating them."""
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    _write_dagster_home(home, url)
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    try:
        instance.get_runs(limit=1)  # every storage opened (and its tables created)
        instance.get_dynamic_partitions("documents")
    finally:
        instance.dispose()


@pytest.fixture(scope="session")
def pg_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The name of a database holding our tables at the latest migration, to clone per test.
    Unique to this session and worker (another session may have other migrations); nothing
    stays connected to it, as `CREATE DATABASE ... TEMPLATE` requires."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"ragtmpl_{worker}_{uuid.uuid4().hex[:10]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        engine = core_db.make_engine(_database_url(name))
        try:
            core_db.migrate(engine)
        finally:
            engine.dispose()
            # A copy's URL differs anyway; nothing may believe this one migrated once it is gone.
            core_db._migrated.discard(str(engine.url))
        _create_dagster_tables(_database_url(name), tmp_path_factory.mktemp("template_home"))
        with _admin() as conn:  # a copy needs its template free of sessions
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        yield name
    finally:
        _drop_database(name)


@pytest.fixture
def pg_url(pg_template: str) -> str:
    name = f"ragtest_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        # A copy of the migrated template: its rag_alembic_version row is at head, so
        # open_engine's migrate() finds nothing to do.
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    url = _database_url(name)
    yield url
    for key in list(core_db._engines):
        core_db.dispose_engine(key)
    core_db._migrated.clear()
    _drop_database(name)


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
    _write_dagster_home(Path(env["DAGSTER_HOME"]), pg_url)
    # Tests tick back to back; on a loaded machine an idle tick can take over 0.25 s and earn
    # the sensor a rest, which only the test of the rest itself looks at (it sets it back).
    from rag_pipeline.defs import sensors

    monkeypatch.setattr(sensors, "RESTLESS_TICK", float("inf"))
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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> S3Server:
    """One S3 server per session and pytest-xdist worker."""
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket for this test, and the standard AWS variables pointing at the server
    (what an operator sets; boto3 reads them itself)."""
    name = f"rag-{uuid.uuid4().hex[:12]}"
    s3_server.client().create_bucket(Bucket=name)
    for key, value in {
        "AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_ACCESS_KEY_ID": s3_server.ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": s3_server.SECRET_KEY, "AWS_REGION": "us-east-1",
        # Few attempts: the outage tests wait for them.
        "AWS_MAX_ATTEMPTS": "2", "RAG_S3_CONNECT_TIMEOUT_SECONDS": "2", "RAG_S3_READ_TIMEOUT_SECONDS": "10",
        # Nothing from this machine's own AWS configuration.
        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "RAG_INBOX_URL"):
        monkeypatch.delenv(key, raising=False)
    return name
