"""Workbooks (.xlsx) through pandas with openpyxl: one section per sheet, its heading the sheet's
name, rows as "column: value" records like CSV. Formulas read as the values Excel cached when it
saved the file (a workbook never opened in Excel after a formula was written has none).
"""

from __future__ import annotations

import io

from rag_pipeline.core.parsing.base import Limits, ParsedDocument, ParseError, Section
from rag_pipeline.core.parsing.office import open_office
from rag_pipeline.core.parsing.tables import render_records


def parse_xlsx(data: bytes, limits: Limits) -> ParsedDocument:
    open_office(data, limits, kind="XLSX", application="Excel", main_part="xl/workbook.xml")

    import pandas as pd

    try:
        # One row past the limit is read per sheet, so an oversized sheet is known without
        # reading it all.
        frames = pd.read_excel(
            io.BytesIO(data), sheet_name=None, engine="openpyxl", dtype=str, keep_default_na=False,
            nrows=limits.max_rows + 1,
        )
    except Exception as exc:  # openpyxl raises KeyError/ValueError/lxml errors on damaged parts
        raise ParseError(f"corrupt XLSX: {type(exc).__name__}: {exc}"[:300]) from exc
    rows = sum(len(frame) for frame in frames.values())
    if rows > limits.max_rows:
        raise ParseError(f"workbook has more than {limits.max_rows:,} rows (RAG_MAX_ROWS)")
    sections = []
    for name, frame in frames.items():
        # Columns without a header cell are named "Unnamed: 3" by pandas: no use as a label.
        frame = frame.rename(columns=lambda c: "" if str(c).startswith("Unnamed: ") else c)
        if text := render_records(frame):
            sections.append(Section(text, heading=str(name)))
    return ParsedDocument(sections, "xlsx", info={"sheets": str(len(frames)), "rows": str(rows)})
