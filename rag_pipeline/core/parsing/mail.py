"""Saved e-mail (.eml) through the standard library's `email` package.

The first section is the message: who wrote to whom, when, about what, then the body (plain
text preferred, else the HTML part as the HTML parser reads it). Each attachment of a supported
type follows as sections of the same document, headed by its file name (its own pages and
headings kept), so a question about the attached contract finds the message it came with.
Attachments that cannot be read are listed in the document's info, not fatal: the message is
still worth indexing.
"""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import PurePosixPath

from rag_pipeline.core.parsing.base import Limits, ParsedDocument, ParseError, Section, normalize

HEADERS = ("from", "to", "cc", "date", "subject")
MAX_ATTACHMENTS = 100
# A forwarded message attached to a forwarded message...: deeper than this is not read.
MAX_NESTING = 3


def parse_eml(data: bytes, limits: Limits, depth: int = 0) -> ParsedDocument:
    try:
        message = email.message_from_bytes(data, policy=email.policy.default)
        headers = {name: " ".join(str(message[name]).split()) for name in HEADERS if message[name] is not None}
    except Exception as exc:  # the email package raises on some malformed headers when read
        raise ParseError(f"corrupt e-mail: {type(exc).__name__}: {exc}"[:300]) from exc
    if not headers:
        raise ParseError("not an e-mail: no From, To, Date or Subject header")
    assert isinstance(message, EmailMessage)
    head = "\n".join(f"{name.capitalize()}: {value}" for name, value in headers.items())
    sections = [Section(normalize(head + "\n\n" + _body(message, limits)), heading=headers.get("subject"))]
    skipped: list[str] = []
    attachments = list(message.iter_attachments())
    for part in attachments[:MAX_ATTACHMENTS]:
        name = PurePosixPath(part.get_filename() or "").name or "(unnamed attachment)"
        try:
            sections += [
                Section(s.text, s.page, f"{name} > {s.heading}" if s.heading else name)
                for s in _attachment(part, name, limits, depth).sections
            ]
        except ParseError as exc:
            skipped.append(f"{name}: {exc}")
    skipped += [f"{len(attachments) - MAX_ATTACHMENTS} more attachments (over {MAX_ATTACHMENTS})"] if len(attachments) > MAX_ATTACHMENTS else []
    info = {name: value for name, value in headers.items() if name != "subject"}
    info["attachments"] = str(len(attachments))
    if skipped:
        info["attachments_skipped"] = "; ".join(skipped)[:1000]
    return ParsedDocument(sections, "eml", title=headers.get("subject"), info=info)


def _body(message: EmailMessage, limits: Limits) -> str:
    from rag_pipeline.core.parsing.text import parse_html

    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        content = part.get_content()
    except (LookupError, UnicodeError, ValueError) as exc:  # an unknown charset, a broken encoding
        raw = part.get_payload(decode=True) or b""
        content = raw.decode("utf-8", errors="replace") if raw else ""
        if not content:
            raise ParseError(f"corrupt e-mail: its body cannot be decoded ({exc})") from exc
    if part.get_content_subtype() == "html":
        try:
            return "\n\n".join(s.text for s in parse_html(str(content).encode("utf-8"), limits).sections)
        except ParseError:
            return ""
    return str(content)


def _attachment(part: EmailMessage, name: str, limits: Limits, depth: int) -> ParsedDocument:
    from rag_pipeline.core.parsing import PARSERS, parse_bytes

    if part.get_content_type() == "message/rfc822":
        if depth + 1 >= MAX_NESTING:
            raise ParseError(f"forwarded messages nested more than {MAX_NESTING} deep")
        inner = part.get_payload(0) if part.is_multipart() else None
        data = inner.as_bytes() if inner is not None else (part.get_payload(decode=True) or b"")
        return parse_eml(data, limits, depth + 1)
    data = part.get_payload(decode=True) or b""
    if PurePosixPath(name).suffix.lower() == ".eml":
        if depth + 1 >= MAX_NESTING:
            raise ParseError(f"forwarded messages nested more than {MAX_NESTING} deep")
        return parse_eml(data, limits, depth + 1)
    if PurePosixPath(name).suffix.lower() not in PARSERS and part.get_content_maintype() != "text":
        raise ParseError("unsupported type")
    return parse_bytes(data, name if PurePosixPath(name).suffix else name + ".txt", limits)
