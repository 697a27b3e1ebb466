"""What changed in the landing directory (new, changed, deleted), and which documents need a run.

Used by the sensor and by `rag-pipeline run`, so both see uploads the same way. A file is
hashed only when its (size, mtime) differs from what we recorded, so a tick over an unchanged
inbox is one directory walk and one query.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from rag_pipeline.core import records
from rag_pipeline.core.db import documents
from rag_pipeline.core.identity import document_id, sha256_stream
from rag_pipeline.core.inbox import Scan, open_inside, scan


@dataclass
class Detection:
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    problems: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # newly refused unread: {document id: reason}
    listing_digest: str = ""


def listing_digest(listing: Scan) -> str:
    digest = hashlib.sha256()
    entries = [*listing.files.values(), *(r.stat for r in listing.refused.values())]
    for f in sorted(entries, key=lambda f: (f.knowledge_base, f.path)):
        refused = (f.knowledge_base, f.path) in listing.refused
        digest.update(f"{f.knowledge_base}\x00{f.path}\x00{f.size}\x00{f.mtime_ns}\x00{refused}\n".encode())
    return digest.hexdigest()


def refusal_version(reason: str) -> str:
    """The version recorded for a file refused unread: it has no content hash, and a different
    reason (a link retargeted into a size refusal) is a different version."""
    return records.REFUSED_PREFIX + hashlib.sha256(reason.encode()).hexdigest()[: 64 - len(records.REFUSED_PREFIX)]


def detect(
    engine: Engine, inbox: Path, min_age_seconds: float = 0.0, previous_digest: str | None = None,
    max_file_bytes: int | None = None,
) -> Detection:
    """Register what changed. With the digest of the previous, fully registered listing, an
    identical listing costs no database work at all."""
    listing = scan(inbox, min_age_seconds, max_file_bytes=max_file_bytes)
    files = listing.files
    # A listing with files held back (settling, unreadable) or folders unlisted is never saved as
    # the cursor: what happens to those files must be looked at on the next tick.
    digest = "" if listing.held or listing.unlisted else listing_digest(listing)
    result = Detection(problems=listing.problems, listing_digest=digest)
    if previous_digest is not None and result.listing_digest == previous_digest:
        result.unchanged = len(files)
        return result
    known = records.known_documents(engine)
    first_seen: list[tuple[str, str, str, int, int]] = []
    for key, stat in files.items():
        prior = known.get(key)
        if (
            prior is not None
            and prior.status not in records.GONE
            and prior.size_bytes == stat.size
            and prior.mtime_ns == stat.mtime_ns
            # Refused unread last time (a raised size limit now takes it): hash it this time.
            and not prior.version.startswith(records.REFUSED_PREFIX)
        ):
            result.unchanged += 1
            continue
        try:
            with open_inside(inbox, stat.knowledge_base, stat.path) as fh:
                version, size = sha256_stream(fh)
        except (OSError, PermissionError) as exc:
            # Vanished between listing and hashing, or refused. No digest for this listing, so
            # the next tick looks again even if nothing about the file's size or mtime changes.
            result.problems.append(f"{stat.knowledge_base}/{stat.path}: {exc}")
            result.listing_digest = ""
            continue
        if prior is None:
            first_seen.append((stat.knowledge_base, stat.path, version, size, stat.mtime_ns))
            continue
        change = records.register_upload(engine, stat.knowledge_base, stat.path, version, size, stat.mtime_ns)
        if change.kind == "new":
            result.new.append(change.document_id)
        elif change.kind == "changed":
            result.changed.append(change.document_id)
        else:
            result.unchanged += 1
    inserted = records.register_new_uploads(engine, first_seen)
    for kb, path, version, size, mtime_ns in first_seen:
        doc_id = document_id(kb, path)
        if doc_id in inserted:
            result.new.append(doc_id)
            continue
        # Registered by a concurrent writer between our listing and our insert.
        change = records.register_upload(engine, kb, path, version, size, mtime_ns)
        if change.kind == "changed":
            result.changed.append(change.document_id)
        elif change.kind == "unchanged":
            result.unchanged += 1
        else:
            result.new.append(change.document_id)
    for (kb, path), refusal in listing.refused.items():
        stat = refusal.stat
        change = records.register_upload(
            engine, kb, path, refusal_version(refusal.reason), stat.size, stat.mtime_ns, refusal=refusal.reason
        )
        if change.kind == "unchanged":
            result.unchanged += 1
        else:
            result.refused[change.document_id] = refusal.reason
    gone = [
        prior.id for (kb, path), prior in known.items()
        if prior.status not in records.GONE and not listing.may_be_present(kb, path)
    ]
    result.deleted = records.mark_deleting(engine, gone)
    return result


def pending_documents(
    engine: Engine, requested_before: dt.datetime | None, status: str = records.PENDING
) -> list[str]:
    """Documents in `status` not requested since `requested_before` (None: all of them)."""
    query = sa.select(documents.c.id).where(documents.c.status == status)
    if requested_before is not None:
        query = query.where(
            (documents.c.requested_at.is_(None)) | (documents.c.requested_at < requested_before)
        )
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(query)]


def mark_requested(engine: Engine, doc_ids: Sequence[str]) -> None:
    """Handed to a run: stamped, and one attempt spent."""
    ts = records.now()
    ids = sorted(doc_ids)
    with engine.begin() as conn:
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            # Rows locked in id order first (as the write step locks them): a plain multi-row
            # UPDATE locks in whatever order it scans, and could deadlock with a run.
            records.lock_documents(conn, part)
            conn.execute(
                documents.update().where(documents.c.id.in_(part)).values(requested_at=ts, attempts=documents.c.attempts + 1)
            )


def plan_batches(partition_order: Sequence[str], wanted: set[str], max_per_batch: int) -> list[list[str]]:
    """Group wanted keys into runs of keys that are adjacent in partition order.

    A Dagster run covers a contiguous partition range; grouping by adjacency means a run never
    includes a document that didn't need it. New uploads are appended together, so they batch.
    """
    batches: list[list[str]] = []
    current: list[str] = []
    for key in partition_order:
        if key in wanted:
            current.append(key)
            if len(current) >= max_per_batch:
                batches.append(current)
                current = []
        elif current:
            batches.append(current)
            current = []
    if current:
        batches.append(current)
    return batches
