"""The extract step reads a remote source's uploads ahead of the parser: in order, never more
than `concurrent_reads` at once nor READ_AHEAD_BYTES in hand, and a failed read stays that
document's own outcome."""

from __future__ import annotations

import io
import threading
import time
from types import SimpleNamespace

from rag_pipeline.core import pipeline
from rag_pipeline.core.parsing import Limits


class SlowSource:
    """An in-memory landing zone whose reads take a while (a network away)."""

    hashed_on_detection = False

    def __init__(self, files: dict[str, bytes], concurrent_reads: int) -> None:
        self.files, self.concurrent_reads = files, concurrent_reads
        self.lock, self.running, self.most = threading.Lock(), 0, 0

    def open(self, knowledge_base: str, path: str, *, token: str | None = None):  # noqa: ANN201
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.02)
            if path not in self.files:
                raise FileNotFoundError(path)
            stream = io.BytesIO(self.files[path])
            stream.size = len(self.files[path])
            return stream
        finally:
            with self.lock:
                self.running -= 1

    def describe(self) -> str:
        return "memory"


def _rows(sizes: dict[str, int]) -> list:
    return [SimpleNamespace(id=p, knowledge_base="kb", path=p, change_token=None, size_bytes=n) for p, n in sizes.items()]


def test_reads_ahead_in_order_within_the_count():
    files = {f"f{i:02d}.txt": b"x" * (i + 1) for i in range(30)}
    source = SlowSource(files, concurrent_reads=4)
    rows = _rows({p: len(d) for p, d in files.items()}) + _rows({"gone.txt": 1})
    got = list(pipeline._read_ahead(source, rows, Limits()))
    assert [r.path for r, _ in got] == [r.path for r in rows]
    assert [read.data for _, read in got[:-1]] == list(files.values())
    assert isinstance(got[-1][1].error, FileNotFoundError)
    assert 2 <= source.most <= 4


def test_read_ahead_holds_no_more_bytes_than_its_bound(monkeypatch):
    monkeypatch.setattr(pipeline, "READ_AHEAD_BYTES", 100)
    files = {f"f{i}.txt": b"y" * 60 for i in range(6)}
    source = SlowSource(files, concurrent_reads=8)
    got = list(pipeline._read_ahead(source, _rows({p: 60 for p in files}), Limits()))
    assert len(got) == 6 and source.most == 1  # two 60-byte uploads would pass the bound
