"""Text from pictures of text: Tesseract (Debian's `tesseract-ocr`) through pytesseract.

Used for images and for PDF pages without a text layer (scans), one page at a time: a page is
rendered, recognized and dropped before the next, so a long scan costs one page of memory.
The words come back with Tesseract's confidence; the document records the mean, so a poor scan
is visible in its metadata before anyone wonders why search misses it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rag_pipeline.core.parsing.base import Limits, ParseError, normalize

if TYPE_CHECKING:
    from PIL.Image import Image

INSTALL_HINT = "install Tesseract (Debian: apt-get install tesseract-ocr tesseract-ocr-eng)"
# Tesseract reads text best at about 300 dpi; a page larger than this many pixels at 300 dpi
# (a poster, a drawing) is rendered at a lower resolution instead of taking gigabytes.
MAX_PAGE_PIXELS = 35_000_000


def available() -> bool:
    return shutil.which("tesseract") is not None


def unavailable_reason(what: str, limits: Limits) -> str | None:
    """Why `what` cannot be read by OCR here, with what to change; None if it can."""
    if limits.ocr == "off":
        return f"{what} needs OCR, which is off (RAG_OCR=off; set RAG_OCR=auto to read it)"
    if not available():
        return f"{what} needs OCR, and Tesseract is not installed: {INSTALL_HINT}"
    return None


@dataclass
class Recognized:
    """What OCR read over a document's pages: counted so the document can say how sure it is."""
    pages: int = 0
    confidences: list[float] = field(default_factory=list)

    def info(self, limits: Limits) -> dict[str, str]:
        if not self.pages:
            return {}
        mean = sum(self.confidences) / len(self.confidences) if self.confidences else 0.0
        return {"ocr": f"tesseract ({limits.ocr_languages})", "ocr_pages": str(self.pages), "ocr_confidence": f"{mean:.1f}"}


def recognize(image: Image, limits: Limits, tally: Recognized) -> str:
    """The page's text, paragraphs a blank line apart, in reading order."""
    import pytesseract

    gray = image.convert("L")
    try:
        data = pytesseract.image_to_data(
            gray, lang=limits.ocr_languages, output_type=pytesseract.Output.DICT,
            # The sandbox's clock bounds the whole file; this stops one page from taking it all
            # where the parser runs in-process (RAG_PARSE_TIMEOUT_SECONDS=0).
            timeout=limits.parse_timeout_seconds if limits.parse_timeout_seconds > 0 else 0,
        )
    except pytesseract.TesseractNotFoundError as exc:
        raise ParseError(f"OCR failed: Tesseract is not installed: {INSTALL_HINT}") from exc
    except pytesseract.TesseractError as exc:
        message = " ".join(str(exc.message).split())
        if "Failed loading language" in message or "Error opening data file" in message:
            raise ParseError(
                f"OCR language {limits.ocr_languages!r} is not installed (RAG_OCR_LANGUAGES): install its "
                "Tesseract data, e.g. apt-get install tesseract-ocr-deu for 'deu'"
            ) from exc
        raise ParseError(f"OCR failed: {message}"[:300]) from exc
    except RuntimeError as exc:  # pytesseract's timeout
        raise ParseError(
            f"OCR of one page took longer than {limits.parse_timeout_seconds:g} s (RAG_PARSE_TIMEOUT_SECONDS)"
        ) from exc
    finally:
        gray.close()
    lines: dict[tuple[int, int, int], list[str]] = {}
    for i, word in enumerate(data["text"]):
        word = word.strip()
        if not word:
            continue
        lines.setdefault((data["block_num"][i], data["par_num"][i], data["line_num"][i]), []).append(word)
        confidence = float(data["conf"][i])
        if confidence >= 0:
            tally.confidences.append(confidence)
    tally.pages += 1
    out: list[str] = []
    paragraph = None
    for (block, par, _), words in lines.items():
        if paragraph is not None and paragraph != (block, par):
            out.append("")
        paragraph = (block, par)
        out.append(" ".join(words))
    return normalize("\n".join(out))


def render_scale(width_points: float, height_points: float, dpi: int = 300) -> float:
    """pdfium's scale for a page: 300 dpi, lowered for pages too large to render at it."""
    scale = dpi / 72
    pixels = width_points * height_points * scale * scale
    if pixels > MAX_PAGE_PIXELS:
        scale *= (MAX_PAGE_PIXELS / pixels) ** 0.5
    return scale
