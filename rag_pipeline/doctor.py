"""`rag-pipeline doctor`: every configured part, checked the way the pipeline uses it.

Each check says which part, which setting configures it (its value without secrets), whether
it works, and if not, the one line of `diagnose.explain`: what is wrong and what to do. Nothing
is created or migrated; the embedding endpoint gets one text.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from rag_pipeline.diagnose import explain, first_line, redact_database_url
from rag_pipeline.settings import Settings

OK, FAILED, WARNING = "ok", "FAILED", "warning"
# A part that does not answer within this is broken for the doctor's purpose.
PROBE_TIMEOUT_SECONDS = 10


@dataclass
class Check:
    part: str
    setting: str
    status: str  # ok / FAILED / warning (works, but look at it)
    detail: str
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def run_checks(settings: Settings) -> list[Check]:
    checks = [
        ("database", "DATABASE_URL unset: PostgreSQL in <data>/postgres" if settings.embedded_database
         else f"DATABASE_URL={redact_database_url(settings.database_url)}", _database),
        ("dagster storage", f"DAGSTER_HOME={_dagster_home(settings)}", _dagster_storage),
        ("qdrant", f"QDRANT_URL={settings.qdrant_url}" if settings.qdrant_url else f"QDRANT_PATH={settings.qdrant_path}", _qdrant),
        ("embedding", _embedding_setting(settings), _embedding),
        ("landing zone", f"RAG_INBOX_URL={settings.inbox_url}" if settings.inbox_url else f"RAG_INBOX_DIR={settings.inbox_dir}", _source),
    ]
    return [_check(part, setting, fn, settings) for part, setting, fn in checks] + _sql_sources(settings)


def _sql_sources(settings: Settings) -> list[Check]:
    """Each SQL source of RAG_SOURCES_FILE: its entry, one statement counting its rows."""
    if not settings.sources_file:
        return []
    from rag_pipeline.settings import open_sources

    sources = open_sources(settings)
    setting = f"RAG_SOURCES_FILE={settings.sources_file}"
    checks = [Check(f"source {name or '(file)'}", setting, FAILED, error) for name, error in sources.errors.items()]
    for name, source in sources.sql.items():
        checks.append(_check(f"source {name}", setting, lambda _s, src=source: (OK, f"{src.describe()}: {src.count():,} rows"), settings))
        source.close()
    return checks


def render(checks: list[Check]) -> str:
    from tabulate import tabulate

    rows = [(c.part, c.status, c.setting, c.detail) for c in checks]
    broken = [c.part for c in checks if c.status == FAILED]
    summary = f"broken: {', '.join(broken)}" if broken else "every part works"
    return tabulate(rows, headers=("part", "status", "setting", "detail"), tablefmt="simple", maxcolwidths=[None, None, 50, 80]) + f"\n\n{summary}"


def _check(part: str, setting: str, fn: Callable[[Settings], tuple[str, str]], settings: Settings) -> Check:
    started = time.perf_counter()
    try:
        status, detail = fn(settings)
    except Exception as exc:
        status = FAILED
        detail = explain(exc, database_url=settings.database_url, qdrant_url=settings.qdrant_url) or (
            f"{type(exc).__name__}: {first_line(str(exc))[:300]}"
        )
    return Check(part, setting, status, detail, round(time.perf_counter() - started, 3))


def _database(settings: Settings) -> tuple[str, str]:
    import sqlalchemy as sa

    from rag_pipeline import embedded_pg
    from rag_pipeline.core.db import make_engine

    where = ""
    if settings.embedded_database:
        lay = embedded_pg.layout(settings.data_dir)
        if not (lay.pgdata / "PG_VERSION").exists():  # the doctor creates nothing
            return OK, f"embedded PostgreSQL: not set up yet (the first run sets it up in {lay.root})"
        # Started if it was stopped, as any verb would.
        where = f" (embedded server in {lay.root}, pid {embedded_pg.ensure_running(data_dir=settings.data_dir)})"
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            if not sa.inspect(conn).has_table("documents"):
                return OK, f"{engine.dialect.name}{where}: reachable; no tables yet (the first run creates them)"
            count = conn.execute(sa.text("SELECT count(*) FROM documents")).scalar_one()
        return OK, f"{engine.dialect.name}{where}: reachable, {count} document(s) registered"
    finally:
        engine.dispose()


def _dagster_home(settings: Settings) -> str:
    return os.environ.get("DAGSTER_HOME") or str(settings.data_dir / "dagster")


def _dagster_storage(settings: Settings) -> tuple[str, str]:
    from dagster import DagsterInstance

    home = Path(_dagster_home(settings))
    if not (home / "dagster.yaml").is_file():
        return WARNING, f"no dagster.yaml in {home} yet: `rag-pipeline run` or `rag-pipeline ui` writes one"
    instance = DagsterInstance.from_config(str(home))
    try:
        runs = instance.get_runs_count()
        storage = type(instance.run_storage).__name__.replace("RunStorage", "").lower() or "storage"
        monitoring = "on" if instance.run_monitoring_enabled else "OFF"
        retries = "on" if instance.run_retries_enabled else "OFF"
        status = OK if instance.run_monitoring_enabled and instance.run_retries_enabled else WARNING
        return status, f"{storage}: reachable, {runs} run(s); run monitoring {monitoring}, run retries {retries}"
    finally:
        instance.dispose()


def _qdrant(settings: Settings) -> tuple[str, str]:
    from rag_pipeline.core import generations
    from rag_pipeline.core.vectorstore import VectorStoreError, open_client

    try:
        client = open_client(settings.qdrant_url, settings.qdrant_path, settings.qdrant_api_key,
                             timeout=PROBE_TIMEOUT_SECONDS, lock_wait=2.0, legacy=settings.legacy_qdrant_path)
    except VectorStoreError as exc:
        # The embedded folder is open in a run or the UI's daemon: working, just not here.
        return WARNING, first_line(str(exc))
    try:
        names = [c.name for c in client.get_collections().collections]
        serving = generations.serving_collection(client, settings.collection)
        kind = "server" if settings.qdrant_url else "embedded folder"
        if settings.qdrant_url:
            kind += _server_version(client)
        return OK, f"{kind}: {len(names)} collection(s); search reads {serving or 'nothing yet'} (RAG_COLLECTION={settings.collection})"
    finally:
        client.close()


def _server_version(client) -> str:  # noqa: ANN001
    try:
        return f" {client.info().version}"
    except Exception:  # older servers: the version is only a nicety here
        return ""


def _embedding_setting(settings: Settings) -> str:
    if settings.embedder != "openai":
        return f"RAG_EMBEDDER={settings.embedder}"
    from rag_pipeline.core.endpoints import DEFAULT_BASE_URL, redact_url

    return f"RAG_EMBEDDER=openai OPENAI_BASE_URL={redact_url(settings.openai_base_url or DEFAULT_BASE_URL)}"


def _embedding(settings: Settings) -> tuple[str, str]:
    from rag_pipeline.core.embedding import make_embedder
    from rag_pipeline.core.endpoints import missing_key_problem

    problem = missing_key_problem(provider=settings.embedder, base_url=settings.openai_base_url, api_key=settings.openai_api_key)
    if problem:
        return FAILED, problem
    # One try, a short timeout: the doctor reports, the runs retry.
    embedder = make_embedder(
        settings.embedder, settings.embedding_model, settings.embedding_dimensions, settings.openai_api_key,
        settings.openai_base_url, 1, PROBE_TIMEOUT_SECONDS, 0,
    )
    try:
        started = time.perf_counter()
        [vector] = embedder.embed(["rag-pipeline doctor probe"])
        took = time.perf_counter() - started
    finally:
        embedder.close()
    width = len(vector)
    if settings.embedding_dimensions and width != settings.embedding_dimensions:
        return FAILED, (f"RAG_EMBEDDING_DIMENSIONS={settings.embedding_dimensions}: the model {settings.embedding_model} "
                        f"returned {width} dimensions: set RAG_EMBEDDING_DIMENSIONS={width}")
    return OK, f"{settings.embedding_model}: one text -> {width} dimensions in {took:.2f} s"


def _source(settings: Settings) -> tuple[str, str]:
    from rag_pipeline.settings import open_source

    source = open_source(settings)
    if settings.inbox_url:
        try:
            listed = source.client.list_objects_v2(Bucket=source.bucket, Prefix=source.prefix, MaxKeys=1)
        except Exception as exc:
            raise source.translate(exc, "list") from None
        some = "holds uploads" if listed.get("KeyCount") else "empty so far"
        return OK, f"{source.describe()}: listable, {some}"
    root = settings.inbox_dir
    if not root.exists():
        return WARNING, f"{root} does not exist yet: `rag-pipeline ingest` creates it (or create <folder>/<knowledge base>/)"
    if not root.is_dir() or not os.access(root, os.R_OK | os.X_OK):
        return FAILED, f"RAG_INBOX_DIR={root}: not a readable folder: fix its permissions or point RAG_INBOX_DIR elsewhere"
    kbs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    stray = [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    detail = f"folder: {len(kbs)} knowledge base(s)" + (f" ({', '.join(kbs[:5])}{', ...' if len(kbs) > 5 else ''})" if kbs else "")
    if stray:
        return WARNING, detail + f"; {len(stray)} file(s) directly in the folder are not uploads: move them into <knowledge base>/"
    return OK, detail
