"""The Dagster layer: thin, declarative wrappers around rag_pipeline.core."""

import os

# Every process that creates runs (the daemon, the webserver, `rag-pipeline run`) imports this
# package: the daemon and webserver through the run launcher in dagster.yaml. A run over a
# range of N document partitions otherwise stores N "materialization planned" events per asset
# at creation, each resolving the range by reading every partition key: profiled as the
# daemon's main cost while it queued a 5,000-document drop. With this Dagster setting it stores
# one per asset, naming the range. What it gives up (Dagster marking the partitions failed when
# the whole run fails) our own status, checks and retries already cover.
os.environ.setdefault("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", "true")

# A step over a range of N partitions stores N materializations of its asset; with this Dagster
# setting they go to storage as one multi-row insert (per 1,000) instead of N round trips.
# Measured with benchmarks/ingest.py at 1,000 documents: cold ingest 36.8 s -> 31.5 s.
os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", "1000")

# Every run process imports this package (through the definitions) before it executes a step.
from rag_pipeline.defs import pool_wait  # noqa: E402

pool_wait.install()
