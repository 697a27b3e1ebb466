"""Word documents (.docx) through python-docx, after a zip-bomb check.

Headings (the "Heading N" and "Title" styles) start sections and make the heading path, as in
Markdown; tables become one line per row. Headers and footers repeat on every page and are left
out.
"""

from __future__ import annotations

import io
import re
import zipfile

from rag_pipeline.core.parsing.base import Limits, ParsedDocument, ParseError, Section, normalize, size_words

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_HEADING_STYLE = re.compile(r"^heading\s*(\d)$", re.IGNORECASE)
MAX_ZIP_ENTRIES = 10_000


def check_zip(data: bytes, limits: Limits, kind: str) -> zipfile.ZipFile:
    """Open a zip container, refusing it before anything is unpacked if it would unpack past the
    limit. The declared sizes can be trusted as a bound: zipfile stops reading an entry at its
    declared size (and fails its CRC check), however much the stream would inflate to."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise ParseError(f"corrupt {kind}: not a valid zip archive ({exc})") from exc
    if len(entries) > MAX_ZIP_ENTRIES:
        raise ParseError(f"zip bomb: the {kind} holds {len(entries)} entries (over {MAX_ZIP_ENTRIES})")
    unpacked = sum(e.file_size for e in entries)
    if unpacked > limits.max_unpacked_bytes:
        raise ParseError(
            f"zip bomb: the {kind} would unpack to {size_words(unpacked)}, over the limit of "
            f"{size_words(limits.max_unpacked_bytes)} (RAG_MAX_UNPACKED_BYTES)"
        )
    return archive


def _heading_level(paragraph) -> int | None:  # noqa: ANN001
    try:
        name = paragraph.style.name if paragraph.style is not None else ""
    except (KeyError, ValueError):  # a style id the styles part doesn't define
        return None
    if name.lower() == "title":
        return 1
    match = _HEADING_STYLE.match(name or "")
    return int(match.group(1)) if match else None


def open_office(data: bytes, limits: Limits, *, kind: str, application: str, main_part: str) -> zipfile.ZipFile:
    """An Office Open XML file's zip, checked before any parser sees it: not an OLE container
    (what Office writes for a password-protected file, and the pre-2007 formats), not a zip
    bomb, and holding the main part of its kind (`kind`: DOCX, PPTX or XLSX)."""
    if data.startswith(OLE_MAGIC):
        legacy = kind.lower()[:-1]
        raise ParseError(
            f"encrypted or legacy {application} file: password-protected .{kind.lower()} and old .{legacy} files "
            f"are OLE containers; save it as an unprotected .{kind.lower()}"
        )
    archive = check_zip(data, limits, kind)
    if main_part not in archive.namelist():
        raise ParseError(f"corrupt {kind}: it has no {main_part} (not a {application} file?)")
    return archive


def parse_docx(data: bytes, limits: Limits) -> ParsedDocument:
    open_office(data, limits, kind="DOCX", application="Word", main_part="word/document.xml")

    import docx  # heavy import, only when needed
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(io.BytesIO(data))
        sections: list[Section] = []
        path: list[tuple[int, str]] = []
        buf: list[str] = []

        def flush() -> None:
            body = normalize("\n".join(buf))
            if body:
                sections.append(Section(body, heading=" > ".join(h for _, h in path) or None))
            buf.clear()

        for block in document.iter_inner_content():
            if isinstance(block, Paragraph):
                text = block.text.strip()
                level = _heading_level(block) if text else None
                if level is not None:
                    flush()
                    path = [(lvl, h) for lvl, h in path if lvl < level]
                    path.append((level, " ".join(text.split())))
                buf.append(text + "\n")  # joined by "\n": paragraphs end up a blank line apart
            elif isinstance(block, Table):
                for row in block.rows:
                    cells = list(dict.fromkeys(c.text.strip() for c in row.cells))  # merged cells repeat
                    buf.append(" | ".join(c for c in cells if c))
                buf.append("")
        flush()
        title = (document.core_properties.title or "").strip() or None
    except ParseError:
        raise
    except Exception as exc:  # python-docx raises KeyError/ValueError/lxml errors on damaged parts
        raise ParseError(f"corrupt DOCX: {type(exc).__name__}: {exc}"[:300]) from exc
    return ParsedDocument(sections, "docx", title=title)
