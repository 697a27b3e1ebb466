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
    # A run over a range of N document partitions otherwise stores N "materialization planned"
    # events per asset at creation, each resolving the range by reading every partition key:
    # profiled as the daemon's main cost while it queued a 5,000-document drop. With this
    # Dagster setting it stores one per asset, naming the range. What it gives up (Dagster
    # marking the partitions failed when the whole run fails) our own status, checks and
    # retries already cover. Read by the event log when a run is created.
    os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")
    # A step over a range of N partitions stores N materializations of its asset; with this
    # Dagster setting they go to storage as one multi-row insert (per 1,000) instead of N round
    # trips. Measured with benchmarks/ingest.py at 1,000 documents: cold ingest 36.8 s -> 31.5 s.
    # Read by the instance as a run process stores its events.
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")
    # A step waiting for a pool slot sleeps instead of spinning on a core.
    from rag_pipeline.defs import dagster_internals

    dagster_internals.install_pool_wait()
