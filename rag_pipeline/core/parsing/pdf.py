"""PDF through pypdf: one section per page, so every chunk knows its page number."""

from __future__ import annotations

import io
import logging

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
    except FileNotDecryptedError as exc:
        raise ParseError("encrypted PDF: a password is required to read it") from exc
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, AssertionError) as exc:
        raise ParseError(f"corrupt PDF: {exc}") from exc
    if not sections:
        raise ParseError("no extractable text: the PDF has no text layer (a scanned document?)")
    return ParsedDocument(sections, "pdf", title=title, info={"pages": str(len(pages))})
