"""Per-document asset checks.

A run covers a range of documents, and Dagster evaluates a check once per step, for the step's
own partition key if it has one. So each document's result is emitted as its own partitioned
evaluation, and the check's output is marked produced once for the run.
"""

import warnings
from typing import Iterator, Mapping

from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    Output,
    PreviewWarning,
)

from rag_pipeline.defs.partitions import documents_partitions

# Partitioned checks are what put a result on each document in the UI.
warnings.filterwarnings("ignore", category=PreviewWarning, message=".*partitions_def on an AssetCheckSpec.*")


INDEXED_IN_TIME = "indexed_in_time"


def overdue_evaluation(doc_id: str, description: str, parked: bool) -> AssetCheckEvaluation:
    """Reported by the sensor, outside any run: the document is late, or was given up on."""
    return AssetCheckEvaluation(
        asset_key=AssetKey("document_embeddings"), check_name=INDEXED_IN_TIME, passed=False,
        severity=AssetCheckSeverity.ERROR if parked else AssetCheckSeverity.WARN,
        description=description, partition=doc_id, metadata={"document_id": doc_id, "parked": parked},
    )


def refusal_evaluation(doc_id: str, reason: str) -> AssetCheckEvaluation:
    """Reported by the sensor: the upload was refused without being read (a link, too large)."""
    return AssetCheckEvaluation(
        asset_key=AssetKey("source_document"), check_name="parsed", passed=False,
        severity=AssetCheckSeverity.WARN, description=reason, partition=doc_id,
        metadata={"document_id": doc_id, "read": False},
    )


def document_check(name: str, asset: str, description: str) -> AssetCheckSpec:
    return AssetCheckSpec(name, asset=asset, description=description, partitions_def=documents_partitions)


def evaluate_per_document(
    context: AssetExecutionContext,
    name: str,
    results: Mapping[str, tuple[bool, str]],
    severity: AssetCheckSeverity = AssetCheckSeverity.ERROR,
) -> Iterator[object]:
    """One evaluation per document ({document id: (passed, description)}), then the output."""
    key = AssetCheckKey(context.asset_key, name)
    for doc_id, (passed, description) in results.items():
        yield AssetCheckEvaluation(
            asset_key=context.asset_key, check_name=name, passed=passed, severity=severity,
            description=description, partition=doc_id, metadata={"document_id": doc_id},
        )
    yield Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(key))
