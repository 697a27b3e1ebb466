"""An S3-compatible bucket as the landing zone: `s3://BUCKET/PREFIX`, keys `PREFIX/<kb>/<path>`.

Credentials, endpoint, region and profile come from boto3's standard configuration
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_PROFILE, the
config files), so AWS S3, MinIO, SeaweedFS, R2 and GCS's S3 interface are all the same code.
Only ListObjectsV2, HeadObject, GetObject, PutObject (multipart for large uploads) and
DeleteObject are used. boto3 is imported when the client is first built: the code server
imports this module only when the landing zone is a bucket.
"""

from __future__ import annotations

import bisect
import datetime as dt
import email.utils
import itertools
import os
import re
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from xml.etree import ElementTree
from pathlib import Path
from typing import Any, BinaryIO

from rag_pipeline.core.identity import DEFAULT_KB, KB_NAME_RE, document_id, validate_kb_name
from rag_pipeline.core.inbox import FileStat, Refusal, Scan, ingest_plan, is_ignored, shown
from rag_pipeline.core.parsing.base import over_file_limit
from rag_pipeline.core.sources import SourceChanged, SourceMisconfigured, SourceUnavailable

# Error codes an operator fixes in the configuration, and what to tell them.
_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken",
                "InvalidClientTokenId", "AuthorizationHeaderMalformed", "AllAccessDisabled"}
_CREDENTIALS_HINT = "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"

PAGE = 1_000  # keys per ListObjectsV2 page, the most S3 returns (the tests make it small)
# The last listing's page ends per (endpoint, bucket, prefix): the next listing's ranges. In the
# process, not the instance: the sensor's resources, and so its source, are built anew each
# tick. One key per 1,000 objects.
_SPLITS: dict[tuple[str, str, str], tuple[str, ...]] = {}
_SPLITS_LOCK = threading.Lock()


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, key prefix ending in '/' or empty) of s3://BUCKET[/PREFIX]."""
    if not url.startswith("s3://"):
        raise SourceMisconfigured(f"RAG_INBOX_URL must be s3://BUCKET/PREFIX, got {url!r}")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise SourceMisconfigured(f"RAG_INBOX_URL names no bucket: {url!r} (s3://BUCKET/PREFIX)")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


