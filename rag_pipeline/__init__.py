"""rag_pipeline: uploads become searchable chunks through Dagster partitioned assets."""

__version__ = "0.1.0"
