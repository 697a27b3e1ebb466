"""Real files of every supported format, and hostile ones, built in the test (nothing binary is
checked in). Each hostile case maps to the reason a user must see."""

from __future__ import annotations

import io
import json
import random

import docx
from pypdf import PdfReader, PdfWriter

from rag_pipeline.devtools.pdf import text_pdf
from rag_pipeline_tests.office_files import with_big_entry


def docx_bytes(title: str = "Travel policy", extra_entry: tuple[str, int] | None = None) -> bytes:
    document = docx.Document()
    document.core_properties.title = title
    document.add_heading("Travel", 1)
    document.add_paragraph("Book trains at least two weeks ahead; sleeper cabins are allowed overnight.")
    document.add_heading("Claims", 2)
    document.add_paragraph("Submit receipts within thirty days through the expenses portal.")
    table = document.add_table(rows=2, cols=2)
    for (r, c), text in {(0, 0): "Item", (0, 1): "Limit", (1, 0): "Hotel night", (1, 1): "150 EUR"}.items():
        table.cell(r, c).text = text
    out = io.BytesIO()
    document.save(out)
    if extra_entry is None:
        return out.getvalue()
    name, size = extra_entry
    return with_big_entry(out.getvalue(), name, size)


def zip_bomb_docx(unpacked_bytes: int = 300 << 20) -> bytes:
    """A valid Word document carrying an entry that inflates to `unpacked_bytes` of zeros."""
    return docx_bytes(extra_entry=("word/media/image1.bin", unpacked_bytes))


def encrypted_pdf(password: str = "s3cret") -> bytes:
    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(text_pdf(["Quarterly figures, confidential."]))))
    writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def scanned_pdf() -> bytes:
    """Pages with no text layer, as a scanner makes them."""
    return text_pdf(["", ""])


def noise(n: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(n)


GOOD = {
    "notes/plain.txt": b"Tomatoes need full sun and deep watering twice a week.\n\nPrune suckers for bigger fruit.",
    "notes/windows-1252.txt": ("Le caf\u00e9 cr\u00e8me est servi pr\u00e8s de la fen\u00eatre, o\u00f9 l'\u00e9t\u00e9 "
                               "dure longtemps et la for\u00eat est fra\u00eeche. " * 4).encode("cp1252"),
    "notes/utf-16.txt": "Stra\u00dfenbahn fahren t\u00e4glich \u00fcber die Br\u00fccke.".encode("utf-16"),
    "guides/astronomy.md": b"# Astronomy\n\nIntro to the sky.\n\n## Telescopes\n\nA refractor uses lenses; a reflector uses mirrors.\n",
    "web/bread.html": b"<html><head><title>Bread</title></head><body><h1>Sourdough</h1><p>Feed the starter daily.</p>"
                      b"<h2>Baking</h2><p>Bake at 250 degrees in a dutch oven.</p></body></html>",
    "papers/geology.pdf": text_pdf(["Basalt forms from rapid cooling of lava.", "Granite cools slowly underground."]),
    "office/travel.docx": docx_bytes(),
    "data/inventory.csv": "sku;name;warehouse\nA-1;Kaffeem\u00fchle;K\u00f6ln\nB-2;Teekanne;Z\u00fcrich\n".encode("cp1252"),
    "data/people.tsv": b"name\trole\nAda Lovelace\tanalyst\nGrace Hopper\tadmiral\n",
    "data/export.json": json.dumps({"items": [{"city": "Lisbon", "meta": {"trams": 28}}, {"city": "Porto"}], "count": 2}).encode(),
    "data/events.jsonl": b'{"event": "deploy", "service": "billing"}\n{"event": "rollback", "service": "search"}\n',
    "names/caf\u00e9 r\u00e9sum\u00e9 \u65e5\u672c.txt": "Unicode names with spaces are fine: \u65e5\u672c\u8a9e.".encode(),
    "names/-rf --help.txt": b"A leading dash is a name, never an option.",
    "names/line\nbreak.txt": b"A newline in a file name must not break a log line.",
    "names/" + "n" * 240 + ".txt": b"A very long file name of two hundred and forty four characters.",
    "no-extension-readme": b"Plain UTF-8 text without an extension is sniffed as text.",
    "sniffed/report.bin": text_pdf(["A PDF uploaded under a wrong extension is recognised by its signature."]),
}

# name -> (bytes, the reason the user sees, or a distinctive part of it)
BAD = {
    "broken/empty.txt": (b"", "empty file"),
    "broken/binary.txt": (noise(4096), "binary content under a text file extension"),
    "broken/corrupt.pdf": (b"%PDF-1.7\n" + noise(2000, 3), "corrupt PDF"),
    "broken/encrypted.pdf": (encrypted_pdf(), "encrypted PDF"),
    "broken/scan.pdf": (scanned_pdf(), "no extractable text"),
    "broken/corrupt.docx": (b"PK\x03\x04" + noise(500, 5), "corrupt DOCX"),
    "broken/legacy-or-encrypted.docx": (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + noise(2000, 9), "encrypted or legacy Word file"),
    "broken/bomb.docx": (zip_bomb_docx(), "zip bomb"),
    "broken/unclosed.json": (b'{"items": [1, 2', "malformed JSON"),
    "broken/ragged.csv": (b"a,b\n1,2,3\n", "malformed table"),
    "broken/tool.exe": (b"MZ" + noise(300, 11), "unsupported file type '.exe'"),
}
