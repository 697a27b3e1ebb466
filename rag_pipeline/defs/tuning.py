"""Dagster settings and one patch that our runs need, installed by the processes that need them.

Nothing here happens on import: `install()` is called by whoever creates or executes runs
(`build_definitions`, which code servers and run and step workers load; the event log storage
and the run launcher, which the daemon and webserver build from dagster.yaml; `rag-pipeline
run`). Each line says what it buys; `install()` is idempotent, and a value the operator set in
the environment is kept.
"""

from __future__ import annotations

import os


def install() -> None:
    # A step over a range of N partitions stores N materializations of its asset; with this
    # Dagster setting they go to storage as one multi-row insert (per 1,000) instead of N round
    # trips. Measured with benchmarks/ingest.py at 1,000 documents: cold ingest 36.8 s -> 31.5 s.
    # Read by the instance as a run process stores its events. Dagster offers no other switch
    # for it; the image and compose set it too (Dockerfile, docker-compose.yml).
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")
    # A step waiting for a pool slot sleeps instead of spinning on a core.
    from rag_pipeline.defs import dagster_internals

    dagster_internals.install_pool_wait()
