"""`rag-pipeline run`'s runs executed side by side, one process each (RAG_RUN_PROCESSES).

A run's steps are a chain executed in one process, and that process was the whole command's
bottleneck: at 5,000 documents `rag-pipeline run` used 1.2 of 2 cores (the CLI 38 CPU
seconds of 50, PostgreSQL and the endpoint the rest). The pending documents are now handed out
in one run per process (`planning.MIN_SPLIT_RUN` documents at least), executed by a pool of
processes forked from one that imported what runs need (`defs/run_preload.py`, as the code
server does). Each worker opens its own instance and resources; embedded Qdrant's writers take
turns on the folder as runs launched by the daemon do. The progress bar hears each document
from every worker.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator, Sequence

from rag_pipeline.settings import Settings

_worker: dict = {}


def _start(settings: Settings, environ: dict[str, str], updates) -> None:  # noqa: ANN001
    # This command's environment (DAGSTER_HOME above all), not the one the forkserver started
    # with: in a process that runs more than one command (a test session) it may be older.
    os.environ.clear()
    os.environ.update(environ)
    _worker.update(settings=settings, updates=updates)


def _run(job_name: str, tags: dict) -> tuple[bool, list[str]]:
    from rag_pipeline.core.progress import observe
    from rag_pipeline.definitions import build_definitions
    from rag_pipeline.instance import get_instance
    from rag_pipeline.pipeline_runner import execute_run

    if "instance" not in _worker:
        _worker.update(instance=get_instance(_worker["settings"]), defs=build_definitions(_worker["settings"]))
    updates = _worker["updates"]
    if updates is None:
        return execute_run(_worker["defs"], _worker["instance"], job_name, tags)
    with observe(lambda step, documents: updates.put((step, documents))):
        return execute_run(_worker["defs"], _worker["instance"], job_name, tags)


def execute(
    settings: Settings, runs: Sequence[tuple[str, dict]], *, processes: int,
    advance: Callable[[str, float], None] | None = None,
) -> Iterator[tuple[int, tuple[bool, list[str]]]]:
    """Execute `runs` ((job name, tags) each) in up to `processes` processes; yields (index of
    the run, (succeeded, its failed steps' lines)) as each ends. A worker that dies fails its
    run with one line, as a step failure would; its documents wait for the next `run`."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["rag_pipeline.defs.run_preload"])
    updates = context.Queue() if advance is not None else None
    with ProcessPoolExecutor(
        max_workers=min(processes, len(runs)), mp_context=context, initializer=_start, initargs=(settings, dict(os.environ), updates),
    ) as pool:
        pending = {pool.submit(_run, job, tags): index for index, (job, tags) in enumerate(runs)}
        while pending:
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(updates, advance)
            for future in done:
                index = pending.pop(future)
                try:
                    yield index, future.result()
                except BrokenProcessPool as exc:
                    yield index, (False, [f"a run's worker process died ({exc}); its documents wait for the next run"])
        _drain(updates, advance)


def _drain(updates, advance) -> None:  # noqa: ANN001
    while updates is not None:
        try:
            step, documents = updates.get_nowait()
        except queue.Empty:
            return
        advance(step, documents)