class S3Source:
    """Uploads in a bucket. The change token is the ETag: an object listed with the size and
    ETag recorded is never downloaded; a new or changed one is registered unread, and the
    run's read, conditional on the ETag registered, is its only download."""

    hashed_on_detection = False
    concurrent_reads = 8  # botocore's connection pool holds 10
    unit = "objects"
    list_workers = 8  # concurrent ListObjectsV2 requests, within the same pool

    def __init__(self, *, url: str, client: Any = None, timeouts: tuple[float, float] = (5.0, 30.0)) -> None:
        self.url = url
        self.timeouts = timeouts  # (connect, read) seconds: RAG_S3_CONNECT/READ_TIMEOUT_SECONDS
        self.bucket, self.prefix = parse_url(url)
        self._client = client
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def probe(self) -> None:
        try:
            self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1)
        except Exception as exc:
            raise self.translate(exc, "list") from None

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = shared_client(timeouts=self.timeouts)
            return self._client

    def key(self, knowledge_base: str, path: str) -> str:
        return f"{self.prefix}{knowledge_base}/{path}"

    def list(self, *, min_age_seconds: float = 0.0, max_file_bytes: int | None = None) -> Scan:
        # An object appears only once its upload completed (S3 writes are atomic), so nothing is
        # ever half-written: no settling wait, and no clock skew between us and the server.
        result = Scan({}, [], set(), [])
        reader = _EntryReader(prefix=self.prefix, result=result, max_file_bytes=max_file_bytes)
        page_ends: list[str] = []
        listed = 0
        try:
            memory = (str(getattr(self.client.meta, "endpoint_url", "")), self.bucket, self.prefix)
            with _SPLITS_LOCK:
                splits = _SPLITS.get(memory, ())
            for contents in self._ranges(splits=splits):
                reader.read(contents)
                # Every PAGE-th key, for the next listing's ranges: one request each if unchanged.
                index = PAGE - 1 - listed % PAGE
                page_ends += (obj["Key"] for obj in contents[index::PAGE])
                listed += len(contents)
        except Exception as exc:
            raise self.translate(exc, "list") from None
        if page_ends and listed % PAGE == 0:
            page_ends.pop()  # the last key of all: a range after it would only ever be empty
        with _SPLITS_LOCK:
            _SPLITS[memory] = tuple(page_ends)
        return result

    def _ranges(self, *, splits: Sequence[str]) -> Iterator[list[dict]]:
        """The objects under the prefix in key order, a range's at a time. The previous
        listing's page ends split the key space into ranges (StartAfter its start, up to and
        including its end) listed concurrently: 100 sequential round trips were 9 of the 10 s
        of an unchanged tick over 100,000 objects. Ranges partition the key space whatever the
        bucket holds now, so an object is listed once and only once; a range that grew since
        takes more pages, one that shrank fewer. A first listing has no splits: one range."""
        bounds: list[str | None] = [None, *splits, None]
        ranges = list(zip(bounds[:-1], bounds[1:]))
        if len(ranges) == 1:
            yield from self._list_range(start=None, end=None)
            return
        # At most `ahead` ranges listed and not yet read: memory stays a few pages whatever the
        # bucket holds.
        ahead = 2 * self.list_workers
        with ThreadPoolExecutor(self.list_workers, thread_name_prefix="s3-list") as pool:
            pending: deque[Future] = deque()
            todo = iter(ranges)
            try:
                for start, end in itertools.islice(todo, ahead):
                    pending.append(pool.submit(self._collect_range, start=start, end=end))
                while pending:
                    pages = pending.popleft().result()
                    for start, end in itertools.islice(todo, 1):
                        pending.append(pool.submit(self._collect_range, start=start, end=end))
                    yield from pages
            finally:
                for future in pending:
                    future.cancel()

    def _collect_range(self, *, start: str | None, end: str | None) -> list[list[dict]]:
        return list(self._list_range(start=start, end=end))

    def _list_range(self, *, start: str | None, end: str | None) -> Iterator[list[dict]]:
        """Pages of the objects with keys after `start` up to and including `end` (None: from
        the first, to the last). Continued by token, never by StartAfter again: the token is
        how every server continues a listing."""
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix, "MaxKeys": PAGE}
        if start is not None:
            args["StartAfter"] = start
        while True:
            page = self.client.list_objects_v2(**args)
            contents = page.get("Contents") or []
            if end is not None and contents and contents[-1]["Key"] >= end:
                # Keys come in UTF-8 byte order, which is code point order: str comparison.
                yield contents[: bisect.bisect_right(contents, end, key=_key)]
                return
            yield contents
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            if token == args.get("ContinuationToken"):
                raise SourceUnavailable(f"{self.describe()}: list: the server repeated its continuation token")
            args.pop("StartAfter", None)
            args["ContinuationToken"] = token

    def open(self, knowledge_base: str, path: str, *, token: str | None = None) -> BinaryIO:
        args = {"Bucket": self.bucket, "Key": self.key(knowledge_base, path)}
        if token:
            args["IfMatch"] = token
        try:
            response = self.client.get_object(**args)
        except Exception as exc:
            raise self.translate(exc, f"read {knowledge_base}/{shown(path)}") from None
        return _Body(self, response["Body"], int(response.get("ContentLength") or 0))

    def upload(self, paths: list[Path], *, knowledge_base: str = DEFAULT_KB) -> list[tuple[str, str, str]]:
        validate_kb_name(knowledge_base)
        out = []
        for file, rel in ingest_plan(paths):
            try:
                # upload_file switches to a multipart upload past 8 MB; the object appears only
                # when the upload completes, so the sensor never sees half of it.
                self.client.upload_file(str(file), self.bucket, self.key(knowledge_base, rel))
            except Exception as exc:
                raise self.translate(exc, f"upload {file}") from None
            out.append((document_id(knowledge_base, rel), knowledge_base, rel))
        return out

    def delete(self, knowledge_base: str, path: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(knowledge_base, path))
        except Exception as exc:
            raise self.translate(exc, f"delete {knowledge_base}/{shown(path)}") from None

    def translate(self, exc: BaseException, doing: str) -> BaseException:
        out = self._translate(exc, doing)
        if isinstance(out, SourceMisconfigured) and self._client is not None:
            # The operator may fix the credentials file or profile, which no key of ours sees.
            _forget_client(self._client)
        return out

    def _translate(self, exc: BaseException, doing: str) -> BaseException:
        """One line an operator can act on, in our exception types: a setting to fix
        (SourceMisconfigured), an outage outlasting the retries (SourceUnavailable), a newer
        upload (SourceChanged), a deleted object (FileNotFoundError)."""
        import botocore.exceptions as bex

        where = self.describe()
        if isinstance(exc, bex.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in ("PreconditionFailed",) or status == 412:
                return SourceChanged(f"{where}: {doing}: changed since it was listed")
            if code == "NoSuchBucket":
                return SourceMisconfigured(f"{where}: bucket {self.bucket!r} does not exist; check RAG_INBOX_URL "
                                           "(and AWS_ENDPOINT_URL)")
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return FileNotFoundError(f"{where}: {doing}: no such object")
            if code in _CREDENTIALS or status in (401, 403):
                return SourceMisconfigured(f"{where}: access refused ({code or status}); {_CREDENTIALS_HINT}")
            if status >= 500 or code in ("SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError"):
                return SourceUnavailable(f"{where}: {doing}: {code or status} after retries")
            return SourceMisconfigured(f"{where}: {doing}: {code or status}: {error.get('Message', '')}".rstrip(": "))
        if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError)):
            return SourceMisconfigured(f"{where}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
                                       "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
        if isinstance(exc, bex.ProfileNotFound):
            return SourceMisconfigured(f"{where}: {exc}; check AWS_PROFILE")
        if isinstance(exc, (bex.NoRegionError, bex.InvalidEndpointConfigurationError, bex.InvalidRegionError)):
            return SourceMisconfigured(f"{where}: {exc}; set AWS_REGION (and AWS_ENDPOINT_URL for a local server)")
        if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectionClosedError, bex.ConnectTimeoutError,
                            bex.ReadTimeoutError, bex.HTTPClientError, ConnectionError, TimeoutError)):
            return SourceUnavailable(f"{where}: {doing}: unreachable after retries ({exc}); check AWS_ENDPOINT_URL")
        if isinstance(exc, bex.BotoCoreError):
            return SourceUnavailable(f"{where}: {doing}: {exc}")
        return exc


