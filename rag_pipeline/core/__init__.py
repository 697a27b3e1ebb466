"""Plain, typed Python: identity, parsing, chunking, embedding, storing. No Dagster imports here."""
