"""The inbox sensor: new and changed uploads become partitions and batched runs."""


import datetime as dt
import json
from typing import Sequence

from dagster import (
    AddDynamicPartitionsRequest,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from rag_pipeline.core import detection, records
from rag_pipeline.defs.jobs import index_documents_job
from rag_pipeline.defs.partitions import documents_partitions
from rag_pipeline.defs.resources import DatabaseResource, InboxResource

# A pending document requested longer ago than this is requested again (its run was lost).
REREQUEST_AFTER = dt.timedelta(minutes=10)


def plan_runs(
    existing_partitions: Sequence[str], wanted: Sequence[str], docs_per_run: int
) -> tuple[list[str], list[RunRequest]]:
    """Partitions to add, and one run request per contiguous batch of wanted documents."""
    existing = set(existing_partitions)
    to_add = [key for key in dict.fromkeys(wanted) if key not in existing]
    order = [*existing_partitions, *to_add]
    requests = []
    for batch in detection.plan_batches(order, set(wanted), docs_per_run):
        # No run_key: Dagster would refuse to launch a key twice, but re-requesting the same
        # documents after a lost run is exactly what REREQUEST_AFTER is for.
        requests.append(
            RunRequest(
                tags={
                    ASSET_PARTITION_RANGE_START_TAG: batch[0],
                    ASSET_PARTITION_RANGE_END_TAG: batch[-1],
                    "rag/documents": str(len(batch)),
                },
            )
        )
    return to_add, requests


def evaluate_inbox(
    instance, engine, inbox: InboxResource, rerequest_after: dt.timedelta | None,
    previous_digest: str | None = None,
) -> tuple[detection.Detection, list[str], list[RunRequest]]:  # noqa: ANN001
    """Detect changes, commit them, then plan runs. Shared by the sensor and `rag-pipeline run`."""
    found = detection.detect(engine, inbox.root, inbox.settle_seconds, previous_digest)
    before = None if rerequest_after is None else records.now() - rerequest_after
    wanted = detection.pending_documents(engine, before)
    existing = instance.get_dynamic_partitions(documents_partitions.name)
    to_add, requests = plan_runs(existing, wanted, inbox.docs_per_run)
    # Rows are committed before any run can be launched: a run never looks for a row that
    # isn't there yet.
    detection.mark_requested(engine, wanted)
    return found, to_add, requests


@sensor(
    job=index_documents_job,
    minimum_interval_seconds=10,
    default_status=DefaultSensorStatus.RUNNING,
    description="Watches the landing directory; registers new and changed uploads and requests runs.",
)
def inbox_sensor(context: SensorEvaluationContext, db: DatabaseResource, inbox: InboxResource):
    previous = json.loads(context.cursor)["listing"] if context.cursor else None
    found, to_add, requests = evaluate_inbox(context.instance, db.engine, inbox, REREQUEST_AFTER, previous)
    for problem in found.problems:
        context.log.warning(problem)
    # Saved only once this tick's registrations are committed, so a crashed tick re-detects.
    cursor = json.dumps({"listing": found.listing_digest})
    if not requests and not to_add:
        return SensorResult(
            skip_reason=f"no changes ({found.unchanged} files unchanged"
            + (f", {len(found.problems)} refused" if found.problems else "") + ")",
            cursor=cursor,
        )
    context.log.info(
        f"{len(found.new)} new, {len(found.changed)} changed; {len(requests)} run(s) requested"
    )
    return SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[AddDynamicPartitionsRequest(documents_partitions.name, to_add)] if to_add else [],
        cursor=cursor,
    )