def _key(obj: dict) -> str:
    return obj["Key"]


class _EntryReader:
    """A listing's objects into a Scan. Per folder, the knowledge base and the checks on its
    segments are worked out once: at 100,000 objects each per-object step counts."""

    def __init__(self, *, prefix: str, result: Scan, max_file_bytes: int | None) -> None:
        self.prefix, self.result, self.max_file_bytes = prefix, result, max_file_bytes
        self.bad_kbs: set[str] = set()
        # folder -> (ignored, knowledge base, its name is valid, an empty/'.'/'..' segment)
        self.folders: dict[str, tuple[bool, str, bool, bool]] = {}

    def read(self, contents: list[dict]) -> None:
        cut, folders, result, limit = len(self.prefix), self.folders, self.result, self.max_file_bytes
        files, refused = result.files, result.refused
        for obj in contents:
            rel = obj["Key"][cut:]
            folder, slash, name = rel.rpartition("/")
            if not name:
                continue  # a folder marker, as consoles create (or the prefix itself): not an upload
            if is_ignored(name):
                continue  # hidden and temporary names, as in the folder
            if not slash:
                result.problems.append(f"{shown(rel)}: objects belong under a knowledge base, e.g. "
                                       f"{self.prefix}{DEFAULT_KB}/{shown(rel)}")
                continue
            verdict = folders.get(folder)
            if verdict is None:
                verdict = folders[folder] = _folder_verdict(folder)
            ignored, kb, kb_ok, bad_segment = verdict
            if ignored:
                continue
            path = rel[len(kb) + 1:]
            if not kb_ok:
                if kb not in self.bad_kbs:
                    self.bad_kbs.add(kb)
                    result.problems.append(f"{shown(kb)}: not a valid knowledge base name (up to 64 letters, digits, "
                                           "'.', '_', '-')")
                continue
            if bad_segment:
                # A folder would never hold such a path; a key may, and it must not read as one.
                result.problems.append(f"{kb}/{shown(path)}: empty, '.' or '..' path segments are not accepted; rename it")
                continue
            mtime_ns = int(obj["LastModified"].timestamp() * 1_000_000_000)
            stat = FileStat(kb, path, int(obj["Size"]), mtime_ns, obj.get("ETag") or "")
            if limit is not None and stat.size > limit:
                refused[(kb, path)] = Refusal(stat, over_file_limit(stat.size, limit))
                continue
            files[(kb, path)] = stat


