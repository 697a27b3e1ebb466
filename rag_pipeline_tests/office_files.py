"""Scans, images, decks, workbooks and e-mails, made in the test with the libraries people's own
tools use (python-pptx, openpyxl, Pillow, the standard library's email, msoffcrypto-tool), and
hostile versions of each. Every good file carries a distinctive phrase that search must find."""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from email.message import EmailMessage
from email.utils import format_datetime
import datetime as dt

from PIL import Image, ImageDraw, ImageFont
from pypdf import PdfReader, PdfWriter

from rag_pipeline.devtools.pdf import text_pdf

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"

# path -> (phrase that search must find, words a query for it uses)
PHRASES = {
    "scans/invoice.pdf": "Invoice from Zanzibar Shipping totals 4,250 euros",
    "scans/whiteboard.png": "Marmalade committee meets every Thursday",
    "scans/mixed.pdf": "Basalt quarry permits expire in October",
    "office/roadmap.pptx": "Launch the Kestrel telescope array in Patagonia",
    "office/figures.xlsx": "Osprey turbine maintenance",
    "mail/contract.eml": "the rent review happens every five years",
}


def text_image(lines: list[str], fmt: str = "PNG", size: tuple[int, int] = (1700, 500)) -> bytes:
    """A picture of text, as a phone or a scanner makes it (black on white, 40 pt)."""
    image = _drawn(lines, size)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def _drawn(lines: list[str], size: tuple[int, int]) -> Image.Image:
    font = ImageFont.truetype(FONT, 40)
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    for n, line in enumerate(lines):
        draw.text((60, 60 + 90 * n), line, font=font, fill=0)
    return image


def scanned_pdf(lines: list[str]) -> bytes:
    """One page that is only an image: no text layer, as a scanner makes it."""
    out = io.BytesIO()
    _drawn(lines, (1700, 2200)).save(out, "PDF", resolution=200)
    return out.getvalue()


def mixed_pdf(text_page: str, scanned_lines: list[str]) -> bytes:
    """Page 1 has a text layer, page 2 is a scan."""
    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(text_pdf([text_page]))))
    writer.append(PdfReader(io.BytesIO(scanned_pdf(scanned_lines))))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def multipage_tiff(pages: list[list[str]]) -> bytes:
    frames = [_drawn(lines, (1700, 400)) for lines in pages]
    out = io.BytesIO()
    frames[0].save(out, "TIFF", save_all=True, append_images=frames[1:], compression="tiff_deflate")
    return out.getvalue()


def deck_pptx() -> bytes:
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    deck.core_properties.title = "Observatory plans"
    first = deck.slides.add_slide(deck.slide_layouts[1])
    first.shapes.title.text = "Roadmap 2027"
    first.placeholders[1].text = "Launch the Kestrel telescope array in Patagonia\nHire two night operators"
    first.notes_slide.notes_text_frame.text = "The budget was approved by the Finch foundation."
    second = deck.slides.add_slide(deck.slide_layouts[5])
    second.shapes.title.text = "Costs"
    table = second.shapes.add_table(2, 2, Inches(1), Inches(2), Inches(6), Inches(1)).table
    for (r, c), text in {(0, 0): "Item", (0, 1): "Cost", (1, 0): "Mirror coating", (1, 1): "90,000 USD"}.items():
        table.cell(r, c).text = text
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def workbook_xlsx(rows: int = 3) -> bytes:
    """Two sheets; the total is a formula whose value Excel cached when it saved (openpyxl
    writes no cached values, so the value is put in the cell's XML as Excel does)."""
    from openpyxl import Workbook

    book = Workbook()
    budget = book.active
    budget.title = "Budget"
    budget.append(["Item", "Cost"])
    budget.append(["Osprey turbine maintenance", 1200])
    budget.append(["Harbour crane lease", 800])
    budget["A4"] = "Total"
    budget["B4"] = "=SUM(B2:B3)"
    staff = book.create_sheet("Staff")
    staff.append(["Name", "Team"])
    for n in range(rows):
        staff.append([f"Engineer {n}", "Wind"])
    out = io.BytesIO()
    book.save(out)
    return _with_cached_value(out.getvalue(), "xl/worksheets/sheet1.xml", "B4", "2000")


