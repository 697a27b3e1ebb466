"""Database rows as documents: a SQL source declared in `RAG_SOURCES_FILE` (`catalog.SqlSpec`).

Each row of the source's query (or table) is one upload: knowledge base a literal or a column,
path `<source name>/<id>`. Its bytes are the row rendered as a small Markdown document, the
declared metadata first as a one-line JSON front matter, then one `## column` section per text
column in the declared order:

    ---
    {"project": "OPS", "status": "open"}
    ---
    ## title

    Printer on fire

    ## body

    ...

So the version (sha256 of those bytes, as for any upload) covers the text and the metadata: an
unchanged row is never re-read by a run nor re-embedded, a changed one replaces its previous
version. The listing renders every row to size and hash it; the change token is that hash
(`sql:<name>:<sha256>`), so a run's read (`open`) re-reads the row and raises SourceChanged if it
no longer renders to the listed bytes. The token's prefix also tells which source a registered
document belongs to, so one source's listing never tombstones another's documents.

SQLAlchemy is the client: any URL it takes (PostgreSQL through psycopg 3, SQLite, MySQL with its
driver installed). Connection failures are SourceUnavailable (documents wait); a query that fails
or lacks a declared column is SourceMisconfigured, naming the source and the key.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import io
import json
import re
import threading
from typing import Any, BinaryIO, Iterable, Mapping

from rag_pipeline.core.identity import KB_NAME_RE
from rag_pipeline.core.inbox import FileStat, Refusal, Scan
from rag_pipeline.core.parsing.base import over_file_limit
from rag_pipeline.core.sources import SQL_TOKEN_PREFIX, SourceChanged, SourceMisconfigured, SourceUnavailable
from rag_pipeline.core.sources.catalog import ColumnRef, SqlSpec

# The parser key of a rendered row (`core/parsing/records.py`): the path has no extension.
RECORD_SUFFIX = ".record"


def token_prefix(name: str) -> str:
    return f"{SQL_TOKEN_PREFIX}{name}:"


def _plain(value: Any) -> Any:
    """A metadata value as JSON keeps it (and a Qdrant payload can filter on it)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


def render(spec: SqlSpec, row: Mapping[str, Any]) -> tuple[bytes, list[str]]:
    """The row as the upload's bytes, and the text columns that had text."""
    meta = {column: _plain(row[column]) for column in spec.metadata}
    parts = ["---", json.dumps(meta, ensure_ascii=False, sort_keys=True, separators=(", ", ": ")), "---"]
    filled = []
    for column in spec.text:
        value = row[column]
        text = value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else ("" if value is None else str(value))
        if text.strip():
            filled.append(column)
            parts += [f"## {column}", "", text.strip("\n"), ""]
    return "\n".join(parts).encode("utf-8") + b"\n", filled


def sa_select_all(source):  # noqa: ANN001, ANN201
    import sqlalchemy as sa

    return sa.select(sa.text("*")).select_from(source)


