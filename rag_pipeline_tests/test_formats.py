"""Formats, encodings, limits and hostile files at the parser boundary (no Dagster, no database).

Every supported format keeps its structure; every broken file fails with its own reason; the
limits name their setting; random and mutated bytes never raise anything but ParseError and
never take long; the sandbox bounds what a parser may cost.
"""

from __future__ import annotations

import os
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from rag_pipeline.core.chunking import ChunkerConfig, chunk_document
from rag_pipeline.core.parsing import SUPPORTED_EXTENSIONS, Limits, ParsedDocument, ParseError, Section, parse_bytes
from rag_pipeline.core.sandbox import ParserSandbox
from rag_pipeline.core.tokens import get_encoding
from rag_pipeline.devtools.pdf import text_pdf
from rag_pipeline_tests.hostile_files import BAD, GOOD, docx_bytes, zip_bomb_docx

FUZZ_SECONDS_PER_FILE = 5.0
# OCR off: a mutated PDF that loses its text layer would be read by OCR, whose input is the
# rendered pixels (which the mutations reach only through pdfium and Pillow, still exercised) and
# whose cost per page is bounded by the sandbox's clock, not by this per-file budget.
FUZZ_LIMITS = Limits(ocr="off")


def test_every_format_keeps_its_structure():
    parsed = {name: parse_bytes(data, name) for name, data in GOOD.items()}
    assert {p.parser for p in parsed.values()} == {"text", "markdown", "html", "pdf", "docx", "csv", "tsv", "json", "jsonl"}
    word = parsed["office/travel.docx"]
    assert word.title == "Travel policy"
    assert [s.heading for s in word.sections] == ["Travel", "Travel > Claims"]
    assert "Hotel night | 150 EUR" in word.sections[1].text
    assert [s.heading for s in parsed["guides/astronomy.md"].sections] == ["Astronomy", "Astronomy > Telescopes"]
    assert [s.heading for s in parsed["web/bread.html"].sections] == ["Sourdough", "Sourdough > Baking"]
    assert [s.page for s in parsed["papers/geology.pdf"].sections] == [1, 2]
    # Records become "column: value" paragraphs, one per record.
    csv_doc = parsed["data/inventory.csv"]
    assert csv_doc.info["delimiter"] == "';'" and csv_doc.info["rows"] == "2"
    assert csv_doc.sections[0].text.split("\n\n")[0] == "sku: A-1\nname: Kaffeem\u00fchle\nwarehouse: K\u00f6ln"
    assert "name: Grace Hopper\nrole: admiral" in parsed["data/people.tsv"].sections[0].text
    assert "city: Lisbon\nmeta.trams: 28" in parsed["data/export.json"].sections[0].text
    assert parsed["data/events.jsonl"].sections[0].text.count("\n\n") == 1
    # Content sniffing where the signature is unambiguous.
    assert parsed["sniffed/report.bin"].parser == "pdf" and parsed["sniffed/report.bin"].info["sniffed_as"] == ".pdf"
    assert parsed["no-extension-readme"].parser == "text"
    assert parse_bytes(docx_bytes(), "upload.dat").parser == "docx"


def test_encodings_are_detected_and_recorded():
    french = parse_bytes(GOOD["notes/windows-1252.txt"], "a.txt")
    assert french.info["encoding"] == "cp1252" and "caf\u00e9 cr\u00e8me" in french.sections[0].text
    assert parse_bytes(GOOD["notes/utf-16.txt"], "a.txt").sections[0].text.startswith("Stra\u00dfenbahn")
    russian = "\u0421\u044a\u0435\u0448\u044c \u0436\u0435 \u0435\u0449\u0451 \u044d\u0442\u0438\u0445 \u043c\u044f\u0433\u043a\u0438\u0445 \u0431\u0443\u043b\u043e\u043a. " * 4
    parsed = parse_bytes(russian.encode("cp1251"), "ru.txt")
    assert parsed.sections[0].text == russian.strip() and parsed.info["encoding"] == "cp1251"
    japanese = "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002" * 4
    assert parse_bytes(japanese.encode("shift_jis"), "jp.md").sections[0].text == japanese
    # Text that only a NUL or lone surrogate escape would break is stored without them.
    assert parse_bytes(b'{"q": "a\\u0000b\\ud800c"}', "x.json").sections[0].text == "q: abc"


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_broken_file_fails_with_its_own_reason(name):
    data, reason = BAD[name]
    with pytest.raises(ParseError) as failure:
        parse_bytes(data, name)
    assert reason in str(failure.value)


def test_limits_name_the_setting_to_change():
    with pytest.raises(ParseError, match=r"PDF has 3 pages, over the limit of 2 \(RAG_MAX_PAGES\)"):
        parse_bytes(text_pdf(["one", "two", "three"]), "long.pdf", Limits(max_pages=2))
    with pytest.raises(ParseError, match=r"over the limit of 1.0 KB \(RAG_MAX_FILE_BYTES\)"):
        parse_bytes(b"x" * 2000, "big.txt", Limits(max_file_bytes=1024))
    # The zip-bomb guard reads only the archive's directory: a 1 GB bomb is refused at once.
    bomb = zip_bomb_docx(1 << 30)
    started = time.perf_counter()
    with pytest.raises(ParseError, match=r"zip bomb: the DOCX would unpack to 1.0 GB.*RAG_MAX_UNPACKED_BYTES"):
        parse_bytes(bomb, "bomb.docx")
    assert time.perf_counter() - started < 3.0
    assert parse_bytes(zip_bomb_docx(8 << 20), "ok.docx", Limits(max_unpacked_bytes=64 << 20)).parser == "docx"