def _with_cached_value(data: bytes, part: str, cell: str, value: str) -> bytes:
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            body = source.read(item)
            if item.filename == part:
                xml = body.decode()
                xml, count = re.subn(rf'(<c r="{cell}"[^>]*>)(<f>[^<]*</f>)(<v>[^<]*</v>|<v/>)?', rf"\1\2<v>{value}</v>", xml)
                assert count == 1, xml
                body = xml.encode()
            target.writestr(item, body)
    return out.getvalue()


def encrypted_xlsx(password: str = "s3cret") -> bytes:
    """A workbook saved with a password, as Excel does it (an OLE container, agile encryption)."""
    from msoffcrypto.format.ooxml import OOXMLFile

    encrypted = io.BytesIO()
    OOXMLFile(io.BytesIO(workbook_xlsx())).encrypt(password, encrypted)
    return encrypted.getvalue()


def email_eml(attachments: dict[str, bytes] | None = None, html: bool = True) -> bytes:
    message = EmailMessage()
    message["From"] = "Ingrid Halvorsen <ingrid@example.com>"
    message["To"] = "legal@example.com"
    message["Subject"] = "Signed lease for the harbour warehouse"
    message["Date"] = format_datetime(dt.datetime(2026, 3, 9, 14, 30, tzinfo=dt.timezone.utc))
    body = "Hello team,\n\nthe lease is signed; the rent review happens every five years.\n\nIngrid"
    message.set_content(body)
    if html:
        message.add_alternative(f"<html><body><p>{body.replace(chr(10), '<br>')}</p></body></html>", subtype="html")
    for name, data in (attachments if attachments is not None else {"lease.pdf": text_pdf(
        ["The tenant may sublet the loading bay to Gullwing Logistics."])}).items():
        maintype, subtype = ("application", "pdf") if name.endswith(".pdf") else ("application", "octet-stream")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message.as_bytes()


def with_big_entry(data: bytes, name: str, size: int) -> bytes:
    """The container with one entry that inflates to `size` bytes of zeros: a zip bomb."""
    out = io.BytesIO(data)
    with zipfile.ZipFile(out, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open(name, "w", force_zip64=True) as entry:
            block = bytes(1 << 20)
            for _ in range(size >> 20):
                entry.write(block)
    return out.getvalue()


def pixel_bomb_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A few hundred bytes declaring width x height pixels: what a decoder would allocate."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b"")


def good_files() -> dict[str, bytes]:
    return {
        "scans/invoice.pdf": scanned_pdf(["Invoice from Zanzibar Shipping", "totals 4,250 euros, due 9 March."]),
        "scans/whiteboard.png": text_image(["Marmalade committee meets", "every Thursday at noon."]),
        "scans/mixed.pdf": mixed_pdf("Quarry report, page one, typed.", ["Basalt quarry permits", "expire in October."]),
        "office/roadmap.pptx": deck_pptx(),
        "office/figures.xlsx": workbook_xlsx(),
        "mail/contract.eml": email_eml(),
    }


def hostile_files() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, the reason the user sees, or a distinctive part of it)"""
    return {
        "hostile/bomb.pptx": (with_big_entry(deck_pptx(), "ppt/media/image9.bin", 300 << 20), "zip bomb: the PPTX"),
        "hostile/bomb.xlsx": (with_big_entry(workbook_xlsx(), "xl/media/image9.bin", 300 << 20), "zip bomb: the XLSX"),
        "hostile/pixels.png": (pixel_bomb_png(), "RAG_MAX_IMAGE_PIXELS"),
        "hostile/corrupt.pptx": (b"PK\x03\x04" + bytes(range(256)) * 4, "corrupt PPTX"),
        "hostile/corrupt.xlsx": (workbook_xlsx()[:1500], "corrupt XLSX"),
        "hostile/corrupt.png": (text_image(["cut short"])[:400], "corrupt image"),
        "hostile/encrypted.xlsx": (encrypted_xlsx(), "encrypted or legacy Excel file"),
        "hostile/headless.eml": (b"\n\njust a body, no headers at all\n", "not an e-mail"),
    }
