"""File bytes -> sections of text.

A section is a run of text with one location: a PDF page or a heading path. Chunk
boundaries never cross a section, so every chunk carries one page or one heading path.
Parse failures raise ParseError with a reason meant for the person who uploaded the file.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import charset_normalizer


class ParseError(Exception):
    """The document cannot be indexed; str(exc) is the reason shown to the user."""


@dataclass(frozen=True)
class Section:
    text: str
    page: int | None = None
    heading: str | None = None


@dataclass
class ParsedDocument:
    sections: list[Section]
    parser: str
    title: str | None = None
    info: dict[str, str] = field(default_factory=dict)

    @property
    def char_count(self) -> int:
        return sum(len(s.text) for s in self.sections)


def decode_text(data: bytes) -> tuple[str, str]:
    """Decode bytes that claim to be text; returns (text, encoding)."""
    if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ParseError("binary content under a text file extension")
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace"), "utf-8-sig"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    best = charset_normalizer.from_bytes(data).best()
    if best is None:
        raise ParseError("undecodable text: no character encoding fits the content")
    return str(best), best.encoding


_WS_RE = re.compile(r"[ \t\f\v\u00a0]+")
_BLANKS_RE = re.compile(r"\n\s*\n\s*(\n\s*)*")


def normalize(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _WS_RE.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANKS_RE.sub("\n\n", text).strip()


def parse_text(data: bytes) -> ParsedDocument:
    text, encoding = decode_text(data)
    return ParsedDocument([Section(normalize(text))], "text", info={"encoding": encoding})


_ATX_RE = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE_RE = re.compile(r"^\s*(```|~~~)")


def parse_markdown(data: bytes) -> ParsedDocument:
    text, encoding = decode_text(data)
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    buf: list[str] = []
    in_fence = False

    def flush() -> None:
        body = normalize("\n".join(buf))
        if body:
            heading = " > ".join(h for _, h in path) or None
            sections.append(Section(body, heading=heading))
        buf.clear()

    for line in text.splitlines():
        if _FENCE_RE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _ATX_RE.match(line)
        if match:
            flush()
            level = len(match.group(1))
            path = [(lvl, h) for lvl, h in path if lvl < level]
            path.append((level, match.group(2)))
            # The heading stays in the text too: it is often the best search term.
            buf.append(match.group(2))
        else:
            buf.append(line)
    flush()
    title = next((h for lvl, h in _first_headings(text)), None)
    return ParsedDocument(sections, "markdown", title=title, info={"encoding": encoding})


def _first_headings(text: str) -> list[tuple[int, str]]:
    out = []
    for line in text.splitlines()[:200]:
        m = _ATX_RE.match(line)
        if m:
            out.append((len(m.group(1)), m.group(2)))
    return sorted(out)[:1]


_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_BLOCKS = {
    "p", "div", "li", "tr", "pre", "blockquote", "section", "article", "table", "ul", "ol",
    "br", "dd", "dt", "header", "footer", "main", "figcaption", *_HEADINGS,
}
_SKIP = {"script", "style", "noscript", "template", "head", "svg"}


def parse_html(data: bytes) -> ParsedDocument:
    from bs4 import BeautifulSoup, NavigableString, Tag  # heavy import, only when needed

    text, encoding = decode_text(data)
    soup = BeautifulSoup(text, "html.parser")
    title = soup.title.get_text(strip=True) if soup.title else None
    root = soup.body or soup
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    buf: list[str] = []

    def flush() -> None:
        body = normalize("".join(buf))
        if body:
            sections.append(Section(body, heading=" > ".join(h for _, h in path) or None))
        buf.clear()

    def walk(node: Tag) -> None:
        nonlocal path
        for child in node.children:
            if isinstance(child, NavigableString):
                if type(child).__name__ in ("Comment", "Doctype", "Declaration", "CData"):
                    continue
                buf.append(str(child))
            elif isinstance(child, Tag):
                name = child.name.lower()
                if name in _SKIP:
                    continue
                if name in _HEADINGS:
                    flush()
                    level = _HEADINGS[name]
                    heading = " ".join(child.get_text(" ").split())
                    path = [(lvl, h) for lvl, h in path if lvl < level]
                    if heading:
                        path.append((level, heading))
                        buf.append(heading + "\n\n")
                    continue
                block = name in _BLOCKS
                if block:
                    buf.append("\n\n" if name in ("p", "div", "section", "article", "pre") else "\n")
                walk(child)
                if block:
                    buf.append("\n\n" if name in ("p", "div", "section", "article", "pre") else "\n")

    walk(root)
    flush()
    return ParsedDocument(sections, "html", title=title, info={"encoding": encoding})


def parse_pdf(data: bytes, max_pages: int = 2000) -> ParsedDocument:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            # An empty owner password still lets many "protected" PDFs open for reading.
            try:
                if not reader.decrypt(""):
                    raise ParseError("encrypted PDF: a password is required to read it")
            except ParseError:
                raise
            except Exception as exc:
                raise ParseError("encrypted PDF: a password is required to read it") from exc
        pages = reader.pages
        if len(pages) > max_pages:
            raise ParseError(f"PDF has {len(pages)} pages, over the limit of {max_pages}")
        sections = []
        for number, page in enumerate(pages, start=1):
            body = normalize(page.extract_text() or "")
            if body:
                sections.append(Section(body, page=number))
        title = None
        if reader.metadata is not None and reader.metadata.title:
            title = str(reader.metadata.title)
    except ParseError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ParseError(f"corrupt PDF: {exc}") from exc
    if not sections:
        raise ParseError("no extractable text: the PDF has no text layer (a scan?)")
    return ParsedDocument(sections, "pdf", title=title, info={"pages": str(len(pages))})


PARSERS = {
    ".txt": parse_text,
    ".text": parse_text,
    ".md": parse_markdown,
    ".markdown": parse_markdown,
    ".html": parse_html,
    ".htm": parse_html,
    ".pdf": parse_pdf,
}
SUPPORTED_EXTENSIONS = frozenset(PARSERS)


def parse_bytes(data: bytes, filename: str) -> ParsedDocument:
    suffix = PurePosixPath(filename).suffix.lower()
    parser = PARSERS.get(suffix)
    if parser is None:
        raise ParseError(
            f"unsupported file type {suffix or '(no extension)'!r}; supported: "
            + ", ".join(sorted(SUPPORTED_EXTENSIONS))
        )
    if not data.strip():
        raise ParseError("empty file")
    parsed = parser(data)
    if not any(s.text.strip() for s in parsed.sections):
        raise ParseError("no extractable text")
    return parsed
