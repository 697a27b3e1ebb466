"""Slide decks (.pptx) through python-pptx, after the same zip-bomb check as Word files.

One section per slide, its page the slide number and its heading the slide's title, so a chunk
cites "slide 7: Roadmap". Text boxes, grouped shapes and tables are read in the slide's shape
order; speaker notes (often where the real explanation is) follow the slide's own text.
"""

from __future__ import annotations

import io

from rag_pipeline.core.parsing.base import Limits, ParsedDocument, ParseError, Section, normalize
from rag_pipeline.core.parsing.office import open_office


def _shape_texts(shapes) -> list[str]:  # noqa: ANN001
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    texts: list[str] = []
    stack = [iter(shapes)]
    while stack:  # iterative: groups can nest
        shape = next(stack[-1], None)
        if shape is None:
            stack.pop()
            continue
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            stack.append(iter(shape.shapes))
        elif getattr(shape, "has_table", False) and shape.has_table:
            for row in shape.table.rows:
                cells = [c.text.strip() for c in row.cells]
                texts.append(" | ".join(c for c in cells if c))
        elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
            texts.append(shape.text_frame.text)
    return texts


def parse_pptx(data: bytes, limits: Limits) -> ParsedDocument:
    open_office(data, limits, kind="PPTX", application="PowerPoint", main_part="ppt/presentation.xml")

    from pptx import Presentation

    try:
        deck = Presentation(io.BytesIO(data))
        slides = list(deck.slides)
        if len(slides) > limits.max_pages:
            raise ParseError(f"deck has {len(slides)} slides, over the limit of {limits.max_pages} (RAG_MAX_PAGES)")
        sections = []
        for number, slide in enumerate(slides, start=1):
            title_shape = slide.shapes.title
            title = " ".join(title_shape.text.split()) if title_shape is not None and title_shape.has_text_frame else ""
            body = [t for t in _shape_texts(slide.shapes) if " ".join(t.split()) != title]
            if slide.has_notes_slide and (notes := slide.notes_slide.notes_text_frame) is not None and notes.text.strip():
                body.append("Notes: " + notes.text)
            text = normalize("\n\n".join([title, *body]) if title else "\n\n".join(body))
            if text:
                sections.append(Section(text, page=number, heading=title or f"Slide {number}"))
        deck_title = (deck.core_properties.title or "").strip() or None
    except ParseError:
        raise
    except Exception as exc:  # python-pptx raises KeyError/ValueError/lxml errors on damaged parts
        raise ParseError(f"corrupt PPTX: {type(exc).__name__}: {exc}"[:300]) from exc
    return ParsedDocument(sections, "pptx", title=deck_title, info={"slides": str(len(slides))})
