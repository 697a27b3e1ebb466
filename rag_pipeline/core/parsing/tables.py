"""Tabular exports (.csv, .tsv, .json, .jsonl) through pandas, rendered as text records.

Each record becomes a paragraph of "column: value" lines, so every chunk is self-describing
(the column names travel with the values) and the chunker's preference for paragraph breaks
keeps records whole.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from typing import TYPE_CHECKING


from rag_pipeline.core.parsing.base import Limits, ParsedDocument, ParseError, Section, decode_text

if TYPE_CHECKING:  # imported where used (see records.py)
    import pandas as pd

SNIFF_CHARS = 64 * 1024
JSON_FLATTEN_LEVELS = 3


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return " ".join(str(value).split())


def render_records(frame: pd.DataFrame) -> str:
    columns = [" ".join(str(c).split()) for c in frame.columns]
    paragraphs = []
    for row in frame.itertuples(index=False, name=None):
        lines = [f"{name}: {text}" if name else text for name, text in zip(columns, map(_cell, row)) if text]
        if lines:
            paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _table(frame: pd.DataFrame, parser: str, info: dict[str, str]) -> ParsedDocument:
    text = render_records(frame)
    info = {**info, "rows": str(len(frame)), "columns": str(len(frame.columns))}
    return ParsedDocument([Section(text)] if text else [], parser, info=info)


def parse_delimited(data: bytes, limits: Limits, sep: str | None = None) -> ParsedDocument:
    import pandas as pd

    text, encoding = decode_text(data)
    if sep is None:
        try:
            sep = csv.Sniffer().sniff(text[:SNIFF_CHARS], delimiters=",;\t|").delimiter
        except csv.Error:
            sep = ","  # a single column, or nothing the sniffer can vote on
    try:
        with warnings.catch_warnings():
            # Without index_col=False pandas would quietly turn the first column into an index
            # when a row is longer than the header; with it, it warns that it drops the extra
            # fields. Either way data is lost, so the file is refused instead.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=True,
                engine="c", on_bad_lines="error", index_col=False,
            )
    except pd.errors.ParserWarning as exc:
        raise ParseError("malformed table: a row has more fields than the header row") from exc
    except pd.errors.EmptyDataError as exc:
        raise ParseError("empty table: no header row") from exc
    except (pd.errors.ParserError, ValueError, csv.Error) as exc:
        raise ParseError(f"malformed table: {' '.join(str(exc).split())}"[:300]) from exc
    return _table(frame, "csv" if sep != "\t" else "tsv", {"encoding": encoding, "delimiter": repr(sep)})


def parse_tsv(data: bytes, limits: Limits) -> ParsedDocument:
    return parse_delimited(data, limits, "\t")


def _records(value: object) -> list[dict]:
    if isinstance(value, dict):
        # The usual API export: {"items": [...], "count": 3}: the list is the content.
        lists = [v for v in value.values() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        value = lists[0] if len(lists) == 1 else [value]
    if not isinstance(value, list):
        value = [value]
    return [item if isinstance(item, dict) else {"value": item} for item in value]


def _json_table(values: list, parser: str, encoding: str) -> ParsedDocument:
    import pandas as pd

    records = [r for v in values for r in _records(v)]
    try:
        frame = pd.json_normalize(records, max_level=JSON_FLATTEN_LEVELS) if records else pd.DataFrame()
    except RecursionError as exc:
        raise ParseError("JSON nested too deeply to flatten") from exc
    return _table(frame, parser, {"encoding": encoding})


def _loads(text: str, where: str = "") -> object:
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise ParseError(f"JSON nested too deeply{where}") from exc
    except json.JSONDecodeError as exc:
        raise ParseError(f"malformed JSON{where}: {exc}") from exc


def parse_json(data: bytes, limits: Limits) -> ParsedDocument:
    text, encoding = decode_text(data)
    return _json_table([_loads(text)], "json", encoding)


def parse_json_lines(data: bytes, limits: Limits) -> ParsedDocument:
    text, encoding = decode_text(data)
    values = [_loads(line, f" on line {n}") for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    return _json_table(values, "jsonl", encoding)
