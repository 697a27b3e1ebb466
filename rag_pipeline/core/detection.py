"""What changed in the landing zone (new, changed, deleted), and which documents need a run.

Used by the sensor and by `rag-pipeline run`, so both see uploads the same way, whatever the
source (`core/sources`). An upload is looked at only when its (size, change token) differs from
what we recorded (the mtime for a file, the ETag for an object), so a tick over an unchanged
landing zone is one listing and one query. A changed file is hashed here; a changed object is
registered from its listing unread, and downloaded once, by the run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from rag_pipeline.core import records
from rag_pipeline.core.batching import batched
from rag_pipeline.core.db import documents
from rag_pipeline.core.identity import document_id, sha256_stream
from rag_pipeline.core.sources import SQL_TOKEN_PREFIX, Scan, Source, SourceChanged, SourceError, as_source, owns, watch_mark


@dataclass
class Detection:
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    problems: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # newly refused unread: {document id: reason}
    # The digest of a listing registered in full ("" if anything is left to look at next time).
    listing_digest: str = ""
    # Files to register that this call left for the next (its budget ran out), and their total.
    waiting: int = 0
    to_register: int = 0
    # Seconds spent per phase (list, compare, hash, register), for the tick log.
    seconds: dict[str, float] = field(default_factory=dict)
    # Deletions the mass-deletion guard holds (`max_delete_fraction`), and why.
    held_deletions: int = 0
    held_reason: str = ""
    # The source's change mark taken before this listing, if the listing was registered in
    # full with nothing held back: an equal mark next time means there is nothing to list.
    watch_mark: str = ""
    listing_size: int = 0  # uploads in the listing (or in the previous one, if not listed)
    listed: bool = True  # False: the source's mark said nothing changed, and it was not listed
    settle_wait_seconds: float = 0.0  # of the listing, spent waiting for files about to settle

    @property
    def registered(self) -> int:
        return self.to_register - self.waiting


@dataclass(frozen=True)
class Budget:
    """How much one call registers: a sensor tick must end well inside Dagster's 60 s deadline
    however large the drop, so it hashes and registers at most `files` files for at most
    `seconds` of hashing, and the next tick continues. The clock starts after the listing: a
    listing of 100,000 files took 11 s under a load average of 9, and a clock started before it
    left one file per tick (measured: 80,000 files would have taken 18 days). Partition additions are capped by `files` too
    (Dagster advises at most 25,000 per evaluation)."""
    files: int = 20_000
    seconds: float = 15.0
    # The whole call aims to end within this: hashing gets what listing and comparing left of
    # it, never more than `seconds`, never less than `MIN_HASHING` (so a tick on a machine
    # too loaded to list in time still registers a slice).
    target_seconds: float = float("inf")
    # Dagster deletes dynamic partitions one statement per key.
    partition_deletes: int = 2_000
    # Check evaluations reported by a tick (overdue, parked): the daemon stores each one alone.
    reports: int = 200


MIN_HASHING = 2.0

UNBOUNDED = Budget(files=10**12, seconds=float("inf"), partition_deletes=10**12, reports=10**12)


def listing_digest(listing: Scan) -> str:
    """What the listing says, in one hash: every entry with its size, time and state. A file
    still settling counts by name only (its growth changes nothing until it settles, and then
    its state does), so an unchanged listing is recognised even while a file is being written."""
    digest = hashlib.sha256()
    entries = [(f.knowledge_base, f.path, f.size, _stamp(f), "file") for f in listing.files.values()]
    entries += [(r.stat.knowledge_base, r.stat.path, r.stat.size, _stamp(r.stat), "refused") for r in listing.refused.values()]
    entries += [(kb, path, 0, "0", "held") for kb, path in listing.held]
    for kb, path, size, stamp, state in sorted(entries):
        digest.update(f"{kb}\x00{path}\x00{size}\x00{stamp}\x00{state}\n".encode())
    return digest.hexdigest()


def _stamp(stat) -> str:  # noqa: ANN001
    # A file's digest entry is exactly what it was before sources had tokens.
    return str(stat.mtime_ns) if stat.token is None else f"{stat.mtime_ns}\x00{stat.token}"


def _unchanged(prior: records.Known, stat) -> bool:  # noqa: ANN001
    """Same size and change token as recorded: not read again. An object's token is its ETag
    (its LastModified changes when identical bytes are uploaded again); a file's is its mtime."""
    if prior.size_bytes != stat.size:
        return False
    if stat.token is not None:
        return prior.change_token == stat.token
    return prior.mtime_ns == stat.mtime_ns


def listed_version(stat) -> str:  # noqa: ANN001
    """The version of an upload registered unread: its size and change token, until the run
    that reads it records the sha256 of the bytes (`records.resolve_version`)."""
    digest = hashlib.sha256(f"{stat.size}\x00{stat.token}".encode()).hexdigest()
    return records.LISTED_PREFIX + digest[: 64 - len(records.LISTED_PREFIX)]


