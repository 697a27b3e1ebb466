"""An S3-compatible bucket as the landing zone: `s3://BUCKET/PREFIX`, keys `PREFIX/<kb>/<path>`.

Credentials, endpoint, region and profile come from boto3's standard configuration
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_PROFILE, the
config files), so AWS S3, MinIO, SeaweedFS, R2 and GCS's S3 interface are all the same code.
Only ListObjectsV2, HeadObject, GetObject, PutObject (multipart for large uploads) and
DeleteObject are used. boto3 is imported when the client is first built: the code server
imports this module only when the landing zone is a bucket.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import os
import re
import threading
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
                self._client = make_client(connect_timeout=self.timeouts[0], read_timeout=self.timeouts[1])
            return self._client

    def key(self, knowledge_base: str, path: str) -> str:
        return f"{self.prefix}{knowledge_base}/{path}"

    def list(self, *, min_age_seconds: float = 0.0, max_file_bytes: int | None = None) -> Scan:
        # An object appears only once its upload completed (S3 writes are atomic), so nothing is
        # ever half-written: no settling wait, and no clock skew between us and the server.
        result = Scan({}, [], set(), [])
        bad_kbs: set[str] = set()
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for obj in page.get("Contents", ()):
                    self._entry(result, obj, max_file_bytes, bad_kbs)
        except Exception as exc:
            raise self.translate(exc, "list") from None
        return result

    def _entry(self, result: Scan, obj: dict, max_file_bytes: int | None, bad_kbs: set[str]) -> None:
        rel = obj["Key"][len(self.prefix):]
        if not rel or rel.endswith("/"):
            return  # a folder marker, as consoles create: not an upload
        parts = rel.split("/")
        if any(is_ignored(part) for part in parts if part):
            return  # hidden and temporary names, as in the folder
        if len(parts) == 1:
            result.problems.append(f"{shown(rel)}: objects belong under a knowledge base, e.g. {self.prefix}{DEFAULT_KB}/{shown(rel)}")
            return
        kb, path = parts[0], "/".join(parts[1:])
        if not KB_NAME_RE.match(kb):
            if kb not in bad_kbs:
                bad_kbs.add(kb)
                result.problems.append(f"{shown(kb)}: not a valid knowledge base name (up to 64 letters, digits, '.', '_', '-')")
            return
        if any(part in ("", ".", "..") for part in parts[1:]):
            # A folder would never hold such a path; a key may, and it must not read as one.
            result.problems.append(f"{kb}/{shown(path)}: empty, '.' or '..' path segments are not accepted; rename it")
            return
        mtime_ns = int(obj["LastModified"].timestamp() * 1_000_000_000)
        stat = FileStat(kb, path, int(obj["Size"]), mtime_ns, obj.get("ETag") or "")
        if max_file_bytes is not None and stat.size > max_file_bytes:
            result.refused[(kb, path)] = Refusal(stat, over_file_limit(stat.size, max_file_bytes))
            return
        result.files[(kb, path)] = stat

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
    return client


_LEAN_LISTING = "rag-pipeline-lean-listing"
_CONTENTS = re.compile(rb"<Contents>.*?</Contents>", re.S)


def _lean_listing(response_dict: dict, customized_response_dict: dict, **_: Any) -> None:
    """A listing page's objects, read with the standard library's C XML parser into the four
    fields we use; botocore then parses only the rest of the page (continuation token, counts).
    Its generic parser walked every field of every object through the service model: 17 of 37
    s of a 100,000-object listing (profiled). Error responses are left to botocore; keys are
    still URL-decoded by botocore's own handler, which runs after this on the merged result."""
    body = response_dict.get("body")
    if response_dict.get("status_code") != 200 or not body:
        return
    root = ElementTree.fromstring(body)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    key, size, etag, modified = f"{ns}Key", f"{ns}Size", f"{ns}ETag", f"{ns}LastModified"
    contents = [
        {"Key": obj.findtext(key), "Size": int(obj.findtext(size) or 0), "ETag": obj.findtext(etag) or "",
         "LastModified": _timestamp(obj.findtext(modified) or "")}
        for obj in root.iterfind(f"{ns}Contents")
    ]
    if contents:
        customized_response_dict["Contents"] = contents
        response_dict["body"] = _CONTENTS.sub(b"", body)


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
