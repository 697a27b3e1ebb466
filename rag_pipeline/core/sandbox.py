"""Third-party parsers run in a child process with a time limit and a memory cap.

pypdf, pdfium, python-docx, python-pptx, openpyxl, Pillow, Tesseract and BeautifulSoup are
large parsers of hostile input: a crafted file can make one loop for minutes or inflate to
gigabytes. In the run's own process that would stall or kill
every document in the batch. In the child, the file fails with a reason naming the limit, the
child is replaced, and the batch goes on. Our own linear parsers (text, Markdown) and pandas'
C tokenizer (CSV, JSON) stay in-process: for them a process hop would cost more than it guards.

The child is `python -m rag_pipeline.core.sandbox`, not a multiprocessing worker: spawn would
re-import the caller's `__main__` (re-running a user's unguarded script) and fork would copy a
run process's threads and locks. It starts on the first file that needs it, so text-only runs
never pay for it. Requests and replies are length-prefixed JSON plus the raw bytes: nothing the
child sends back is unpickled.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import resource
import selectors
import signal
import struct
import subprocess
import sys
import time
from typing import BinaryIO

from rag_pipeline.core.parsing import Limits, ParsedDocument, ParseError, Section, parse_bytes, parser_key

ISOLATED = frozenset({
    ".pdf", ".docx", ".pptx", ".xlsx", ".eml", ".html", ".htm", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
})
_LEN = struct.Struct(">Q")
READY = b"ready"
STARTUP_SECONDS = 120


class _ChildGone(Exception):
    pass


def _write_frame(out: BinaryIO, payload: bytes) -> None:
    out.write(_LEN.pack(len(payload)))
    out.write(payload)
    out.flush()


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    chunks = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_frame(stream: BinaryIO) -> bytes:
    (length,) = _LEN.unpack(_read_exact(stream, _LEN.size))
    return _read_exact(stream, length)


class ParserSandbox:
    """`parse(data, filename)` with the guarantees above. Use as a context manager."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._child: subprocess.Popen | None = None
        self.restarts = 0

    def parse(self, data: bytes, filename: str) -> ParsedDocument:
        if self.limits.parse_timeout_seconds <= 0 or parser_key(data, filename) not in ISOLATED:
            return parse_bytes(data, filename, self.limits)
        try:
            reply = self._ask(data, filename)
        except TimeoutError:
            self._discard()
            raise ParseError(
                f"parsing took longer than {self.limits.parse_timeout_seconds:g} s "
                "(RAG_PARSE_TIMEOUT_SECONDS): the file is too complex, or crafted to stall the parser"
            ) from None
        except _ChildGone:
            self._discard()
            raise ParseError(
                f"the parser process died on this file (more than {self.limits.parse_memory_mb} MB of memory, "
                "RAG_PARSE_MEMORY_MB, or a crash in the parser library)"
            ) from None
        if "error" in reply:
            raise ParseError(reply["error"])
        return ParsedDocument(
            [Section(**s) for s in reply["sections"]], reply["parser"], reply["title"], reply["info"]
        )

    def _ask(self, data: bytes, filename: str) -> dict:
        child = self._start()
        header = json.dumps({"filename": filename, "limits": dataclasses.asdict(self.limits)}).encode()
        try:
            _write_frame(child.stdin, header)
            _write_frame(child.stdin, data)
        except (BrokenPipeError, OSError) as exc:
            raise _ChildGone from exc
        deadline = time.monotonic() + self.limits.parse_timeout_seconds
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ)
            # Only the reply's first byte is waited for: the child writes the whole frame at once.
            if not selector.select(max(0.0, deadline - time.monotonic())):
                raise TimeoutError
        try:
            return json.loads(_read_frame(child.stdout))
        except (EOFError, OSError, ValueError) as exc:
            raise _ChildGone from exc

    def _start(self) -> subprocess.Popen:
        if self._child is None or self._child.poll() is not None:
            self._child = child = subprocess.Popen(
                [sys.executable, "-m", "rag_pipeline.core.sandbox", str(self.limits.parse_memory_mb)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                # Its own process group: OCR runs Tesseract as a grandchild, which must die with it.
                start_new_session=True,
                # One thread per numeric library (and Tesseract) in the child: it parses one
                # file at a time.
                env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_THREAD_LIMIT": "1"},
            )
            # The child says when its imports are done: a file's clock starts after that (the
            # parsers' imports take seconds on a loaded machine, and are no file's fault).
            with selectors.DefaultSelector() as selector:
                selector.register(child.stdout, selectors.EVENT_READ)
                ready = selector.select(STARTUP_SECONDS)
            try:
                if not ready or _read_frame(child.stdout) != READY:
                    raise EOFError
            except (EOFError, OSError) as exc:
                self._discard()
                raise ParseError(f"the parser process did not start within {STARTUP_SECONDS} s") from exc
        return self._child

    def _discard(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            self.restarts += 1
            try:  # a hung parser never returns: it is killed, not asked to stop
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.wait()
            for stream in (child.stdin, child.stdout):
                stream.close()

    def close(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.stdin.close()  # EOF: the child's loop ends
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            child.stdout.close()

    def __enter__(self) -> "ParserSandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cap_memory(megabytes: int) -> None:
    if megabytes <= 0:
        return
    # On top of what the interpreter and its imports already map: the cap measures what parsing
    # one file may take, not what Python itself needs.
    with open("/proc/self/statm") as fh:
        mapped = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = mapped + megabytes * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def _serve(memory_mb: int) -> None:
    # Parsers' imports happen before the cap, so the cap is on parsing alone.
    stdin = sys.stdin.buffer
    # The protocol gets its own copy of fd 1; anything a library prints (on import too) goes to
    # stderr instead.
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for module in ("bs4", "docx", "pypdf", "pptx", "openpyxl", "pandas", "PIL.Image", "pypdfium2", "pytesseract"):
        importlib.import_module(module)
    _cap_memory(memory_mb)
    _write_frame(stdout, READY)
    while True:
        try:
            header = json.loads(_read_frame(stdin))
            data = _read_frame(stdin)
        except EOFError:
            return
        try:
            parsed = parse_bytes(data, header["filename"], Limits(**header["limits"]))
            reply = {
                "sections": [dataclasses.asdict(s) for s in parsed.sections],
                "parser": parsed.parser, "title": parsed.title, "info": parsed.info,
            }
        except ParseError as exc:
            reply = {"error": str(exc)}
        del data
        _write_frame(stdout, json.dumps(reply).encode())


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
