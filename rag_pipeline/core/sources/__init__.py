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
    "SourceMisconfigured", "SourceChanged", "as_source", "open_source", "stream_size",
]


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
    def list(self, *, min_age_seconds: float = 0.0, max_file_bytes: int | None = None) -> Scan:
        """Everything the source holds, with refusals, problems and what is held back; reads no
        content. Raises SourceError if the source cannot be listed at all."""

    def open(self, knowledge_base: str, path: str, *, token: str | None = None) -> BinaryIO:
        """The upload's bytes. With `token` (the change token listed), raises SourceChanged if
        the upload changed since; FileNotFoundError if it is gone."""

    def describe(self) -> str:
        """Where uploads land, for logs and the UI (never a credential)."""

    def upload(self, paths: list[Path], *, knowledge_base: str = DEFAULT_KB) -> list[tuple[str, str, str]]:
        """`rag-pipeline ingest`: copy files or folders in, each appearing only when complete."""


class FolderSource:
    """The landing directory (`core/inbox.py`): the change token is the mtime in nanoseconds,
    kept in `documents.mtime_ns` as before; reads never leave the folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def list(self, *, min_age_seconds: float = 0.0, max_file_bytes: int | None = None) -> Scan:
        return scan(self.root, min_age_seconds, max_file_bytes=max_file_bytes)

    def open(self, knowledge_base: str, path: str, *, token: str | None = None) -> BinaryIO:
        # The token is not checked here: the caller's hash check finds a file changed since.
        return open_inside(self.root, knowledge_base, path)

    def describe(self) -> str:
        return f"folder {self.root}"

    def upload(self, paths: list[Path], *, knowledge_base: str = DEFAULT_KB) -> list[tuple[str, str, str]]:
        return ingest(paths, self.root, knowledge_base)


def as_source(source: Source | Path | str) -> Source:
    """A source, or a folder path taken as the landing directory (the scripts' and older
    callers' form)."""
    if isinstance(source, (str, Path)):
        return FolderSource(Path(source))
    return source


def open_source(*, url: str | None, folder: Path) -> Source:
    """The landing zone the settings name: `RAG_INBOX_URL` (s3://BUCKET/PREFIX) when set, else
    the folder `RAG_INBOX_DIR`."""
    if not url:
        return FolderSource(folder)
    if url.startswith("s3://"):
        from rag_pipeline.core.sources.s3 import S3Source

        return S3Source(url=url)
    raise SourceMisconfigured(f"RAG_INBOX_URL must be s3://BUCKET/PREFIX, got {url!r}")


def stream_size(stream: BinaryIO) -> int:
    """The size of an opened upload, known before reading it."""
    size = getattr(stream, "size", None)
    return size if size is not None else os.fstat(stream.fileno()).st_size
