"""Where uploads land: one interface for every landing zone.

A source lists what it holds without reading any content (knowledge base, path, size, a change
token) and opens one upload as a bounded binary stream. Detection, the extract step and the CLI
see only this interface, so a folder and a bucket share the sensor, partitions, checks, status,
retry and verify. Identity stays (knowledge base, path) and the version the sha256 of the bytes
(`core/identity.py`), whatever the source.

Implementations: `FolderSource` (the landing directory, `core/inbox.py`) and `S3Source`
(`core/sources/s3.py`, an S3-compatible bucket; boto3 is imported only there).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from rag_pipeline.core.identity import DEFAULT_KB
from rag_pipeline.core.inbox import FileStat, Refusal, Scan, ingest, open_inside, scan

__all__ = [
    "FileStat", "Refusal", "Scan", "Source", "FolderSource", "SourceError", "SourceUnavailable",
    "SourceMisconfigured", "SourceChanged", "SourceSet", "SQL_TOKEN_PREFIX", "as_source", "open_source",
    "build_source_set", "owns", "source_for", "stream_size", "watch_mark",
]

# Change tokens of rows from SQL sources start with this and the source's name (`sql.py`): a
# file's token is None and an object's a quoted ETag, so the token tells whose document it is.
SQL_TOKEN_PREFIX = "sql:"
# The longest a folder listing waits for files about to settle (the settle time itself if
# shorter): a sensor tick, and the planning of other sources' ticks, wait with it.
SETTLE_WAIT_SECONDS = 1.0


class SourceError(Exception):
    """A landing zone could not be used. Its text is shown to operators as it is, on one line."""


class SourceUnavailable(SourceError, ConnectionError):
    """Unreachable, throttling or timing out after the client's retries: the infrastructure's
    fault (documents wait, see `core/faults.py`). A ConnectionError, so anything that already
    treats one as transient does the same here."""


class SourceMisconfigured(SourceError):
    """Wrong credentials, a missing bucket, a malformed URL: an operator must change a setting,
    which the message names. Also the infrastructure's fault: no document is to blame."""


class SourceChanged(SourceError):
    """The upload is no longer the version that was listed (a conditional read failed): the
    next listing registers the new one; nothing may be indexed under the old identity."""


@runtime_checkable
class Source(Protocol):
    # Whether detection reads a new or changed upload to hash it. A local file: yes, so a file
    # touched but unchanged costs no run. An object: no, it is registered from its listing
    # (size and ETag) and the run's conditional read is the only download.
    hashed_on_detection: bool
    # How many uploads the extract step reads ahead of the parser: a bucket's round trips
    # otherwise leave the parser idle; a local file needs none.
    concurrent_reads: int
    # What one upload is called in the sensor's messages ("files", "objects", "rows").
    unit: str

    def list(self, *, min_age_seconds: float = 0.0, max_file_bytes: int | None = None) -> Scan:
        """Everything the source holds, with refusals, problems and what is held back; reads no
        content. Raises SourceError if the source cannot be listed at all."""

    def open(self, knowledge_base: str, path: str, *, token: str | None = None) -> BinaryIO:
        """The upload's bytes. With `token` (the change token listed), raises SourceChanged if
        the upload changed since; FileNotFoundError if it is gone."""

    def describe(self) -> str:
        """Where uploads land, for logs and the UI (never a credential)."""

    def probe(self) -> None:
        """One cheap request: raises SourceError if the landing zone cannot be used now
        (`rag-pipeline status` says so on one line)."""

    def upload(self, paths: list[Path], *, knowledge_base: str = DEFAULT_KB) -> list[tuple[str, str, str]]:
        """`rag-pipeline ingest`: copy files or folders in, each appearing only when complete."""


class FolderSource:
    """The landing directory (`core/inbox.py`): the change token is the mtime in nanoseconds,
    kept in `documents.mtime_ns` as before; reads never leave the folder."""

    hashed_on_detection = True
    concurrent_reads = 1
    unit = "files"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def list(self, *, min_age_seconds: float = 0.0, max_file_bytes: int | None = None) -> Scan:
        # A file about to settle is waited for, not left for the next listing: a sensor tick
        # comes a second later at best, and one modified document was queued 1.3-2.1 s after
        # its write with a 1 s settle. The wait is bounded by SETTLE_WAIT_SECONDS.
        return scan(self.root, min_age_seconds, max_file_bytes=max_file_bytes,
                    settle_wait_seconds=min(min_age_seconds, SETTLE_WAIT_SECONDS))

    def watch_mark(self) -> str | None:
        """Equal marks: nothing under the folder changed in between (`core/watch.py`)."""
        from rag_pipeline.core.watch import mark_for

        return mark_for(self.root)

    def open(self, knowledge_base: str, path: str, *, token: str | None = None) -> BinaryIO:
        # The token is not checked here: the caller's hash check finds a file changed since.
        return open_inside(self.root, knowledge_base, path)

    def describe(self) -> str:
        return f"folder {self.root}"

    def probe(self) -> None:
        # A folder not made yet is an empty landing zone (ingest creates it), not a fault.
        if self.root.exists() and not (self.root.is_dir() and os.access(self.root, os.R_OK | os.X_OK)):
            raise SourceMisconfigured(f"{self.root}: not a readable folder; check RAG_INBOX_DIR")

    def upload(self, paths: list[Path], *, knowledge_base: str = DEFAULT_KB) -> list[tuple[str, str, str]]:
        return ingest(paths, self.root, knowledge_base)