class _Rendered(io.BytesIO):
    """The rendered row, sized before it is read like any upload's stream."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.size = len(data)


class SqlSource:
    """One declared SQL source. The engine is built on first use, with a small pool of its own
    (the sensor lists, a run reads rows): nothing connects when the definitions load."""

    # Rows are rendered (and hashed) by the listing: detection registers them unread, and the
    # run's read, compared with the listed hash, records the version.
    hashed_on_detection = False
    concurrent_reads = 1
    unit = "rows"

    def __init__(self, spec: SqlSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self._engine = None
        self._lock = threading.Lock()
        # Held deletions are released by `rag-pipeline run --confirm-deletions NAME`.
        self.max_delete_fraction = spec.max_delete_fraction

    # -- the Source interface ---------------------------------------------------------------

    def describe(self) -> str:
        what = f"table {self.spec.table}" if self.spec.table else "query"
        return f"sql source {self.name} ({what} on {self.shown_url()})"

    def shown_url(self) -> str:
        import sqlalchemy as sa

        try:
            return sa.engine.make_url(self.spec.url).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - a malformed URL is reported by the listing
            return "(unparsable url)"

    @property
    def token_prefix(self) -> str:
        return token_prefix(self.name)

    def owns(self, token: str | None) -> bool:
        return bool(token) and token.startswith(self.token_prefix)

    def parse_name(self, path: str) -> str:
        return path + RECORD_SUFFIX

    def probe(self) -> None:
        import sqlalchemy as sa

        with self._connect() as conn:
            self._execute(conn, sa.text("SELECT 1"), key="url")

    def count(self) -> int:
        """The rows the source holds now (`rag-pipeline doctor`)."""
        import sqlalchemy as sa

        with self._connect() as conn:
            query = sa.select(sa.func.count()).select_from(self._select().subquery("rag_rows"))
            return int(self._execute(conn, query, key=self._key).scalar())

    def upload(self, paths, *, knowledge_base=None):  # noqa: ANN001, ANN201
        raise SourceMisconfigured(f"source '{self.name}': rows are written to the database, not uploaded")

    @property
    def incremental(self) -> bool:
        return bool(self.spec.updated_at)

    def list(self, *, min_age_seconds: float = 0.0, max_file_bytes: int | None = None) -> Scan:
        """Every row, rendered and hashed; rows that cannot be documents are problems, rows
        without text or over the size limit refusals (failed documents with the reason).

        With `updated_at` and a watermark (`since_ns`, set by detection: the latest updated_at
        registered), only rows updated since the watermark minus `overlap_seconds` are read and
        rendered; every other row is listed by its id alone, as held (present, not taken now),
        so it is neither re-registered nor deleted. The overlap re-reads rows written in the
        same second as the watermark, or committed after a later one was read; they compare
        unchanged by their hash."""
        with self._connect() as conn:
            try:
                since = self._since()
                statement = self._select()
                if since is not None:
                    statement = statement.where(self._updated_column() >= since)
                if self.spec.updated_at:
                    # Oldest first: rows a tick's budget leaves for the next are all newer than
                    # those it registered, so the watermark never passes over them.
                    statement = statement.order_by(self._updated_column())
                result = self._execute(conn, statement, key=self._key)
            except SourceMisconfigured:
                # Most often a declared column the query or table lacks: name its key.
                conn.rollback()
                probe = self._execute(conn, sa_select_all(self._from()).limit(0), key=self._key)
                self._check_columns(probe.keys())
                raise
            scan = self._scan((r._mapping for r in result), max_file_bytes)
            if since is not None:
                self._hold_the_rest(conn, scan)
            return scan

    # The latest updated_at registered for this source, in ns since the epoch (detection sets it).
    since_ns: int | None = None

    def _updated_column(self):  # noqa: ANN202
        import sqlalchemy as sa

        return sa.column(self.spec.updated_at)

    def _since(self):  # noqa: ANN202
        if not self.spec.updated_at or not self.since_ns:
            return None
        since = dt.datetime.fromtimestamp(self.since_ns / 1e9, dt.timezone.utc) - dt.timedelta(seconds=self.spec.overlap_seconds)
        if self.engine().url.get_backend_name() == "sqlite":
            # SQLite keeps timestamps as text: compared as ISO strings, in UTC.
            return since.replace(tzinfo=None).isoformat(sep=" ")
        return since

    def _hold_the_rest(self, conn, scan: Scan) -> None:  # noqa: ANN001
        """Every other row by its id (and knowledge base column) alone: present, so not deleted."""
        import sqlalchemy as sa

        columns = [sa.column(self.spec.id)]
        if isinstance(self.spec.knowledge_base, ColumnRef):
            columns.append(sa.column(self.spec.knowledge_base.column))
        rows = self._execute(conn, sa.select(*columns).select_from(self._from()), key=self._key)
        for row in rows:
            mapping = row._mapping
            key = (self._kb(mapping), f"{self.name}/{mapping[self.spec.id]}")
            if key not in scan.files and key not in scan.refused and key[0] is not None:
                scan.held.add(key)

    @property
    def _key(self) -> str:
        return "query" if self.spec.query else "table"

    def open(self, knowledge_base: str, path: str, *, token: str | None = None) -> BinaryIO:
        """The row, rendered now. FileNotFoundError if it is gone; SourceChanged if it no longer
        renders to the bytes listed under `token`."""
        prefix = f"{self.name}/"
        if not path.startswith(prefix):
            raise FileNotFoundError(f"{path}: not a row of source '{self.name}'")
        row_id = path[len(prefix):]
        rows = [r for r in self._rows_by_id(row_id) if self._kb(r) == knowledge_base]
        if not rows:
            raise FileNotFoundError(f"{path}: no such row in source '{self.name}'")
        data, _ = render(self.spec, rows[0])
        if token is not None and token != self.token_of(data):
            raise SourceChanged(f"{path}: the row changed since it was listed")
        return _Rendered(data)

    # -- rows ------------------------------------------------------------------------------

    def _rows_by_id(self, row_id: str) -> list[Mapping[str, Any]]:
        """The rows whose id renders as `row_id`. Compared as a number first when it looks like
        one (an integer key's index serves it: comparing as text scans the table, 100 ms a row
        at 100,000 rows), then as text, which finds any id but cannot use the index."""
        import sqlalchemy as sa

        rows_q = self._select().subquery("rag_rows")
        column = rows_q.c[self.spec.id]
        with self._connect() as conn:
            if _INTEGER.fullmatch(row_id):
                try:
                    rows = [r._mapping for r in conn.execute(sa.select(rows_q).where(column == int(row_id)))]
                except sa.exc.DBAPIError:
                    conn.rollback()  # a text id column: PostgreSQL refuses text = bigint
                    rows = []
                if rows:
                    return rows
            result = self._execute(conn, sa.select(rows_q).where(sa.cast(column, sa.String) == row_id), key=self._key)
            return [r._mapping for r in result]

    def token_of(self, data: bytes) -> str:
        return token_prefix(self.name) + hashlib.sha256(data).hexdigest()

    def _scan(self, rows: Iterable[Mapping[str, Any]], max_file_bytes: int | None = None) -> Scan:
        scan = Scan({}, [], set(), [])
        for row in rows:
            raw_id = row[self.spec.id]
            if raw_id is None or str(raw_id).strip() == "":
                scan.problems.append(f"source '{self.name}': a row with an empty id ({self.spec.id}) was skipped")
                continue
            kb = self._kb(row)
            path = f"{self.name}/{raw_id}"
            if kb is None or not KB_NAME_RE.match(kb):
                scan.problems.append(
                    f"source '{self.name}': row {raw_id}: invalid knowledge base {kb!r} "
                    f"(column {self.spec.knowledge_base.column})"  # type: ignore[union-attr]
                )
                continue
            key = (kb, path)
            if key in scan.files or key in scan.refused:
                scan.problems.append(f"source '{self.name}': id {raw_id} appears more than once; the first row is used")
                continue
            data, filled = render(self.spec, row)
            # updated_at as the row's time: the next incremental listing starts from the latest.
            stat = FileStat(kb, path, len(data), self._mtime_ns(row), self.token_of(data))
            if not filled:
                # Like an empty file: a failed document with the reason, not silently nothing.
                columns = ", ".join(self.spec.text)
                scan.refused[key] = Refusal(stat, f"empty record: no text in {columns}")
            elif max_file_bytes is not None and len(data) > max_file_bytes:
                scan.refused[key] = Refusal(stat, over_file_limit(len(data), max_file_bytes))
            else:
                scan.files[key] = stat
        return scan

    def _mtime_ns(self, row: Mapping[str, Any]) -> int:
        if not self.spec.updated_at:
            return 0
        value = row[self.spec.updated_at]
        if isinstance(value, str):
            try:
                value = dt.datetime.fromisoformat(value)
            except ValueError:
                return 0
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.timezone.utc)  # naive timestamps are taken as UTC
            return int(value.timestamp() * 1_000_000) * 1000
        if isinstance(value, (int, float, decimal.Decimal)):
            return int(float(value) * 1e9)  # epoch seconds
        return 0

    def _kb(self, row: Mapping[str, Any]) -> str | None:
        kb = self.spec.knowledge_base
        if isinstance(kb, ColumnRef):
            value = row[kb.column]
            return None if value is None else str(value)
        return kb

    def _from(self):  # noqa: ANN202
        import sqlalchemy as sa

        if self.spec.query:
            return sa.text(f"({self.spec.query}) AS rag_query")
        schema, _, name = self.spec.table.rpartition(".")
        return sa.table(name, schema=schema or None)

    def _select(self):  # noqa: ANN202
        import sqlalchemy as sa

        return sa.select(*(sa.column(c) for c in self.spec.columns())).select_from(self._from())

    def _check_columns(self, keys: Iterable[str]) -> None:
        present = set(keys)
        for column, key in self.spec.columns().items():
            if column not in present:
                raise SourceMisconfigured(f"source '{self.name}': key '{key}': column '{column}' is not in the result")

    # -- the connection --------------------------------------------------------------------

    def engine(self):  # noqa: ANN201
        with self._lock:
            if self._engine is None:
                import sqlalchemy as sa

                from rag_pipeline.core.db import normalize_url

                try:
                    url = sa.engine.make_url(normalize_url(self.spec.url))
                except Exception as exc:  # noqa: BLE001
                    raise SourceMisconfigured(f"source '{self.name}': key 'url': not a SQLAlchemy URL ({exc})") from None
                args: dict[str, Any] = {}
                if url.get_backend_name() == "postgresql":
                    timeout = max(1, int(self.spec.timeout_seconds))
                    args = {"connect_timeout": min(timeout, 10), "options": f"-c statement_timeout={timeout * 1000}"}
                elif url.get_backend_name() == "sqlite":
                    args = {"timeout": self.spec.timeout_seconds}
                try:
                    self._engine = sa.create_engine(url, pool_size=2, max_overflow=2, pool_pre_ping=True, connect_args=args) \
                        if url.get_backend_name() != "sqlite" else sa.create_engine(url, connect_args=args)
                except Exception as exc:  # noqa: BLE001 - a missing driver, a bad option
                    raise SourceMisconfigured(f"source '{self.name}': key 'url': {exc}") from None
            return self._engine

    def _connect(self):  # noqa: ANN202
        import sqlalchemy as sa

        engine = self.engine()
        try:
            return engine.connect()
        except sa.exc.DBAPIError as exc:
            message = str(exc.orig or exc).strip().splitlines()[0] if (exc.orig or exc) else "connection failed"
            lowered = message.lower()
            if "authentication" in lowered or "does not exist" in lowered or "password" in lowered:
                raise SourceMisconfigured(
                    f"source '{self.name}': key 'url': {self.shown_url()}: {message}"
                ) from None
            raise SourceUnavailable(f"source '{self.name}': {self.shown_url()} is not reachable ({message})") from None

    def _execute(self, conn, statement, *, key: str):  # noqa: ANN001, ANN202
        import sqlalchemy as sa

        try:
            return conn.execute(statement)
        except sa.exc.DBAPIError as exc:
            message = str(exc.orig or exc).strip().splitlines()[0]
            if exc.connection_invalidated or isinstance(exc, (sa.exc.InterfaceError,)) or _transient(message):
                raise SourceUnavailable(f"source '{self.name}': {self.shown_url()}: {message}") from None
            raise SourceMisconfigured(f"source '{self.name}': key '{key}': {message}") from None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


_INTEGER = re.compile(r"-?(0|[1-9][0-9]{0,17})")
_TRANSIENT = ("server closed the connection", "connection", "timeout", "canceling statement", "database is locked",
              "terminating connection", "the database system is")


def _transient(message: str) -> bool:
    lowered = message.lower()
    return any(t in lowered for t in _TRANSIENT)
