"""Our tables, the engine that reaches them, and the migrations that create them.

One bounded engine per process and URL: a run, a sensor tick or a CLI call never holds more
than `pool_size` connections, and every connection is returned by a context manager.
"""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

metadata = sa.MetaData()

documents = sa.Table(
    "documents",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("knowledge_base", sa.String(64), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("indexed_version", sa.String(64)),
    sa.Column("indexed_config", sa.String(255)),
    sa.Column("chunk_count", sa.Integer),
    sa.Column("title", sa.Text),
    sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("indexed_at", sa.DateTime(timezone=True)),
    sa.Column("requested_at", sa.DateTime(timezone=True)),
    # Bumped by every registered change or deletion: the compare-and-set token of a run.
    sa.Column("revision", sa.Integer, nullable=False, server_default="0"),
    sa.Column("indexed_chunker", sa.String(128)),
    # When the current version was registered (its freshness clock), and when its being
    # overdue was reported (so the report is made once).
    sa.Column("registered_at", sa.DateTime(timezone=True)),
    sa.Column("overdue_reported_at", sa.DateTime(timezone=True)),
    # The hand-off the document is in (a tag on the runs given it): the sensor asks Dagster
    # whether those runs exist and are still going, and hands out again what they left.
    sa.Column("request_token", sa.String(40)),
    # The source's own change token where mtime says nothing (an S3 ETag); NULL for a file,
    # whose token is mtime_ns. Same size and token: the upload is not read again.
    sa.Column("change_token", sa.String(200)),
    # The Dagster partition key: `kb/path` as a person reads it (core/identity.partition_key).
    # A name for the UI, derived from (kb, path) like the id; the id stays the identity.
    sa.Column("partition_key", sa.String(255), nullable=False),
    sa.UniqueConstraint("knowledge_base", "path", name="uq_documents_kb_path"),
    sa.Index("ix_documents_status", "status"),
    sa.Index("ix_documents_request_token", "request_token"),
    sa.Index("ix_documents_partition_key", "partition_key", unique=True),
)

document_versions = sa.Table(
    "document_versions",
    metadata,
    sa.Column("document_id", sa.String(36), sa.ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("parser", sa.String(32), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("sections", sa.JSON, nullable=False),
    sa.Column("info", sa.JSON, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

chunks = sa.Table(
    "chunks",
    metadata,
    sa.Column("chunk_id", sa.String(36), primary_key=True),
    sa.Column("document_id", sa.String(36), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("chunk_index", sa.Integer, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("token_count", sa.Integer, nullable=False),
    sa.Column("char_start", sa.Integer, nullable=False),
    sa.Column("char_end", sa.Integer, nullable=False),
    sa.Column("section", sa.Integer, nullable=False),
    sa.Column("page", sa.Integer),
    sa.Column("heading", sa.Text),
    sa.Column("chunker", sa.String(128), nullable=False),
    sa.ForeignKeyConstraint(
        ["document_id", "version"],
        ["document_versions.document_id", "document_versions.version"],
        ondelete="CASCADE",
        name="fk_chunks_document_version",
    ),
    # One chunk set per (version, chunker): a new chunker builds beside the one being served.
    sa.UniqueConstraint("document_id", "version", "chunker", "chunk_index", name="uq_chunks_position"),
)

# Vectors by (embedding configuration, sha256 of the exact text): a text is sent to the
# endpoint once per configuration, whatever document, knowledge base or version it recurs in.
embedding_cache = sa.Table(
    "embedding_cache",
    metadata,
    sa.Column("embedding", sa.String(255), primary_key=True),
    sa.Column("text_sha256", sa.String(64), primary_key=True),
    sa.Column("dimensions", sa.Integer, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# What each Qdrant collection behind the alias was built with (search embeds queries with the
# serving one's model), and its state: building -> serving -> retired (collection dropped).
index_generations = sa.Table(
    "index_generations",
    metadata,
    sa.Column("alias", sa.String(255), primary_key=True),
    sa.Column("embedding", sa.String(255), primary_key=True),
    sa.Column("collection", sa.String(255), nullable=False, unique=True),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("model", sa.String(255), nullable=False),
    sa.Column("dimensions", sa.Integer),
    sa.Column("base_url", sa.Text),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("switched_at", sa.DateTime(timezone=True)),
    sa.Column("retired_at", sa.DateTime(timezone=True)),
)

# A run worker's proof of life, written every few seconds by its own process. The run launcher
# reads it to tell Dagster's run monitoring that a worker died (kill -9, OOM, lost machine).
run_heartbeats = sa.Table(
    "run_heartbeats",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
)

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()
_migrated: set[str] = set()


def normalize_url(url: str) -> str:
    # psycopg 3 for our tables; plain postgres:// URLs are common in operator configs.
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str, pool_size: int = 5) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            # WAL lets the sensor read while a run writes; FKs are off by default in SQLite.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        return engine
    from rag_pipeline import embedded_pg

    # The default database (no DATABASE_URL) is a server in the data folder: the first
    # process to connect starts it, the others share it.
    embedded_pg.ensure_for_url(url)
    engine = sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=60,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "connect_timeout": 10,
            # A stuck statement or an abandoned transaction must not hold locks forever.
            "options": "-c statement_timeout=120000 -c idle_in_transaction_session_timeout=300000",
            "application_name": "rag_pipeline",
        },
    )
    if embedded_pg.data_dir_of(url) is not None:
        # A long-lived process (daemon, code server) outlives a crash of the server or a
        # `rag-pipeline stop`: its next connection starts the server again (a file read when
        # it is running).
        sa.event.listen(engine, "do_connect", lambda *_: embedded_pg.ensure_for_url(url))
    return engine


def get_engine(url: str, pool_size: int = 5) -> Engine:
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url, pool_size)
        return engine


def open_engine(url: str, pool_size: int = 5) -> Engine:
    """The process's engine for `url`, with our tables migrated to the latest revision."""
    engine = get_engine(url, pool_size)
    migrate(engine)
    return engine


def dispose_engine(url: str) -> None:
    with _engines_lock:
        engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()


MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
VERSION_TABLE = "rag_alembic_version"  # Dagster's storage may share the database and owns alembic_version
_ADVISORY_LOCK_ID = 0x7261675F6D6967  # "rag_mig"


def migrate(engine: Engine) -> None:
    """Bring our tables to the latest migration; safe to call from many processes at once."""
    key = str(engine.url)
    if key in _migrated:
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK_ID})")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    _migrated.add(key)
