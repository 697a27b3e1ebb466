"""Per-document progress of the steps, for whoever watches (the CLI's progress bar).

A run covers up to RAG_DOCS_PER_RUN documents, so counting runs moves a bar once per 2,500
documents. The steps report here as they go instead; with nobody listening it costs a list
check. Listeners are called from the step's thread (and the embedding threads), so they must
be thread-safe (tqdm's update is).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
Listener = Callable[[str, float], None]
_listeners: list[Listener] = []


def advance(step: str, documents: float = 1.0) -> None:
    """`documents` (a fraction for part of a batch) went through `step`."""
    for listener in list(_listeners):
        listener(step, documents)


def each(step: str, items: Iterable[T]) -> Iterator[T]:
    """`items`, reporting each one done when the loop asks for the next (also after a continue)."""
    for item in items:
        yield item
        advance(step)


@contextmanager
def observe(listener: Listener) -> Iterator[None]:
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