def _folder_verdict(folder: str) -> tuple[bool, str, bool, bool]:
    parts = folder.split("/")
    return (any(is_ignored(part) for part in parts if part), parts[0], bool(KB_NAME_RE.match(parts[0])),
            any(part in ("", ".", "..") for part in parts[1:]))


class _Body:
    """A GetObject body as a bounded binary stream with its size known before reading; a
    connection lost mid-read is the source's outage, not the document's fault."""

    def __init__(self, source: S3Source, body: Any, size: int) -> None:
        self._source, self._body, self.size = source, body, size

    def read(self, amount: int | None = -1) -> bytes:
        try:
            return self._body.read(None if amount is None or amount < 0 else amount)
        except Exception as exc:
            raise self._source.translate(exc, "read") from None

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> "_Body":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Clients by timeouts and AWS_* environment. The sensor's resources, so its source, are built
# anew each tick, and building a client (botocore loads and indexes the service model) took
# 0.2-0.5 s of an unchanged tick. Dropped when a request says the configuration is wrong.
_CLIENTS: dict[tuple, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def shared_client(*, timeouts: tuple[float, float]) -> Any:
    """The process's client for this configuration (boto3 clients are thread-safe)."""
    key = (timeouts, tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
    if client is None:
        client = make_client(connect_timeout=timeouts[0], read_timeout=timeouts[1])
        with _CLIENTS_LOCK:
            client = _CLIENTS.setdefault(key, client)
    return client


def _forget_client(client: Any) -> None:
    with _CLIENTS_LOCK:
        for key in [key for key, value in _CLIENTS.items() if value is client]:
            del _CLIENTS[key]


def make_client(*, connect_timeout: float, read_timeout: float) -> Any:
    """An S3 client from the standard AWS configuration. Retries: botocore's standard mode
    (exponential backoff with jitter on throttling, 5xx and connection errors), AWS_MAX_ATTEMPTS
    attempts (default 5); short connect and read timeouts (our settings) so an outage fails a
    call in seconds. With a custom endpoint (MinIO, SeaweedFS) path-style addressing: their
    hostnames rarely resolve per bucket. The AWS_* variables are AWS's own configuration, read
    here only to give botocore other defaults than its own, as boto3 would read them itself."""
    import boto3
    from botocore.config import Config

    custom = bool(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    config = Config(
        retries={"mode": os.environ.get("AWS_RETRY_MODE") or "standard",
                 "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS") or 5)},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        s3={"addressing_style": "path"} if custom else None,
    )
    import botocore.session

    session = botocore.session.get_session()
    # botocore parses every timestamp with dateutil's general-purpose parser: 0.45 ms per key,
    # 45 of 75 s of listing 100,000 objects (profiled). S3 writes ISO 8601 in listings, which
    # the standard library reads directly; anything else still goes to botocore's parser.
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_timestamp)
    try:
        client = boto3.session.Session(botocore_session=session).client("s3", config=config)
    except Exception as exc:
        raise _client_error(exc) from None
    client.meta.events.register("before-parse.s3.ListObjectsV2", _lean_listing, unique_id=_LEAN_LISTING)
    global _BOTOCORE_200_CHECK
    _BOTOCORE_200_CHECK = _botocore_200_check()
    if _BOTOCORE_200_CHECK is not None:
        # botocore parses every 200 response whole to look for an error document, before any
        # handler of ours runs; for a listing page that is our reader's job, done on the way.
        client.meta.events.unregister("before-parse.s3.*", _BOTOCORE_200_CHECK)
        client.meta.events.register_first("before-parse.s3.*", _200_check_but_listing)
    return client


_LEAN_LISTING = "rag-pipeline-lean-listing"
_PLAIN_CONTENTS = {field: re.compile(rb"<%s>([^<]*)</%s>" % (field, field))
                   for field in (b"Key", b"Size", b"ETag", b"LastModified")}


def _lean_listing(response_dict: dict, customized_response_dict: dict, **kwargs: Any) -> None:
    """A listing page's objects, read straight from the bytes into the four fields we use;
    botocore then parses only the rest of the page (continuation token, counts). Its generic
    parser walked every field of every object through the service model (17 of 37 s of a
    100,000-object listing, profiled), and its check for an error inside a 200 parsed every
    page once more (a third of what was left). Keys are still URL-decoded by botocore's own
    handler, which runs after this on the merged result."""
    body = response_dict.get("body")
    if response_dict.get("status_code") != 200 or not body:
        return
    page = _read_plain_page(body)
    if page is None:
        # Not the plain form read above (CDATA, entities in keys, another server's layout, an
        # error document, a cut-off body): botocore's check for an error in a 200, then a parser.
        if _BOTOCORE_200_CHECK is not None:
            _BOTOCORE_200_CHECK(response_dict=response_dict, **kwargs)
            if response_dict.get("status_code") != 200:
                return
        page = _parse_page(body)
    contents, rest = page
    if contents:
        customized_response_dict["Contents"] = contents
        response_dict["body"] = rest


