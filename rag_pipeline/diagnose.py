"""One line per operator mistake: the setting, its value (without secrets) and what to do.

Used where an error reaches a person: the CLI (instead of a traceback), a step's failure
message in the UI, and `rag-pipeline doctor`. Errors that already name their setting
(endpoint, landing zone, embedded Qdrant folder) pass through as their first line.
"""

from __future__ import annotations

import os
import re
from typing import Iterator

from rag_pipeline.core.embedding import EndpointError
from rag_pipeline.core.endpoints import connection_problem, redact_url


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def redact_database_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: say so rather than echo it (it may hold a password)
        return "(not a database URL)"


def dagster_storage_setting() -> str:
    """How Dagster's own storage is configured, for messages: the DAGSTER_PG_* it reads."""
    home = os.environ.get("DAGSTER_HOME", "")
    names = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_DB", "DAGSTER_PG_USER")
    values = " ".join(f"{n}={os.environ[n]}" for n in names if os.environ.get(n))
    return f"Dagster storage ({home}/dagster.yaml{': ' + values if values else ''})"


def database_line(exc: BaseException, *, setting: str, value: str) -> str:
    text = " ".join(first_line(str(e)) + " " + str(e) for e in _chain(exc))
    where = f"{setting}={value}" if value else setting
    missing = re.search(r'database "([^"]+)" does not exist', text)
    if missing:
        name = missing.group(1)
        return f"{where}: database {name!r} does not exist: create it (createdb {name}) or point {setting} at an existing one"
    lowered = text.lower()
    if "password authentication failed" in lowered or "no password supplied" in lowered:
        return f"{where}: PostgreSQL refused the user or password: check the credentials in {setting}"
    if "role" in lowered and "does not exist" in lowered:
        return f"{where}: PostgreSQL has no such user: check the user in {setting}"
    if "unable to open database file" in lowered:
        return f"{where}: cannot open the SQLite file (its folder must exist and be writable): check {setting} and RAG_DATA_DIR"
    from rag_pipeline.embedded_pg import data_dir_of

    embedded = data_dir_of(value) if value else None
    if embedded is not None and ("refused" in lowered or "no such file" in lowered):
        return (f"{where}: the data folder's PostgreSQL server ({embedded}/postgres) stopped while this process used it "
                "(`rag-pipeline stop`?): run the command again, which starts it")
    if "refused" in lowered or "could not translate host name" in lowered or "timeout" in lowered or "timed out" in lowered:
        return f"{where}: no database server answers ({connection_problem(exc)}): start PostgreSQL, or fix the host and port in {setting}"
    orig = getattr(exc, "orig", None) or exc
    return f"{where}: {type(orig).__name__}: {first_line(str(orig))[:200]}: check {setting}"


def explain(
    exc: BaseException, *, database_url: str | None = None, qdrant_url: str | None = None,
) -> str | None:
    """The one line for an error an operator can fix, or None when it is not one of those."""
    import sqlalchemy.exc

    from rag_pipeline.core.sources import SourceError
    from rag_pipeline.core.vectorstore import VectorStoreError

    from rag_pipeline.embedded_pg import EmbeddedPostgresError

    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, (EndpointError, SourceError, VectorStoreError, EmbeddedPostgresError)):
            return first_line(str(e))
    for e in chain:
        orig = getattr(e, "orig", None) if isinstance(e, sqlalchemy.exc.DBAPIError) else e
        module = type(orig).__module__
        if module.startswith("psycopg2"):
            # Dagster's storage runs on psycopg2, our tables on psycopg 3 (or SQLite).
            return database_line(e, setting=dagster_storage_setting(), value="")
        if isinstance(e, sqlalchemy.exc.DBAPIError) or module.startswith(("psycopg", "sqlite3")):
            return database_line(e, setting="DATABASE_URL", value=redact_database_url(database_url or ""))
    for e in chain:
        line = _qdrant_line(e, qdrant_url)
        if line:
            return line
    for e in chain:
        kind = type(e)
        if kind.__module__.startswith("dagster") and "Config" in kind.__name__:
            return f"{dagster_storage_setting()}: {first_line(str(e))[:300]}"
    return None


def _qdrant_line(exc: BaseException, url: str | None) -> str | None:
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    where = f"QDRANT_URL={redact_url(url)}" if url else "QDRANT_URL"
    if isinstance(exc, ResponseHandlingException) or (
        type(exc).__module__.startswith("httpx") and isinstance(exc, Exception) and "connect" in type(exc).__name__.lower()
    ):
        return (f"{where}: Qdrant is not reachable ({connection_problem(exc)}): start the Qdrant server, fix QDRANT_URL, "
                "or unset it for the embedded folder")
    if isinstance(exc, UnexpectedResponse) and exc.status_code in (401, 403):
        return f"QDRANT_API_KEY: Qdrant at {redact_url(url or '')} refused the key ({exc.status_code}): check QDRANT_API_KEY"
    return None
