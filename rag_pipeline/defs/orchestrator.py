"""Dagster as planning's orchestrator (`core.planning.Orchestrator`): its dynamic partitions,
its runs and their tags, its pools; and a plan's hand-offs and reports as Dagster's run
requests and check evaluations. The sensor and `rag-pipeline run` both plan through this."""

from __future__ import annotations

from typing import Callable, Sequence

from dagster import (
    AssetCheckEvaluation,
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    DagsterRunStatus,
    RunRequest,
    RunsFilter,
)

from rag_pipeline.core.planning import Handoff, Report, RunState
from rag_pipeline.core.records import DocumentRef
from rag_pipeline.defs.checks import naming, overdue_evaluation, refusal_evaluation
from rag_pipeline.defs.dagster_internals import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from rag_pipeline.defs.failures import record_failed_documents
from rag_pipeline.defs.jobs import ensure_pools, index_documents_job
from rag_pipeline.defs.partitions import documents_partitions
from rag_pipeline.defs.purge import purge_deleted_job

DOCUMENTS_TAG = "rag/documents"
REQUEST_TAG = "rag/request"
# QueuedRunCoordinator launches higher priorities first: a deletion leaves search before any
# index run queued beside it starts.
PURGE_PRIORITY = {"dagster/priority": "10"}

INGESTION_ASSETS = ("source_document", "document_chunks", "chunk_vectors", "document_embeddings")

ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def documents_in_active_runs(instance, partition_order: Callable[[], Sequence[str]]) -> set[str]:  # noqa: ANN001
    """Documents any queued or running run holds (ours, a UI materialization, a backfill)."""
    busy: set[str] = set()
    runs = instance.get_runs(RunsFilter(statuses=ACTIVE))
    ranged = [r for r in runs if r.tags.get(ASSET_PARTITION_RANGE_START_TAG) or r.tags.get("dagster/partition")]
    if not ranged:
        return busy
    order = partition_order()
    position = {key: i for i, key in enumerate(order)}
    for run in ranged:
        start = run.tags.get(ASSET_PARTITION_RANGE_START_TAG)
        end = run.tags.get(ASSET_PARTITION_RANGE_END_TAG)
        if start in position and end in position:
            busy.update(order[position[start] : position[end] + 1])
        else:
            busy.update(k for k in (start, end, run.tags.get("dagster/partition")) if k)
    return busy


def index_request(batch: Sequence[str], token: str) -> RunRequest:
    # No run_key: Dagster would refuse to launch a key twice, but handing out the same
    # documents again after a lost or failed run is exactly what release is for.
    return RunRequest(
        job_name=index_documents_job.name,
        tags={
            ASSET_PARTITION_RANGE_START_TAG: batch[0],
            ASSET_PARTITION_RANGE_END_TAG: batch[-1],
            DOCUMENTS_TAG: str(len(batch)),
            REQUEST_TAG: token,
        },
    )


def run_request(handoff: Handoff) -> RunRequest:
    if handoff.job == "index":
        return index_request(handoff.documents, handoff.token)
    return RunRequest(
        job_name=purge_deleted_job.name,
        tags={DOCUMENTS_TAG: str(len(handoff.documents)), REQUEST_TAG: handoff.token, **PURGE_PRIORITY},
    )


def check_evaluation(report: Report) -> AssetCheckEvaluation:
    if report.kind == "refused":
        return refusal_evaluation(report.doc, report.description)
    return overdue_evaluation(report.doc, report.description, parked=report.kind == "parked")


class DagsterOrchestrator:
    def __init__(self, instance: DagsterInstance) -> None:
        self.instance = instance

    def ensure_pools(self, endpoint_slots: int | None) -> None:
        ensure_pools(self.instance, endpoint_slots)

    def runs_by_token(self, tokens: Sequence[str]) -> dict[str, list[RunState]]:
        runs: dict[str, list[RunState]] = {}
        for record in self.instance.get_run_records(RunsFilter(tags={REQUEST_TAG: list(tokens)})):
            runs.setdefault(record.dagster_run.tags.get(REQUEST_TAG), []).append(
                RunState(active=record.dagster_run.status in ACTIVE, ended_at=record.end_time)
            )
        return runs

    def partition_keys(self) -> Sequence[str]:
        return self.instance.get_dynamic_partitions(documents_partitions.name)

    def documents_in_active_runs(self, partition_order: Callable[[], Sequence[str]]) -> set[str]:
        return documents_in_active_runs(self.instance, partition_order)

    def index_runs_waiting(self) -> int:
        return self.instance.get_runs_count(
            RunsFilter(job_name=index_documents_job.name, statuses=[DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED])
        )

    def delete_partition(self, key: str) -> None:
        self.instance.delete_dynamic_partition(documents_partitions.name, key)

    def add_partitions(self, keys: Sequence[str]) -> None:
        self.instance.add_dynamic_partitions(documents_partitions.name, list(keys))

    def record_failed(self, failures: Sequence[tuple[str, str]]) -> None:
        # On every asset: these documents never reach any of them (defs/failures.py).
        record_failed_documents(
            self.instance, failures, [AssetKey(a) for a in INGESTION_ASSETS], job_name=index_documents_job.name,
        )

    def record_moved(self, docs: Sequence[DocumentRef]) -> None:
        for doc in docs:
            for asset in INGESTION_ASSETS:
                self.instance.report_runless_asset_event(AssetMaterialization(
                    asset_key=asset, partition=doc.partition_key,
                    metadata={**naming(doc), "status": doc.status, "moved_from_partition": doc.id},
                ))
