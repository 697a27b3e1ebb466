"""Plain text, Markdown and HTML. Sections follow headings, so chunks never straddle two
headings and each carries its heading path."""

from __future__ import annotations

import re

from rag_pipeline.core.parsing.base import Limits, ParsedDocument, Section, decode_text, normalize


def parse_text(data: bytes, limits: Limits) -> ParsedDocument:
    text, encoding = decode_text(data)
    return ParsedDocument([Section(normalize(text))], "text", info={"encoding": encoding})


_ATX_RE = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE_RE = re.compile(r"^\s*(```|~~~)")


def parse_markdown(data: bytes, limits: Limits) -> ParsedDocument:
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


def parse_html(data: bytes, limits: Limits) -> ParsedDocument:
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

    def walk(root: Tag) -> None:
        # Iterative: hostile or generated HTML can nest deeper than Python's recursion limit.
        paragraph = ("p", "div", "section", "article", "pre")
        stack: list = [iter(root.children)]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                continue
            if isinstance(child, str):  # a closing marker pushed below, or a text node
                if isinstance(child, NavigableString):
                    if type(child).__name__ not in ("Comment", "Doctype", "Declaration", "CData", "ProcessingInstruction"):
                        buf.append(str(child))
                else:
                    buf.append(child)
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name.lower()
            if name in _SKIP:
                continue
            if name in _HEADINGS:
                flush()
                level = _HEADINGS[name]
                heading = " ".join(child.get_text(" ").split())
                path[:] = [(lvl, h) for lvl, h in path if lvl < level]
                if heading:
                    path.append((level, heading))
                    buf.append(heading + "\n\n")
                continue
            if name in _BLOCKS:
                gap = "\n\n" if name in paragraph else "\n"
                buf.append(gap)
                stack.append(iter([gap]))  # emitted once the element's children are done
            stack.append(iter(child.children))

    walk(root)
    flush()
    return ParsedDocument(sections, "html", title=title, info={"encoding": encoding})
