"""The core without Dagster: identity, parsing, chunking properties, inbox confinement."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from rag_pipeline.core.chunking import ChunkerConfig, chunk_document, split_text, token_offsets
from rag_pipeline.core.identity import chunk_id, document_id
from rag_pipeline.core.inbox import ingest, open_inside, scan
from rag_pipeline.core.parsing import ParsedDocument, ParseError, Section, parse_bytes
from rag_pipeline.core.tokens import get_encoding
from rag_pipeline.devtools.pdf import text_pdf


def test_identity_is_stable_and_distinct():
    assert document_id("kb", "a.txt") == document_id("kb", "a.txt")
    assert document_id("kb", "a.txt") != document_id("kb2", "a.txt")
    ids = {chunk_id("d", "v1", "c1", 0), chunk_id("d", "v2", "c1", 0), chunk_id("d", "v1", "c2", 0), chunk_id("d", "v1", "c1", 1)}
    assert len(ids) == 4 and chunk_id("d", "v1", "c1", 0) == chunk_id("d", "v1", "c1", 0)


def test_tokenizer_is_official_cl100k_offline():
    assert get_encoding().encode("hello world") == [15339, 1917]


def test_markdown_and_html_keep_heading_paths():
    md = parse_bytes(b"# Guide\n\nIntro.\n\n## Install\n\nRun pip.\n\n```\n# not a heading\n```\n", "g.md")
    assert [s.heading for s in md.sections] == ["Guide", "Guide > Install"]
    assert "# not a heading" in md.sections[1].text
    html = parse_bytes(b"<h1>A</h1><p>one</p><h2>B</h2><p>two</p><style>x{}</style>", "p.html")
    assert [(s.heading, s.text.split("\n")[-1]) for s in html.sections] == [("A", "one"), ("A > B", "two")]


def test_pdf_pages_and_failures():
    parsed = parse_bytes(text_pdf(["first page", "second page"]), "x.pdf")
    assert [s.page for s in parsed.sections] == [1, 2]
    with pytest.raises(ParseError, match="no extractable text"):
        parse_bytes(text_pdf([""]), "scan.pdf")
    with pytest.raises(ParseError, match="corrupt PDF"):
        parse_bytes(b"%PDF-1.4 garbage", "bad.pdf")


def test_text_decoding_and_refusals():
    french = "Le café au lait est servi à la crème, près de la fenêtre, où l'été dure longtemps. " * 5
    parsed = parse_bytes(french.encode("cp1252"), "a.txt")
    assert parsed.sections[0].text == french.strip() and parsed.info["encoding"] != "utf-8"
    with pytest.raises(ParseError, match="binary content"):
        parse_bytes(b"abc\x00\x01def", "a.txt")
    with pytest.raises(ParseError, match="unsupported file type"):
        parse_bytes(b"x", "a.exe")
    with pytest.raises(ParseError, match="empty file"):
        parse_bytes(b"  \n", "a.md")


words = st.lists(st.sampled_from(["alpha", "beta.", "gamma,", "δέλτα", "\n\n", "longerword", "x" * 30, "!?"]), max_size=600)


@settings(max_examples=60, deadline=None)
@given(words, st.integers(min_value=16, max_value=120), st.integers(min_value=0, max_value=7))
def test_chunker_properties(tokens, size, overlap):
    text = " ".join(tokens).strip()
    config = ChunkerConfig(size, overlap)
    spans = split_text(text, config)
    enc = get_encoding()
    for start, end, count in spans:
        assert count <= size and count == len(enc.encode(text[start:end]))
    # Nothing lost: consecutive windows touch or overlap, and together cover the text.
    if text.strip():
        assert spans[0][0] == 0 and spans[-1][1] == len(text)
        for (s1, e1, _), (s2, e2, _) in zip(spans, spans[1:]):
            assert s1 < s2 <= e1, "gap or no progress between chunks"
            overlap_tokens = len(enc.encode(text[s2:e1])) if s2 < e1 else 0
            assert overlap_tokens <= overlap + 12  # overlap snapped back to a word boundary


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)
       | st.sampled_from(["\udcff lone surrogate", "a\ud800b", "😀🚀 中文 𝔘𝔫𝔦", "x" * 50]))
def test_token_offsets_are_tiktokens_own(text):
    # The offsets come from the tokens' byte lengths, not tiktoken's loop over every byte: the
    # same answer for any text, emoji, CJK, combining marks and lone surrogates (which tiktoken
    # replaces, so its own offsets are taken) included.
    enc = get_encoding("cl100k_base")
    tokens = enc.encode(text, disallowed_special=())
    assert token_offsets(enc, tokens, text) == list(enc.decode_with_offsets(tokens)[1])


def test_chunk_frame_ids_are_deterministic():
    parsed = ParsedDocument([Section("word " * 500, page=3, heading="H")], "text")
    a = chunk_document("doc", "v", parsed, ChunkerConfig(50, 5))
    b = chunk_document("doc", "v", parsed, ChunkerConfig(50, 5))
    assert a["chunk_id"].tolist() == b["chunk_id"].tolist() and len(a) > 5
    assert set(a["page"]) == {3} and set(a["heading"]) == {"H"}


def test_a_listing_waits_for_a_file_about_to_settle_but_not_for_one_still_written(tmp_path: Path):
    import threading
    import time

    inbox = tmp_path / "inbox"
    (inbox / "kb").mkdir(parents=True)
    (inbox / "kb" / "done.txt").write_bytes(b"written in one go")
    started = time.monotonic()
    found = scan(inbox, min_age_seconds=0.6, settle_wait_seconds=0.6)
    assert list(found.files) == [("kb", "done.txt")] and not found.held
    assert 0.3 < found.settle_wait_seconds <= time.monotonic() - started < 1.5

    growing = inbox / "kb" / "growing.txt"
    growing.write_bytes(b"first half, ")

    def writer() -> None:
        time.sleep(0.3)
        with growing.open("ab") as fh:
            fh.write(b"second half")

    thread = threading.Thread(target=writer)
    thread.start()
    found = scan(inbox, min_age_seconds=0.6, settle_wait_seconds=0.6)
    thread.join()
    assert ("kb", "growing.txt") in found.held and ("kb", "growing.txt") not in found.files
    assert ("kb", "done.txt") in found.files

    # Past the bound on files looked at again: the first due are taken, the rest stay held.
    import rag_pipeline.core.inbox as inbox_module

    drop = tmp_path / "drop"
    (drop / "kb").mkdir(parents=True)
    for name in ("b.txt", "c.txt", "d.txt"):
        (drop / "kb" / name).write_bytes(name.encode())
        time.sleep(0.02)
    bound = inbox_module.SETTLE_WAIT_FILES
    inbox_module.SETTLE_WAIT_FILES = 2
    try:
        found = scan(drop, min_age_seconds=0.6, settle_wait_seconds=0.6)
    finally:
        inbox_module.SETTLE_WAIT_FILES = bound
    assert set(found.files) == {("kb", "b.txt"), ("kb", "c.txt")} and found.held == {("kb", "d.txt")}

    # Due later than the wait allows: held at once, no wait.
    (inbox / "kb" / "later.txt").write_bytes(b"settles in a minute")
    found = scan(inbox, min_age_seconds=60, settle_wait_seconds=0.5)
    assert found.settle_wait_seconds == 0 and ("kb", "later.txt") in found.held


def test_scan_confined_to_inbox(tmp_path: Path):
    inbox = tmp_path / "inbox"
    (inbox / "kb").mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (inbox / "kb" / "ok.txt").write_text("fine")
    (inbox / "kb" / ".hidden.txt").write_text("hidden")
    (inbox / "kb" / "upload.txt.part").write_text("partial")
    os.symlink(secret, inbox / "kb" / "link.txt")
    os.symlink(tmp_path, inbox / "kb" / "dirlink")
    found = scan(inbox)
    assert list(found.files) == [("kb", "ok.txt")]
    assert "symbolic link refused" in found.refused[("kb", "link.txt")].reason
    assert "symbolic link refused" in found.refused[("kb", "dirlink")].reason
    # A refused entry is held, never mistaken for a deleted file.
    assert found.may_be_present("kb", "link.txt") and not found.may_be_present("kb", "gone.txt")
    with pytest.raises(PermissionError):
        open_inside(inbox, "kb", "../../secret.txt")
    with pytest.raises(PermissionError):
        open_inside(inbox, "kb", "link.txt")


def test_ingest_is_atomic_and_validates_kb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.md").write_text("# A")
    seen_before_rename = []
    real_replace = os.replace

    def replace_after_scan(tmp, target):  # noqa: ANN001
        # The whole content is written, yet a scan at this moment must see nothing.
        assert Path(tmp).read_text() == "# A"
        seen_before_rename.append(scan(tmp_path / "inbox").files)
        real_replace(tmp, target)

    monkeypatch.setattr("rag_pipeline.core.inbox.os.replace", replace_after_scan)
    out = ingest([src], tmp_path / "inbox", "team-1")
    assert seen_before_rename == [{}]
    assert list(scan(tmp_path / "inbox").files) == [("team-1", "sub/a.md")]
    assert [(kb, p) for _, kb, p in out] == [("team-1", "sub/a.md")]
    assert not list((tmp_path / "inbox").rglob(".ingest-*"))
    with pytest.raises(ValueError, match="invalid knowledge base"):
        ingest([src], tmp_path / "inbox", "../etc")
