from dagster import DynamicPartitionsDefinition

# One partition per document; the key is the document id (a uuid5 of knowledge base + path).
documents_partitions = DynamicPartitionsDefinition(name="documents")
