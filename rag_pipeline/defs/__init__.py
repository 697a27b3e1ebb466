"""The Dagster layer: thin, declarative wrappers around rag_pipeline.core."""
