"""Images of text (.png, .jpg, .jpeg, .tif, .tiff) through Pillow and OCR: one section per frame
(a multi-page TIFF is a fax or a scanned contract), each with its page number.

Pillow reads the dimensions from the header before decoding anything, so an image declaring more
pixels than RAG_MAX_IMAGE_PIXELS (the pixel bomb: a few KB that decode to gigabytes) is refused
unread.
"""

from __future__ import annotations

import io
import warnings

from rag_pipeline.core.parsing import ocr
from rag_pipeline.core.parsing.base import Limits, ParsedDocument, ParseError, Section


def parse_image(data: bytes, limits: Limits) -> ParsedDocument:
    from PIL import Image, UnidentifiedImageError

    if reason := ocr.unavailable_reason("an image", limits):
        raise ParseError(reason)
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels
    try:
        with warnings.catch_warnings():
            # Pillow only warns between the limit and twice it; over the limit is over it.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            frames = getattr(image, "n_frames", 1)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ParseError(
            f"image declares more pixels than the limit of {limits.max_image_pixels:,} (RAG_MAX_IMAGE_PIXELS): "
            "a decompression bomb, or a scan at an absurd resolution"
        ) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ParseError(f"corrupt image: {exc}"[:300]) from exc
    if frames > limits.max_pages:
        raise ParseError(f"image has {frames} pages, over the limit of {limits.max_pages} (RAG_MAX_PAGES)")
    tally = ocr.Recognized()
    sections = []
    try:
        for number in range(frames):
            image.seek(number)
            image.load()
            if text := ocr.recognize(image, limits, tally):
                sections.append(Section(text, page=number + 1 if frames > 1 else None))
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # a truncated or damaged stream
        raise ParseError(f"corrupt image: {exc}"[:300]) from exc
    finally:
        image.close()
    if not sections:
        raise ParseError("no text found in the image by OCR")
    info = {"pixels": f"{width}x{height}", **tally.info(limits)}
    if frames > 1:
        info["pages"] = str(frames)
    return ParsedDocument(sections, "image", info=info)
