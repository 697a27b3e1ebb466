"""A database row rendered by a SQL source (`core/sources/sql.py`): a one-line JSON front
matter of metadata, then one `## column` section per text column. The metadata is kept out of
the text (it is not embedded): each column is a key of the document's `info`, its value as text
(NULL leaves the key out), which is what chunk payloads carry under `meta` and search filters
on as strings."""

from __future__ import annotations

import json

from rag_pipeline.core.parsing.base import Limits, ParsedDocument, ParseError
from rag_pipeline.core.parsing.text import parse_markdown


def parse_row(data: bytes, limits: Limits) -> ParsedDocument:
    metadata: dict[str, str] = {}
    if data.startswith(b"---\n"):
        head, sep, rest = data[4:].partition(b"\n---\n")
        if not sep:
            raise ParseError("malformed record: its metadata block is not closed")
        try:
            parsed = json.loads(head)
        except ValueError as exc:
            raise ParseError(f"malformed record metadata: {exc}") from None
        if not isinstance(parsed, dict):
            raise ParseError("malformed record metadata: not an object")
        metadata = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in parsed.items() if v is not None}
        data = rest
    if not data.strip():
        raise ParseError("empty record: no text")
    document = parse_markdown(data, limits)
    document.parser, document.title = "record", None
    document.info = {**document.info, **metadata}
    return document
