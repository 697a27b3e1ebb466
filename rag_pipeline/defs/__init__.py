"""The Dagster layer: thin, declarative wrappers around rag_pipeline.core.

Importing it changes nothing outside it: the Dagster settings and the patch our runs need are
installed by the processes that create or execute runs (`defs/tuning.py`)."""
