"""Bounded statements: every list of ids or pairs reaches the database in slices.

PostgreSQL refuses a statement with more than 65,535 bound parameters and SQLite one with more
than 32,766, and an `IN (...)` renders one parameter per item (three per item for a
(document, version, chunker) tuple). A backlog of 70,000 overdue documents once failed every
sensor tick that way. Every statement that takes a caller's list goes through `batched`.
"""

from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

# Items per statement. The widest statements are multi-row inserts of 12 columns: 24,000
# parameters, inside both limits. Measured on PostgreSQL: slices of 500 cost 16 ms a statement
# more than slices of 2,000 over 66,000 ids (the round trips, not the work).
BATCH = 2_000


def batched(items: Iterable[T], size: int = BATCH) -> Iterator[list[T]]:
    """Consecutive slices of at most `size` items, in order (sorted input stays sorted, so rows
    locked slice by slice are still locked in one global order)."""
    if size < 1:
        raise ValueError("batch size must be at least 1")
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk
