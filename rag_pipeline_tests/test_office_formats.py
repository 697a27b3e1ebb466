"""Scans through OCR, slides, spreadsheets and e-mail (issue: "The documents companies actually
have"): real files made with the libraries people's own tools use, read at the parser boundary,
in the sandbox, and through the sensor and a run to search; each hostile variant refused alone
with its reason."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance
from pypdf import PdfReader, PdfWriter

from rag_pipeline.core import records
from rag_pipeline.core.db import get_engine
from rag_pipeline.core.parsing import Limits, ParseError, parse_bytes
from rag_pipeline.core.sandbox import ParserSandbox
from rag_pipeline.devtools.pdf import text_pdf
from rag_pipeline.settings import Settings
from rag_pipeline_tests.helpers import tick_and_run, write_files
from rag_pipeline_tests.office_files import (
    PHRASES,
    email_eml,
    good_files,
    hostile_files,
    multipage_tiff,
    scanned_pdf,
    text_image,
    workbook_xlsx,
)

GOOD = good_files()
HOSTILE = hostile_files()


def _words(text: str) -> set[str]:
    return {w.strip(".,:").lower() for w in text.split()}


def test_scans_and_images_are_read_by_ocr_with_pages_and_confidence():
    invoice = parse_bytes(GOOD["scans/invoice.pdf"], "invoice.pdf")
    assert [s.page for s in invoice.sections] == [1]
    assert {"zanzibar", "shipping", "4,250", "euros"} <= _words(invoice.sections[0].text)
    assert invoice.info["ocr_pages"] == "1" and float(invoice.info["ocr_confidence"]) > 80
    # A mixed PDF: the typed page keeps its text layer, only the scanned page is read by OCR.
    mixed = parse_bytes(GOOD["scans/mixed.pdf"], "mixed.pdf")
    assert [s.page for s in mixed.sections] == [1, 2] and mixed.info["ocr_pages"] == "1"
    assert mixed.sections[0].text == "Quarry report, page one, typed."
    assert {"basalt", "quarry", "permits", "october"} <= _words(mixed.sections[1].text)
    board = parse_bytes(GOOD["scans/whiteboard.png"], "board.png")
    assert board.parser == "image" and {"marmalade", "committee", "thursday"} <= _words(board.sections[0].text)
    assert parse_bytes(text_image(["Sextant calibration notes"], "JPEG"), "photo.jpg").sections[0].text.startswith("Sextant")
    fax = parse_bytes(multipage_tiff([["Ledger page alpha"], ["Ledger page omega"]]), "fax.tif")
    assert [(s.page, s.text) for s in fax.sections] == [(1, "Ledger page alpha"), (2, "Ledger page omega")]
    # Recognised by signature under a wrong extension, as PDFs and office files are.
    assert parse_bytes(GOOD["scans/whiteboard.png"], "upload.bin").info["sniffed_as"] == ".png"


def test_slides_sheets_and_mail_keep_their_structure():
    deck = parse_bytes(GOOD["office/roadmap.pptx"], "deck.pptx")
    assert deck.title == "Observatory plans"
    assert [(s.page, s.heading) for s in deck.sections] == [(1, "Roadmap 2027"), (2, "Costs")]
    assert "Launch the Kestrel telescope array in Patagonia" in deck.sections[0].text
    assert "Notes: The budget was approved by the Finch foundation." in deck.sections[0].text
    assert "Mirror coating | 90,000 USD" in deck.sections[1].text

    book = parse_bytes(GOOD["office/figures.xlsx"], "book.xlsx")
    assert [s.heading for s in book.sections] == ["Budget", "Staff"]
    assert book.sections[0].text.split("\n\n")[0] == "Item: Osprey turbine maintenance\nCost: 1200"
    # The formula is read as the value Excel cached, not as "=SUM(B2:B3)".
    assert book.sections[0].text.split("\n\n")[-1] == "Item: Total\nCost: 2000"
    assert book.info == {"sheets": "2", "rows": "6"}

    mail = parse_bytes(GOOD["mail/contract.eml"], "mail.eml")
    assert mail.title == "Signed lease for the harbour warehouse"
    assert mail.info["from"] == "Ingrid Halvorsen <ingrid@example.com>" and mail.info["to"] == "legal@example.com"
    assert mail.info["date"] == "Mon, 09 Mar 2026 14:30:00 +0000" and mail.info["attachments"] == "1"
    body, attachment = mail.sections
    assert body.text.startswith("From: Ingrid Halvorsen") and "rent review happens every five years" in body.text
    assert "<p>" not in body.text and body.text.count("rent review") == 1  # the plain part, not both
    assert (attachment.heading, attachment.page) == ("lease.pdf", 1) and "Gullwing Logistics" in attachment.text
    # An HTML-only message is read through the HTML parser; an attachment nobody can read is
    # listed, and the message is still indexed.
    html_only = parse_bytes(email_eml({"tool.exe": b"MZ\x90\x00" * 50}, html=True).replace(b"text/plain", b"text/x-skip"), "m.eml")
    assert "rent review" in html_only.sections[0].text and "<br>" not in html_only.sections[0].text
    assert html_only.info["attachments_skipped"] == "tool.exe: unsupported type"


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_each_hostile_variant_is_refused_alone_with_its_reason(name):
    data, reason = HOSTILE[name]
    started = time.perf_counter()
    with pytest.raises(ParseError) as refusal:
        parse_bytes(data, name)
    assert reason in str(refusal.value)
    # Bombs are refused from their headers: nothing is inflated or decoded.
    assert time.perf_counter() - started < 5.0


def test_limits_and_ocr_settings_name_what_to_change(monkeypatch, tmp_path):
    with pytest.raises(ParseError, match=r"workbook has more than 10 rows \(RAG_MAX_ROWS\)"):
        parse_bytes(workbook_xlsx(rows=20), "big.xlsx", Limits(max_rows=10))
    with pytest.raises(ParseError, match=r"more pixels than the limit of 500,000 \(RAG_MAX_IMAGE_PIXELS\)"):
        parse_bytes(GOOD["scans/whiteboard.png"], "board.png", Limits(max_image_pixels=500_000))
    off = Limits(ocr="off")
    with pytest.raises(ParseError, match=r"no text layer; .*OCR, which is off \(RAG_OCR=off; set RAG_OCR=auto"):
        parse_bytes(GOOD["scans/invoice.pdf"], "scan.pdf", off)
    with pytest.raises(ParseError, match=r"an image needs OCR, which is off"):
        parse_bytes(GOOD["scans/whiteboard.png"], "board.png", off)
    # A mixed PDF without OCR keeps its text pages and says which pages it could not read.
    assert parse_bytes(GOOD["scans/mixed.pdf"], "mixed.pdf", off).info["pages_without_text"] == "2"
    with pytest.raises(ParseError, match=r"OCR language 'zzz' is not installed \(RAG_OCR_LANGUAGES\)"):
        parse_bytes(GOOD["scans/whiteboard.png"], "board.png", Limits(ocr_languages="zzz"))
    # Without Tesseract: the old refusal, plus how to enable OCR.
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ParseError, match=r"no text layer; .*Tesseract is not installed: install Tesseract \(Debian: apt-get"):
        parse_bytes(GOOD["scans/invoice.pdf"], "scan.pdf")
    monkeypatch.undo()
    for name, value, message in [
        ("RAG_OCR", "sometimes", "^RAG_OCR='sometimes' is not valid: expected auto or off$"),
        ("RAG_OCR_LANGUAGES", "eng; rm -rf /", r"^RAG_OCR_LANGUAGES='eng; rm -rf /' is not valid: expected Tesseract language codes"),
    ]:
        monkeypatch.setenv(name, value)
        with pytest.raises(ValueError, match=message):
            Settings.from_env()
        monkeypatch.delenv(name)


def _process_group(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def test_a_stalled_ocr_is_killed_with_its_tesseract_and_the_sandbox_carries_on():
    # Twelve scanned pages at 300 dpi take several seconds even on a fast machine (three once
    # finished within the limit of one); the test ends at the limit either way.
    one_page = scanned_pdf(["Page of a long scan"])
    writer = PdfWriter()
    for _ in range(12):
        writer.append(PdfReader(io.BytesIO(one_page)))
    out = io.BytesIO()
    writer.write(out)
    with ParserSandbox(Limits(parse_timeout_seconds=1.0)) as sandbox:
        assert sandbox.parse(text_pdf(["warm"]), "warm.pdf").sections[0].text == "warm"
        pgid = sandbox._child.pid  # its own session: the group id is its pid
        started = time.perf_counter()
        with pytest.raises(ParseError, match=r"longer than 1 s \(RAG_PARSE_TIMEOUT_SECONDS\)"):
            sandbox.parse(out.getvalue(), "long-scan.pdf")
        assert time.perf_counter() - started < 5.0
        assert sandbox.restarts == 1
        # The child ran in its own process group: Tesseract went with it.
        deadline = time.monotonic() + 5
        while (left := _process_group(pgid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"processes of the killed parser survive: {left}"
        sandbox.limits = Limits(parse_timeout_seconds=120)
        assert "Marmalade" in sandbox.parse(GOOD["scans/whiteboard.png"], "board.png").sections[0].text


def test_a_drop_of_every_format_is_searchable_and_each_hostile_file_refused(rag_env):
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "company", GOOD)
    write_files(settings.inbox_dir, "company", {name: data for name, (data, _) in HOSTILE.items()})
    from rag_pipeline.cli import search_many
    from rag_pipeline.definitions import build_definitions

    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        result, runs = tick_and_run(defs, instance)
        assert len(runs) == 1
    rows = {r.path: r for r in records.list_documents(get_engine(settings.database_url))}
    for name in GOOD:
        assert rows[name].status == "indexed", (name, rows[name].error)
    for name, (_, reason) in HOSTILE.items():
        assert rows[name].status == "failed" and reason in rows[name].error, (name, rows[name].error)
    for path, phrase in PHRASES.items():
        [hits] = search_many(settings, [(phrase, "company")], k=1)
        assert hits and hits[0]["path"] == path, (phrase, hits)
    # The attachment is searchable as part of its message.
    [hits] = search_many(settings, [("sublet the loading bay to Gullwing Logistics", "company")], k=1)
    assert hits[0]["path"] == "mail/contract.eml"
