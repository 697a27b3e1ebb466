"""Tools for tests and benchmarks: a local OpenAI-compatible embedding server."""
