"""File bytes -> sections of text.

A section is a run of text with one location: a PDF page or a heading path. Chunk boundaries
never cross a section, so every chunk carries one page or one heading path. Whatever the
bytes, `parse_bytes` returns a document or raises ParseError with a reason meant for the
person who uploaded the file; nothing else escapes.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import PurePosixPath
from typing import Callable

from rag_pipeline.core.parsing.base import (
    Limits,
    ParsedDocument,
    ParseError,
    Section,
    decode_text,
    looks_binary,
    normalize,
    over_file_limit,
    storable,
)
from rag_pipeline.core.parsing.images import parse_image
from rag_pipeline.core.parsing.mail import parse_eml
from rag_pipeline.core.parsing.office import parse_docx
from rag_pipeline.core.parsing.pdf import parse_pdf
from rag_pipeline.core.parsing.rows import parse_row
from rag_pipeline.core.parsing.sheets import parse_xlsx
from rag_pipeline.core.parsing.slides import parse_pptx
from rag_pipeline.core.parsing.tables import parse_delimited, parse_json, parse_json_lines, parse_tsv
from rag_pipeline.core.parsing.text import parse_html, parse_markdown, parse_text

__all__ = [
    "Limits", "ParsedDocument", "ParseError", "Section", "SUPPORTED_EXTENSIONS", "decode_text",
    "normalize", "over_file_limit", "parse_bytes", "parser_key",
]

Parser = Callable[[bytes, Limits], ParsedDocument]
PARSERS: dict[str, Parser] = {
    ".txt": parse_text,
    ".text": parse_text,
    ".md": parse_markdown,
    ".markdown": parse_markdown,
    ".html": parse_html,
    ".htm": parse_html,
    ".pdf": parse_pdf,
    ".docx": parse_docx,
    ".pptx": parse_pptx,
    ".xlsx": parse_xlsx,
    ".eml": parse_eml,
    ".png": parse_image,
    ".jpg": parse_image,
    ".jpeg": parse_image,
    ".tif": parse_image,
    ".tiff": parse_image,
    ".csv": parse_delimited,
    ".tsv": parse_tsv,
    ".json": parse_json,
    ".jsonl": parse_json_lines,
    ".ndjson": parse_json_lines,
    # A SQL source's rendered row (`core/sources/sql.py` names its documents so); not a
    # file type anyone uploads, so not listed among the supported ones.
    ".record": parse_row,
}
SUPPORTED_EXTENSIONS = frozenset(PARSERS) - {".record"}


# Office files are zips told apart by their main part.
_OFFICE_PARTS = {"word/document.xml": ".docx", "ppt/presentation.xml": ".pptx", "xl/workbook.xml": ".xlsx"}
_IMAGE_SIGNATURES = {b"\x89PNG\r\n\x1a\n": ".png", b"\xff\xd8\xff": ".jpg", b"II*\x00": ".tif", b"MM\x00*": ".tif"}


def sniff(data: bytes, suffix: str) -> str | None:
    """The parser key for content whose name doesn't say, only where the content is unambiguous:
    PDF, office zips and images have signatures; a name with no extension holding clean UTF-8 is
    plain text. Anything else under an unknown extension is refused rather than guessed."""
    if data[:1024].lstrip().startswith(b"%PDF-"):
        return ".pdf"
    if data.startswith(b"PK\x03\x04"):
        try:
            names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
        except (zipfile.BadZipFile, ValueError, EOFError):
            return None
        return next((key for part, key in _OFFICE_PARTS.items() if part in names), None)
    for signature, key in _IMAGE_SIGNATURES.items():
        if data.startswith(signature):
            return key
    if not suffix and not looks_binary(data):
        try:
            data.decode("utf-8")
            return ".txt"
        except UnicodeDecodeError:
            return None
    return None


def parser_key(data: bytes, filename: str) -> str | None:
    """Which parser takes this file: its extension's, else what the content reliably is."""
    suffix = PurePosixPath(filename).suffix.lower()
    return suffix if suffix in PARSERS else sniff(data, suffix)


def parse_bytes(data: bytes, filename: str, limits: Limits | None = None) -> ParsedDocument:
    limits = limits or Limits()
    suffix = PurePosixPath(filename).suffix.lower()
    if len(data) > limits.max_file_bytes:
        raise ParseError(over_file_limit(len(data), limits.max_file_bytes))
    if not data.strip():
        raise ParseError("empty file")
    key = parser_key(data, filename)
    if key is None:
        raise ParseError(
            f"unsupported file type {suffix or '(no extension)'!r}; supported: "
            + ", ".join(sorted(SUPPORTED_EXTENSIONS))
        )
    try:
        parsed = PARSERS[key](data, limits)
    except ParseError:
        raise
    except MemoryError as exc:
        raise ParseError("ran out of memory parsing the file (RAG_PARSE_MEMORY_MB)") from exc
    except RecursionError as exc:
        raise ParseError(f"could not parse the {key[1:].upper()}: structure nested too deeply") from exc
    except Exception as exc:  # a parser library's bug on hostile input is still this file's problem
        raise ParseError(f"could not parse the {key[1:].upper()}: {type(exc).__name__}: {exc}"[:500]) from exc
    if key != suffix:
        parsed.info["sniffed_as"] = key
    parsed.sections = [
        Section(text, s.page, storable(s.heading)) for s in parsed.sections if (text := storable(s.text).strip())
    ]
    parsed.title = storable(parsed.title)
    if not parsed.sections:
        raise ParseError("no extractable text")
    return parsed
