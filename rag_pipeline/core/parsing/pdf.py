"""PDF through pypdf: one section per page, so every chunk knows its page number.

Pages without a text layer (a scan, or the scanned pages of a mixed PDF) are rendered with
pypdfium2 and read by OCR (`ocr.py`), one page at a time, when RAG_OCR=auto.
"""

from __future__ import annotations

import io
import logging

from rag_pipeline.core.parsing import ocr
from rag_pipeline.core.parsing.base import Limits, ParsedDocument, ParseError, Section, normalize



def parse_pdf(data: bytes, limits: Limits) -> ParsedDocument:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    # pypdf logs every recoverable oddity of a malformed file as a warning; the outcome is
    # what the user needs, not a page of parser chatter per upload.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            # Many "protected" PDFs only restrict printing: the empty user password opens them.
            try:
                opened = reader.decrypt("")
            except Exception as exc:  # unsupported crypto handlers raise here
                raise ParseError(f"encrypted PDF: cannot be opened without its password ({exc})") from exc
            if not opened:
                raise ParseError("encrypted PDF: a password is required to read it")
        pages = reader.pages
        if len(pages) > limits.max_pages:
            raise ParseError(f"PDF has {len(pages)} pages, over the limit of {limits.max_pages} (RAG_MAX_PAGES)")
        texts = {number: normalize(page.extract_text() or "") for number, page in enumerate(pages, start=1)}
        title = None
        if reader.metadata is not None and reader.metadata.title:
            title = str(reader.metadata.title)
    except ParseError:
        raise
    except FileNotDecryptedError as exc:
        raise ParseError("encrypted PDF: a password is required to read it") from exc
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, AssertionError) as exc:
        raise ParseError(f"corrupt PDF: {exc}") from exc
    info = {"pages": str(len(texts))}
    # Only pages with no text at all: OCR costs seconds a page, and a short page ("Appendix")
    # is far more often a real short page than a scan stamped with a page number.
    blank = [n for n, text in texts.items() if not text]
    if blank:
        reason = ocr.unavailable_reason("a PDF page without a text layer (a scan)", limits)
        if reason is None:
            tally = ocr.Recognized()
            for number, text in _ocr_pages(data, blank, limits, tally):
                texts[number] = text
            info.update(tally.info(limits))
        elif not any(texts.values()):
            raise ParseError(f"no extractable text: the PDF has no text layer; {reason}")
        else:
            info["pages_without_text"] = ", ".join(map(str, blank))
    sections = [Section(text, page=number) for number, text in texts.items() if text]
    if not sections:
        raise ParseError("no extractable text: neither a text layer nor OCR found any (a blank or image-only PDF)")
    return ParsedDocument(sections, "pdf", title=title, info=info)


def _ocr_pages(data: bytes, numbers: list[int], limits: Limits, tally: ocr.Recognized):  # noqa: ANN202
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(data, password="")
    except pdfium.PdfiumError as exc:
        raise ParseError(f"corrupt PDF: its pages cannot be rendered for OCR ({exc})") from exc
    try:
        for number in numbers:
            page = document[number - 1]
            try:
                width, height = page.get_size()
                bitmap = page.render(scale=ocr.render_scale(width, height), grayscale=True)
                image = bitmap.to_pil()
            except pdfium.PdfiumError as exc:
                raise ParseError(f"corrupt PDF: page {number} cannot be rendered for OCR ({exc})") from exc
            finally:
                page.close()
            try:
                yield number, ocr.recognize(image, limits, tally)
            finally:
                image.close()
                bitmap.close()
    finally:
        document.close()
