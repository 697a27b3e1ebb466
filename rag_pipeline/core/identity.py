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
