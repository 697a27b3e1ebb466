"""What every parser shares: the result types, the limits, text decoding and normalization."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import charset_normalizer

MIB = 1024 * 1024


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


@dataclass(frozen=True)
class Limits:
    """What one upload may cost. Each limit names its setting in the refusal, so a user who
    hits one knows which knob to turn."""

    max_file_bytes: int = 50 * MIB  # RAG_MAX_FILE_BYTES
    max_pages: int = 2000  # RAG_MAX_PAGES
    max_chunks: int = 20_000  # RAG_MAX_CHUNKS
    # Bytes a container format (DOCX is a zip) may unpack to: the zip-bomb guard.
    max_unpacked_bytes: int = 200 * MIB  # RAG_MAX_UNPACKED_BYTES
    parse_timeout_seconds: float = 120.0  # RAG_PARSE_TIMEOUT_SECONDS
    parse_memory_mb: int = 2048  # RAG_PARSE_MEMORY_MB (0: no cap)
    # Rows a workbook may hold over all its sheets.
    max_rows: int = 1_000_000  # RAG_MAX_ROWS
    # Pixels an image may decode to: a 50 KB PNG can declare 2 gigapixels (the pixel bomb).
    max_image_pixels: int = 100_000_000  # RAG_MAX_IMAGE_PIXELS
    # "auto": OCR images, and PDF pages without a text layer; "off": refuse them instead.
    ocr: str = "auto"  # RAG_OCR
    ocr_languages: str = "eng"  # RAG_OCR_LANGUAGES (Tesseract's codes, joined by "+")


def size_words(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def over_file_limit(size: int, limit: int) -> str:
    return f"file is {size_words(size)}, over the limit of {size_words(limit)} (RAG_MAX_FILE_BYTES)"


# Control characters other than tab/newline/carriage return/form feed: text files don't have
# them, binary files are full of them.
_CONTROL = bytes(range(0, 9)) + bytes([11]) + bytes(range(14, 32))
_CONTROL_TABLE = bytes.maketrans(b"", b"")


def looks_binary(data: bytes) -> bool:
    sample = data[:8192]
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with a BOM is text
        return False
    if b"\x00" in sample:
        return True
    controls = len(sample) - len(sample.translate(_CONTROL_TABLE, _CONTROL))
    return controls > max(8, len(sample) // 100)


def decode_text(data: bytes) -> tuple[str, str]:
    """Decode bytes that claim to be text; returns (text, encoding used)."""
    if looks_binary(data):
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
    # On short Western text the detector ties between near-identical code pages and may pick,
    # say, cp1250 (turning "crème" into "crčme"). Windows-1252 is what such files almost always
    # are (browsers treat Latin-1 the same way), so it wins whenever it decodes as cleanly.
    western = charset_normalizer.from_bytes(data, cp_isolation=["cp1252"]).best()
    if western is not None and western.chaos <= best.chaos:
        return str(western), "cp1252"
    return str(best), best.encoding


# NUL and other C0 controls (PostgreSQL refuses NUL in text) and lone surrogates (not encodable
# as UTF-8: a JSON "\ud800" escape produces one) would fail the database write, not the parse.
_UNSTORABLE_RE = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f\ud800-\udfff]")


def storable(text: str | None) -> str | None:
    return None if text is None else _UNSTORABLE_RE.sub("", text)


_WS_RE = re.compile(r"[ \t\f\v\u00a0]+")
_BLANKS_RE = re.compile(r"\n\s*\n\s*(\n\s*)*")


def normalize(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _WS_RE.sub(" ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANKS_RE.sub("\n\n", text).strip()