def refusal_version(reason: str) -> str:
    """The version recorded for a file refused unread: it has no content hash, and a different
    reason (a link retargeted into a size refusal) is a different version."""
    return records.REFUSED_PREFIX + hashlib.sha256(reason.encode()).hexdigest()[: 64 - len(records.REFUSED_PREFIX)]


def detect(
    engine: Engine, source: Source | Path, min_age_seconds: float = 0.0, previous_digest: str | None = None,
    max_file_bytes: int | None = None, *, budget: Budget = UNBOUNDED, confirm_deletions: bool = False,
    previous_mark: str | None = None, previous_size: int = 0,
) -> Detection:
    """Register what changed in `source` (a folder path is taken as the landing directory),
    within `budget`. With the digest of the previous, fully registered listing, an identical
    listing costs no database work at all. A source that cannot be listed raises SourceError:
    nothing is registered or tombstoned on a listing we do not have.

    Files held back (still settling, not stat-able) hold back only themselves: everything else
    in the listing is registered now. A listing is saved as registered (a non-empty
    `listing_digest`) only when nothing in it is left to look at: no folder unlisted, no file
    that could not be read, no file left over by the budget.

    Only the source's own documents are compared with its listing (`sources.owns`: a SQL
    source's rows carry its name in their change token), so a listing never tombstones another
    source's documents. A source with `max_delete_fraction` (a SQL source) whose listing loses
    more than that share of its documents holds those deletions (`held_deletions`,
    `held_reason`) unless `confirm_deletions`: an empty replica or a broken query looks exactly
    like a purge.

    `previous_mark`: the `watch_mark` of the previous listing (digest `previous_digest`, with
    `previous_size` uploads); if the source's mark is still the same, nothing changed and
    nothing is listed."""
    clock = time.monotonic()
    source = as_source(source)
    # Taken before listing: a change during the listing moves the mark, so the next call lists.
    mark = watch_mark(source)
    if previous_digest and previous_mark and mark == previous_mark:
        result = Detection(
            unchanged=previous_size, listing_digest=previous_digest, watch_mark=mark, listing_size=previous_size,
            listed=False,
        )
        lap(result, "list", clock)
        return result
    if getattr(source, "incremental", False):
        # A SQL source with updated_at reads only rows updated since the latest registered.
        source.since_ns = records.latest_mtime_ns(engine, source.token_prefix)
    listing = source.list(min_age_seconds=min_age_seconds, max_file_bytes=max_file_bytes)
    files = listing.files
    digest = listing_digest(listing)
    result = Detection(problems=listing.problems, listing_size=len(files) + len(listing.refused),
                       settle_wait_seconds=listing.settle_wait_seconds)
    clock = lap(result, "list", clock)
    if previous_digest and digest == previous_digest:
        # Kept, so the next call takes this shortcut too (left empty, every other idle tick
        # compared the whole listing with the database: 100,000 rows read).
        result.listing_digest = digest
        result.unchanged = len(files)
        result.watch_mark = mark if mark and not listing.held else ""
        return result
    complete = not listing.unlisted
    known = _own_documents(engine, source)
    candidates = []
    for key, stat in files.items():
        prior = known.get(key)
        if (
            prior is not None
            and prior.status not in records.GONE
            and _unchanged(prior, stat)
            # Refused unread last time (a raised size limit now takes it): hash it this time.
            and not prior.version.startswith(records.REFUSED_PREFIX)
        ):
            result.unchanged += 1
        else:
            candidates.append((key, stat, prior))
    result.to_register = len(candidates)
    clock = started = lap(result, "compare", clock)
    spent = sum(result.seconds.values())
    hashing = min(budget.seconds, max(MIN_HASHING, budget.target_seconds - spent))
    hashed = getattr(source, "hashed_on_detection", True)
    first_seen: list[tuple[str, str, str, int, int]] = []
    for done, (key, stat, prior) in enumerate(candidates):
        # At least one file per call, whatever the clock says: a slice always makes progress.
        if done and (done >= budget.files or time.monotonic() - started > hashing):
            result.waiting = len(candidates) - done
            complete = False
            break
        try:
            if hashed:
                # Read once, to hash it; the run reads it again only if it is still this version.
                with source.open(stat.knowledge_base, stat.path, token=stat.token) as fh:
                    version, size = sha256_stream(fh)
            else:
                version, size = listed_version(stat), stat.size
        except (SourceError, OSError) as exc:
            if isinstance(exc, SourceError) and not isinstance(exc, SourceChanged):
                raise  # the source failed, not this upload: the tick fails and nothing is saved
            # Vanished between listing and hashing, or refused. Not saved as registered, so the
            # next tick looks again even if nothing about the file's size or mtime changes.
            result.problems.append(f"{stat.knowledge_base}/{stat.path}: {exc}")
            complete = False
            continue
        if prior is None:
            first_seen.append((stat.knowledge_base, stat.path, version, size, stat.mtime_ns, stat.token))
            continue
        _record(result, records.register_upload(
            engine, stat.knowledge_base, stat.path, version, size, stat.mtime_ns, change_token=stat.token
        ))
    clock = lap(result, "hash", clock)
    inserted = records.register_new_uploads(engine, first_seen)
    for kb, path, version, size, mtime_ns, token in first_seen:
        doc_id = document_id(kb, path)
        if doc_id in inserted:
            result.new.append(doc_id)
        else:  # registered by a concurrent writer between our listing and our insert
            _record(result, records.register_upload(engine, kb, path, version, size, mtime_ns, change_token=token))
    for (kb, path), refusal in listing.refused.items():
        stat = refusal.stat
        change = records.register_upload(
            engine, kb, path, refusal_version(refusal.reason), stat.size, stat.mtime_ns, refusal=refusal.reason,
            change_token=stat.token,
        )
        if change.kind == "unchanged":
            result.unchanged += 1
        else:
            result.refused[change.document_id] = refusal.reason
    live = [
        (key, prior) for key, prior in known.items()
        if prior.status not in records.GONE and owns(source, prior.change_token)
    ]
    gone = [prior.id for (kb, path), prior in live if not listing.may_be_present(kb, path)]
    fraction = getattr(source, "max_delete_fraction", None)
    if gone and fraction is not None and not confirm_deletions and len(gone) > fraction * len(live):
        result.held_deletions = len(gone)
        result.held_reason = (
            f"{source.describe()}: the listing lost {len(gone):,} of {len(live):,} documents, more than "
            f"max_delete_fraction {fraction:g}; deletions held (a broken query or an empty replica looks like this). "
            f"If they are meant: rag-pipeline run --confirm-deletions {getattr(source, 'name', '')}".rstrip()
        )
        result.problems.append(result.held_reason)
        gone, complete = [], False
    if len(gone) > budget.files:
        gone, complete = sorted(gone)[: budget.files], False
    result.deleted = records.mark_deleting(engine, gone)
    result.listing_digest = digest if complete else ""
    # Files still settling become due with no further event: the next call must list.
    result.watch_mark = mark if mark and complete and not listing.held else ""
    lap(result, "register", clock)
    return result


