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

from rag_pipeline.core.records import DocumentRef
from rag_pipeline.defs.partitions import documents_partitions


INDEXED_IN_TIME = "indexed_in_time"


def naming(doc: DocumentRef) -> dict:
    """What every evaluation says about its document: the file, not only an id."""
    return {"knowledge_base": doc.knowledge_base, "path": doc.path, "document_id": doc.id}


def overdue_evaluation(doc: DocumentRef, description: str, parked: bool) -> AssetCheckEvaluation:
    """Reported by the sensor, outside any run: the document is late, or was given up on."""
    return AssetCheckEvaluation(
        asset_key=AssetKey("document_embeddings"), check_name=INDEXED_IN_TIME, passed=False,
        severity=AssetCheckSeverity.ERROR if parked else AssetCheckSeverity.WARN,
        description=f"{doc.name}: {description}", partition=doc.partition_key, metadata={**naming(doc), "parked": parked},
    )


def refusal_evaluation(doc: DocumentRef, reason: str) -> AssetCheckEvaluation:
    """Reported by the sensor: the upload was refused without being read (a link, too large)."""
    return AssetCheckEvaluation(
        asset_key=AssetKey("source_document"), check_name="parsed", passed=False,
        severity=AssetCheckSeverity.WARN, description=f"{doc.name}: {reason}", partition=doc.partition_key,
        metadata={**naming(doc), "read": False},
    )


def document_check(name: str, asset: str, description: str) -> AssetCheckSpec:
    # Partitioned checks are what put a result on each document in the UI; Dagster warns that
    # they are a preview, here only, not for the rest of the process.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PreviewWarning, message=".*partitions_def on an AssetCheckSpec.*")
        return AssetCheckSpec(name, asset=asset, description=description, partitions_def=documents_partitions)


def evaluate_per_document(
    context: AssetExecutionContext,
    name: str,
    results: Mapping[str, tuple[bool, str]],
    docs: Mapping[str, tuple[str, DocumentRef]],
    severity: AssetCheckSeverity = AssetCheckSeverity.ERROR,
) -> Iterator[object]:
    """One evaluation per document ({document id: (passed, description)}), on the partition
    key the run names it by (`docs`: {document id: (key, names)}), then the output."""
    key = AssetCheckKey(context.asset_key, name)
    for doc_id, (passed, description) in results.items():
        partition, doc = docs[doc_id]
        yield AssetCheckEvaluation(
            asset_key=context.asset_key, check_name=name, passed=passed, severity=severity,
            description=f"{doc.name}: {description}", partition=partition, metadata=naming(doc),
        )
    yield Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(key))
