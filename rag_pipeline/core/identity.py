"""Identity and versioning.

A document is (knowledge base, relative path); its version is the sha256 of its bytes.
Every derived id is a pure function of those, so re-running any step writes the same rows
and the same Qdrant points instead of new ones.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import BinaryIO

_NAMESPACE = uuid.UUID("6f1d3c2a-8b0e-4d59-9a57-3f2f4c1b7e10")
KB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_KB = "default"


def document_id(knowledge_base: str, relative_path: str) -> str:
    # NUL cannot occur in a path or a KB name, so the pair maps to exactly one id.
    return str(uuid.uuid5(_NAMESPACE, f"doc\x00{knowledge_base}\x00{relative_path}"))


# Partition keys: what a person reads and filters on in the Dagster UI. Dagster 1.13 refuses
# keys holding "..." or control characters (`INVALID_PARTITION_SUBSTRINGS`: "..." is its range
# syntax); its UI splits a partition selection on "," and reads "[", "]" and "*" as range and
# wildcard syntax (a key with a comma cannot be selected for a backfill), and "|" joins the
# dimensions of a multi-partition key; leading or trailing spaces are trimmed by that parser.
# Keys are also run tags and rows of unique btree indexes in PostgreSQL (an entry over ~2.7 KB
# fails), so they are bounded.
MAX_PARTITION_KEY = 200
_KEY_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f,\[\]*|]")
_FALLBACK_TAIL = re.compile(r"~[0-9a-f]{12}$")


def partition_key(knowledge_base: str, relative_path: str) -> str:
    """The document's partition key: `kb/path` when Dagster can hold it as it is, else a
    sanitized `kb/path` (the tail kept when too long) ending in `~` and 12 hex digits of a hash
    of the pair: stable, still readable, and never equal to a plain key (no plain key ends that
    way). The document id stays the identity; the key is a name for the UI."""
    key = f"{knowledge_base}/{relative_path}"
    if (
        len(key) <= MAX_PARTITION_KEY and key == key.strip() and "..." not in key
        and not _KEY_FORBIDDEN.search(key) and not _FALLBACK_TAIL.search(key) and _utf8(key)
    ):
        return key
    raw = f"{knowledge_base}\x00{relative_path}".encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(raw).hexdigest()[:12]
    clean = relative_path.encode("utf-8", "replace").decode("utf-8")  # lone surrogates of undecodable names
    clean = re.sub(r"\.{3,}", "_", _KEY_FORBIDDEN.sub("_", clean)).strip()
    room = MAX_PARTITION_KEY - len(knowledge_base) - 1 - len(digest) - 1
    if len(clean) > room:
        clean = "\u2026" + clean[-(room - 1):].lstrip()  # the file name is the part people look for
    return f"{knowledge_base}/{clean}~{digest}"


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def chunk_id(doc_id: str, version: str, chunker: str, index: int) -> str:
    """Also the Qdrant point id: a point can only ever stand for this exact chunk. The chunker
    is part of it, so re-chunking a version builds new points beside the ones being served."""
    return str(uuid.uuid5(_NAMESPACE, f"chunk\x00{doc_id}\x00{version}\x00{chunker}\x00{index}"))


def validate_kb_name(name: str) -> str:
    if not KB_NAME_RE.match(name):
        raise ValueError(
            f"invalid knowledge base name {name!r}: use 1-64 letters, digits, '_', '-' or '.',"
            " starting with a letter or digit"
        )
    return name


def sha256_stream(fh: BinaryIO, limit: int | None = None) -> tuple[str, int]:
    """Hash a stream in blocks; memory stays flat whatever the file size."""
    digest = hashlib.sha256()
    size = 0
    while block := fh.read(1 << 20):
        size += len(block)
        if limit is not None and size > limit:
            raise ValueError(f"file exceeds the size limit of {limit} bytes")
        digest.update(block)
    return digest.hexdigest(), size


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