def _own_documents(engine: Engine, source: Source) -> dict[tuple[str, str], records.Known]:
    """The documents `owns(source, ...)` would keep, selected in SQL: with several sources each
    tick loads only its own source's rows."""
    prefix = getattr(source, "token_prefix", None)
    if prefix:
        return records.known_documents(engine, tokens=prefix)
    return records.known_documents(engine, not_tokens=SQL_TOKEN_PREFIX)


def lap(result: Detection, phase: str, since: float) -> float:
    now = time.monotonic()
    result.seconds[phase] = now - since
    return now


def _record(result: Detection, change: records.Change) -> None:
    if change.kind == "changed":
        result.changed.append(change.document_id)
    elif change.kind == "unchanged":
        result.unchanged += 1
    else:
        result.new.append(change.document_id)


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


def mark_requested(engine: Engine, doc_ids: Sequence[str], token: str) -> None:
    """Handed to a run tagged with `token`: stamped, and one attempt spent."""
    ts = records.now()
    with engine.begin() as conn:
        for part in batched(sorted(doc_ids)):
            # Rows locked in id order first (as the write step locks them): a plain multi-row
            # UPDATE locks in whatever order it scans, and could deadlock with a run.
            records.lock_documents(conn, part)
            conn.execute(
                documents.update().where(documents.c.id.in_(part))
                .values(requested_at=ts, request_token=token, attempts=documents.c.attempts + 1)
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


def gather(partition_order: Sequence[str], wanted: Sequence[str]) -> tuple[list[str], list[str]]:
    """Make the wanted keys one contiguous block at the end of the partition order, so that runs
    over key ranges take exactly them: returns (keys to move, i.e. delete and add again; keys to
    add). A range run over scattered keys would take every document between them too, and
    grouping only neighbours made a storm of scattered changes one run each. Keys already in the
    order's tail block of wanted keys stay where they are."""
    wanted_set = set(wanted)
    existing = set(partition_order)
    tail = 0
    for key in reversed(partition_order):
        if key not in wanted_set:
            break
        tail += 1
    in_tail = set(partition_order[len(partition_order) - tail :]) if tail else set()
    to_move = [k for k in partition_order if k in wanted_set and k not in in_tail]
    to_add = [k for k in dict.fromkeys(wanted) if k not in existing]
    return to_move, to_add
