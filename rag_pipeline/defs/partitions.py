from contextlib import contextmanager
from typing import Iterator

from dagster import DagsterInstance, DynamicPartitionsDefinition

# One partition per document; the key is the document id (a uuid5 of knowledge base + path).
documents_partitions = DynamicPartitionsDefinition(name="documents")


@contextmanager
def partition_keys_read_once(instance: DagsterInstance) -> Iterator[None]:
    """For every `add_asset_metadata(partition_key=...)` call (`add_metadata_by_partition`'s
    fallback, where Dagster's step context changed), Dagster re-resolves the step's partition
    range, and for a dynamic partitions definition that means reading every key from
    storage: one query returning the whole corpus per document reported. Profiled at 80% of a
    200-document run with 5,000 documents (and it grows with the corpus). Within one report
    the keys cannot change, so they are read once."""
    keys: dict[str, list[str]] = {}
    members: dict[str, set[str]] = {}
    real_get = instance.get_dynamic_partitions

    def get_dynamic_partitions(partitions_def_name: str) -> list[str]:
        if partitions_def_name not in keys:
            keys[partitions_def_name] = list(real_get(partitions_def_name))
            members[partitions_def_name] = set(keys[partitions_def_name])
        return keys[partitions_def_name]

    def has_dynamic_partition(partitions_def_name: str, partition_key: str) -> bool:
        get_dynamic_partitions(partitions_def_name)
        return partition_key in members[partitions_def_name]

    # Instance attributes shadow the methods for this block only.
    instance.get_dynamic_partitions = get_dynamic_partitions  # type: ignore[method-assign]
    instance.has_dynamic_partition = has_dynamic_partition  # type: ignore[method-assign]
    try:
        yield
    finally:
        del instance.get_dynamic_partitions
        del instance.has_dynamic_partition