def test_the_sandbox_bounds_parse_time_and_memory_and_carries_on():
    deep = b"<div>" * 200_000 + b"deep" + b"</div>" * 200_000
    huge = b"<p>hello world</p>" * 1_500_000
    with ParserSandbox(Limits(parse_timeout_seconds=1.0, parse_memory_mb=100)) as sandbox:
        assert sandbox.parse(text_pdf(["before"]), "a.pdf").sections[0].text == "before"
        child = sandbox._child
        started = time.perf_counter()
        with pytest.raises(ParseError, match=r"longer than 1 s \(RAG_PARSE_TIMEOUT_SECONDS\)"):
            sandbox.parse(deep, "deep.html")
        assert time.perf_counter() - started < 3.0
        assert child.poll() is not None, "the hung parser was killed"
        sandbox.limits = Limits(parse_timeout_seconds=60, parse_memory_mb=100)
        with pytest.raises(ParseError, match=r"RAG_PARSE_MEMORY_MB"):
            sandbox.parse(huge, "huge.html")
        assert sandbox.parse(text_pdf(["after"]), "b.pdf").sections[0].text == "after"
        # The timed-out child was replaced; an out-of-memory child either reports MemoryError
        # itself or dies and is replaced too.
        assert sandbox.restarts >= 1
        # Formats parsed by our own linear code never start a child.
        sandbox.close()
        assert sandbox.parse(b"plain", "x.txt").sections[0].text == "plain" and sandbox._child is None


def _fuzz_one(data: bytes, name: str) -> None:
    started = time.perf_counter()
    try:
        parsed = parse_bytes(data, name, FUZZ_LIMITS)
    except ParseError as exc:
        assert str(exc), "a refusal always says why"
    else:
        assert isinstance(parsed, ParsedDocument) and all(s.text for s in parsed.sections)
    assert time.perf_counter() - started < FUZZ_SECONDS_PER_FILE, f"{name}: parsing took too long"


EXTENSIONS = sorted(SUPPORTED_EXTENSIONS) + ["", ".xyz"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096), st.sampled_from(EXTENSIONS))
def test_fuzz_random_bytes_under_every_extension(data, extension):
    _fuzz_one(data, "fuzz" + extension)


SEEDS = {os.path.splitext(name)[1] or "": data for name, data in GOOD.items() if len(data) < 200_000}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SEEDS)), st.randoms(use_true_random=False), st.integers(1, 40))
def test_fuzz_mutated_real_files(extension, rnd: random.Random, mutations: int):
    # Valid files with a few bytes flipped, cut or duplicated reach far deeper into the parsers
    # than random bytes, which fail at the first signature check.
    data = bytearray(SEEDS[extension])
    for _ in range(mutations):
        if not data:
            break
        op, at = rnd.random(), rnd.randrange(len(data))
        if op < 0.6:
            data[at] = rnd.randrange(256)
        elif op < 0.8:
            del data[at : at + rnd.randrange(1, 64)]
        else:
            data[at:at] = data[at : at + rnd.randrange(1, 256)]
    _fuzz_one(bytes(data), "mutant" + extension)


sections = st.lists(
    st.tuples(
        st.lists(st.sampled_from(["alpha", "beta.", "gamma,", "\u03b4\u03ad\u03bb\u03c4\u03b1", "\n\n", "x" * 40, "Zw\u00f6lf"]), max_size=300),
        st.one_of(st.none(), st.integers(1, 50)),
        st.one_of(st.none(), st.sampled_from(["Intro", "Intro > Setup", "Appendix"])),
    ),
    min_size=1, max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(sections, st.integers(16, 100), st.integers(0, 7))
def test_chunks_stay_in_their_section_within_the_limit_and_lose_nothing(parts, size, overlap):
    doc = ParsedDocument([Section(" ".join(words).strip(), page, heading) for words, page, heading in parts], "text")
    config = ChunkerConfig(size, overlap)
    frame = chunk_document("doc", "v1", doc, config)
    enc = get_encoding()
    assert (frame["token_count"] <= size).all()
    assert frame["chunk_id"].is_unique
    assert frame["chunk_id"].tolist() == chunk_document("doc", "v1", doc, config)["chunk_id"].tolist()
    assert set(frame["chunk_id"]).isdisjoint(chunk_document("doc", "v2", doc, config)["chunk_id"])
    for number, section in enumerate(doc.sections):
        rows = frame[frame["section"] == number]
        if not section.text.strip():
            assert rows.empty
            continue
        # Each chunk carries its own section's page and heading, and is a slice of that section.
        assert set(rows["heading"].fillna("-")) == {section.heading or "-"}
        assert set(rows["page"].astype("object").where(rows["page"].notna(), None)) == {section.page}
        spans = list(zip(rows["char_start"], rows["char_end"]))
        assert spans[0][0] == 0 and spans[-1][1] == len(section.text), "text lost at an edge"
        for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
            assert s1 < s2 <= e1, "a gap (text lost) or no progress between chunks"
            shared = len(enc.encode(section.text[s2:e1])) if s2 < e1 else 0
            assert shared <= overlap + 12, "text repeated beyond the configured overlap"
        for (start, end), text in zip(spans, rows["text"]):
            assert text == section.text[start:end].strip()