def as_source(source: Source | Path | str) -> Source:
    """A source, or a folder path taken as the landing directory (the scripts' and older
    callers' form)."""
    if isinstance(source, (str, Path)):
        return FolderSource(Path(source))
    return source


def open_source(*, url: str | None, folder: Path, timeouts: tuple[float, float]) -> Source:
    """The landing zone the settings name: `RAG_INBOX_URL` (s3://BUCKET/PREFIX) when set, else
    the folder `RAG_INBOX_DIR`. `timeouts`: a bucket's (connect, read) seconds per request."""
    if not url:
        return FolderSource(folder)
    if url.startswith("s3://"):
        from rag_pipeline.core.sources.s3 import S3Source

        return S3Source(url=url, timeouts=timeouts)
    raise SourceMisconfigured(f"RAG_INBOX_URL must be s3://BUCKET/PREFIX, got {url!r}")


class SourceSet:
    """The landing zone and the declared SQL sources as one source for the run's reads: a
    document is read from the source its change token names (`sql:<name>:`), else from the
    landing zone. Listing is per source (each has its sensor); this lists the landing zone."""

    def __init__(self, landing: Source, sql: "dict[str, Source] | None" = None,
                 errors: "dict[str, str] | None" = None) -> None:
        self.landing = landing
        self.sql = dict(sql or {})
        # Sources the sources file declares but that cannot be used: their documents wait.
        self.errors = dict(errors or {})
        self.hashed_on_detection = getattr(landing, "hashed_on_detection", True)
        self.concurrent_reads = getattr(landing, "concurrent_reads", 1)
        self.unit = getattr(landing, "unit", "files")

    def route(self, token: str | None) -> Source:
        if token and token.startswith(SQL_TOKEN_PREFIX):
            name = token[len(SQL_TOKEN_PREFIX):].split(":", 1)[0]
            if name in self.sql:
                return self.sql[name]
            raise SourceMisconfigured(
                self.errors.get(name) or f"source '{name}' is no longer declared in RAG_SOURCES_FILE"
            )
        return self.landing

    def list(self, *, min_age_seconds: float = 0.0, max_file_bytes: int | None = None) -> Scan:
        return self.landing.list(min_age_seconds=min_age_seconds, max_file_bytes=max_file_bytes)

    def watch_mark(self) -> str | None:
        return watch_mark(self.landing)

    def open(self, knowledge_base: str, path: str, *, token: str | None = None) -> BinaryIO:
        return self.route(token).open(knowledge_base, path, token=token)

    def describe(self) -> str:
        return self.landing.describe()

    def probe(self) -> None:
        self.landing.probe()

    def upload(self, paths: list[Path], *, knowledge_base: str = DEFAULT_KB) -> list[tuple[str, str, str]]:
        return self.landing.upload(paths, knowledge_base=knowledge_base)


def watch_mark(source: Source) -> str | None:
    """A mark that stays equal while nothing in the source changes, for sources that can tell
    (a watched local folder); None: list it to know."""
    mark = getattr(source, "watch_mark", None)
    return mark() if mark is not None else None


def source_for(source: Source, token: str | None) -> Source:
    """The source that holds a document registered with `token`."""
    route = getattr(source, "route", None)
    return route(token) if route is not None else source


def owns(source: Source, token: str | None) -> bool:
    """Whether a document registered with `token` is `source`'s: a listing tombstones only its
    own documents. A landing zone owns everything that is not a SQL source's row."""
    decide = getattr(source, "owns", None)
    if decide is not None:
        return decide(token)
    return not (token or "").startswith(SQL_TOKEN_PREFIX)


def build_source_set(
    *, sources_file: Path | str | None, url: str | None, folder: Path, timeouts: tuple[float, float],
) -> SourceSet:
    """The landing zone and SQL sources `sources_file` declares (RAG_SOURCES_FILE); the landing
    zone of `url` / `folder` (RAG_INBOX_URL / RAG_INBOX_DIR) when it declares none. Nothing
    connects here."""
    from rag_pipeline.core.sources import catalog
    from rag_pipeline.core.sources.sql import SqlSource

    declared = catalog.load(sources_file)
    spec = declared.landing
    if spec is None:
        landing = open_source(url=url, folder=folder, timeouts=timeouts)
    elif isinstance(spec, catalog.FolderSpec):
        landing = FolderSource(Path(spec.path).expanduser())
    else:
        landing = open_source(url=spec.url, folder=folder, timeouts=timeouts)
    return SourceSet(landing, {s.name: SqlSource(s) for s in declared.sql}, declared.errors)


def stream_size(stream: BinaryIO) -> int:
    """The size of an opened upload, known before reading it."""
    size = getattr(stream, "size", None)
    return size if size is not None else os.fstat(stream.fileno()).st_size
