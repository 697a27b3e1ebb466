"""Failed documents shown as failed partitions.

A run covers a range of documents, and Dagster stores a materialization for every partition of
the range when the step returns: a document refused inside an otherwise good run looked
materialized (green). Dagster 1.13 has no public way to fail one partition of a range
(dagster-io/dagster#17836, #15666); its `AssetMaterializationFailure` events are dropped by
the open-source storages (`can_store_asset_failure_events` is False). What it does read, for
the partitions view, the asset's partition counts and asset health, is this: a partition whose
latest materialization attempt (an ASSET_MATERIALIZATION_PLANNED event naming the partition)
belongs to a run that ended FAILURE and was not followed by a materialization is failed
(`partition_status_cache.build_failed_and_in_progress_partition_subset`); it stays failed until
a new materialization of that partition.

So the documents that failed in a run are recorded as one such run: created finished, holding a
planned event per document for each asset whose step stored their materializations just
before, with a failure message that names each file and its reason (what the Runs page shows;
later steps of the same run add theirs as engine events). It is never launched or retried
and holds no hand-off token, so the sensor's bookkeeping ignores it. Indexing the document again
materializes the partition and clears the failure.
"""

from __future__ import annotations

import logging
from typing import Iterable, Sequence

from dagster import AssetKey, DagsterInstance, DagsterRun, DagsterRunStatus, RunsFilter

from rag_pipeline.core.batching import batched
from rag_pipeline.defs.dagster_internals import (
    MAX_RETRIES_TAG,
    WILL_RETRY_TAG,
    AssetMaterializationPlannedData,
    DagsterEvent,
    DagsterEventBatchMetadata,
    generate_event_batch_id,
    make_new_run_id,
)

FAILED_DOCUMENTS_TAG = "rag/failed_documents"
FAILED_IN_RUN_TAG = "rag/failed_in_run"
# Files named in the run's failure message, at most; the rest are counted.
NAMED_IN_MESSAGE = 20


def failure_message(failures: Sequence[tuple[str, str]]) -> str:
    lines = [f"{key}: {reason}" for key, reason in failures[:NAMED_IN_MESSAGE]]
    if len(failures) > NAMED_IN_MESSAGE:
        lines.append(f"... and {len(failures) - NAMED_IN_MESSAGE} more (rag-pipeline status --failed)")
    return f"{len(failures)} document(s) failed:\n" + "\n".join(lines)


def record_failed_documents(
    instance: DagsterInstance, failures: Iterable[tuple[str, str]], assets: Sequence[AssetKey], *,
    job_name: str, failed_in_run: str | None = None,
) -> DagsterRun | None:
    """Mark these partitions failed on `assets`: ((partition key, reason), ...). Returns the
    run recording it (None if there was nothing to record). Call after the materializations it
    overrides are stored; never raises (the documents' own status is already recorded)."""
    failures = list(dict(failures).items())
    if not failures or not assets:
        return None
    try:
        # One record per run whose documents failed: the steps after the first add to it.
        earlier = instance.get_runs(RunsFilter(tags={FAILED_IN_RUN_TAG: failed_in_run}), limit=1) if failed_in_run else []
        if earlier:
            run = earlier[0]
        else:
            tags = {FAILED_DOCUMENTS_TAG: str(len(failures)), MAX_RETRIES_TAG: "0", WILL_RETRY_TAG: "false"}
            if failed_in_run:
                tags[FAILED_IN_RUN_TAG] = failed_in_run
            # Created finished: there is no moment at which the partitions look in progress.
            run = instance.add_run(DagsterRun(
                job_name=job_name, run_id=make_new_run_id(), status=DagsterRunStatus.FAILURE, tags=tags,
            ))
        events = [
            DagsterEvent.build_asset_materialization_planned_event(
                job_name, None, AssetMaterializationPlannedData(asset, partition=key),
            )
            for asset in assets for key, _ in failures
        ]
        # In batches, as Dagster stores a run's planned events (DAGSTER_EVENT_BATCH_SIZE).
        for part in batched(events, 1000):
            batch_id = generate_event_batch_id()
            for i, event in enumerate(part):
                instance.report_dagster_event(
                    event, run.run_id, logging.DEBUG,
                    batch_metadata=DagsterEventBatchMetadata(batch_id, i == len(part) - 1),
                )
        if earlier:
            names = ", ".join(a.to_user_string() for a in assets)
            instance.report_engine_event(f"{names}: {failure_message(failures)}", run)
        else:
            instance.report_run_failed(run, failure_message(failures))
        return run
    except Exception:
        logging.getLogger(__name__).warning("could not mark %d document(s) failed in Dagster", len(failures), exc_info=True)
        return None