def _read_plain_page(body: bytes) -> tuple[list[dict], bytes] | None:
    """(objects, the page without them) of a ListBucketResult as S3, MinIO and SeaweedFS
    write it: each object's fields as plain elements of its own, keys URL-encoded. None if the
    page is anything else. Each field occurs once per object and nowhere else in a listing, so
    the n-th Key, Size, ETag and LastModified are the n-th object's."""
    if not body.rstrip().endswith(b"</ListBucketResult>") or b"<![CDATA[" in body:
        return None  # a complete listing, nothing a pattern could misread
    pieces = body.split(b"<Contents>")
    fields = [pattern.findall(body) for pattern in _PLAIN_CONTENTS.values()]
    if any(len(values) != len(pieces) - 1 for values in fields):
        return None
    rest = [pieces[0]]
    for piece in pieces[1:]:
        end = piece.find(b"</Contents>")
        if end < 0:
            return None
        rest.append(piece[end + len(b"</Contents>"):])
    stamps: dict[bytes, dt.datetime] = {}  # S3 stamps repeat: parsed once each
    contents = []
    for key, size, etag, modified in zip(*fields):
        if b"&" in key:
            return None  # a key not URL-encoded by the server: the XML parser unescapes it
        stamp = stamps.get(modified)
        if stamp is None:
            stamp = stamps[modified] = _timestamp(modified.decode())
        tag = etag.decode()
        if "&" in tag:
            tag = tag.replace("&quot;", '"').replace("&#34;", '"')
            if "&" in tag:
                return None
        contents.append({"Key": key.decode(), "Size": int(size), "ETag": tag, "LastModified": stamp})
    return contents, b"".join(rest)


_CONTENTS = re.compile(rb"<Contents>.*?</Contents>", re.S)


def _parse_page(body: bytes) -> tuple[list[dict], bytes]:
    # Any well-formed listing, with the standard library's C XML parser.
    root = ElementTree.fromstring(body)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    key, size, etag, modified = f"{ns}Key", f"{ns}Size", f"{ns}ETag", f"{ns}LastModified"
    contents = [
        {"Key": obj.findtext(key), "Size": int(obj.findtext(size) or 0), "ETag": obj.findtext(etag) or "",
         "LastModified": _timestamp(obj.findtext(modified) or "")}
        for obj in root.iterfind(f"{ns}Contents")
    ]
    return contents, _CONTENTS.sub(b"", body) if contents else body


def _botocore_200_check() -> Any:
    import botocore.handlers

    return getattr(botocore.handlers, "_handle_200_error", None)


_BOTOCORE_200_CHECK: Any = None


def _200_check_but_listing(operation_model: Any = None, **kwargs: Any) -> None:
    # The listing's own reader does this check (`_lean_listing`); everything else as before.
    if getattr(operation_model, "name", None) != "ListObjectsV2":
        _BOTOCORE_200_CHECK(operation_model=operation_model, **kwargs)


def _timestamp(value: str) -> dt.datetime:
    # Listings say ISO 8601, headers (GetObject, HeadObject) RFC 7231 dates.
    try:
        return dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        pass
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        from botocore.utils import parse_timestamp

        return parse_timestamp(value)


def _client_error(exc: BaseException) -> BaseException:
    import botocore.exceptions as bex

    if isinstance(exc, bex.ProfileNotFound):
        return SourceMisconfigured(f"{exc}; check AWS_PROFILE")
    if isinstance(exc, (bex.NoRegionError, bex.InvalidEndpointConfigurationError)):
        return SourceMisconfigured(f"{exc}; set AWS_REGION (and AWS_ENDPOINT_URL for a local server)")
    if isinstance(exc, ValueError):  # a malformed AWS_ENDPOINT_URL
        return SourceMisconfigured(f"cannot build the S3 client: {exc}; check AWS_ENDPOINT_URL")
    return exc
