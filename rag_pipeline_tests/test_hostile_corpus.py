"""A drop of good and hostile uploads, through the sensor and ONE run: the good ones are indexed
and searchable, each bad one fails with its own reason (in `status --json`, the UI's `parsed`
check, and the run's log, once), and nothing outside the landing directory is ever opened."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, SensorResult

from rag_pipeline.cli import main as cli_main, search_many
from rag_pipeline.core import records
from rag_pipeline.core.db import get_engine
from rag_pipeline.definitions import build_definitions
from rag_pipeline.devtools.pdf import text_pdf
from rag_pipeline.settings import Settings
from rag_pipeline_tests.hostile_files import BAD, GOOD
from rag_pipeline_tests.helpers import tick_and_run, write_files

KB = "uploads"
_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    # An audit hook sees every open() and os.open() in this process, whoever makes it.
    if _opened is not None and event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes)):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)

LIMITS = {"RAG_MAX_FILE_BYTES": str(2 << 20), "RAG_MAX_PAGES": "5", "RAG_MAX_CHUNKS": "40"}
OVER_LIMITS = {
    "limits/too-big.txt": (b"big file line\n" * 250_000, "3.3 MB, over the limit of 2.0 MB (RAG_MAX_FILE_BYTES)"),
    "limits/many-pages.pdf": (text_pdf([f"page {n}" for n in range(6)]), "PDF has 6 pages, over the limit of 5 (RAG_MAX_PAGES)"),
    "limits/many-chunks.txt": (
        "\n\n".join(f"Paragraph {n} talks about topic {n} at some length." * 12 for n in range(80)).encode(),
        "over the limit of 40 (RAG_MAX_CHUNKS)",
    ),
}
IGNORED = [".hidden.txt", "~$lock.docx", "report.docx.part", "draft.tmp", "sub/.DS_Store"]


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_hostile_and_good_uploads_in_one_run(rag_env, tmp_path, monkeypatch):
    global _opened
    for name, value in LIMITS.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    inbox = settings.inbox_dir
    outside = tmp_path / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "secret.txt").write_text("TOP SECRET: must never be indexed")
    (outside / "folder" / "also-secret.txt").write_text("TOP SECRET too")
    write_files(inbox, KB, GOOD)
    write_files(inbox, KB, {name: data for name, (data, _) in {**BAD, **OVER_LIMITS}.items()})
    write_files(inbox, KB, {name: b"never picked up" for name in IGNORED})
    (inbox / KB / "escape").mkdir()
    os.symlink(outside / "secret.txt", inbox / KB / "escape" / "secret.txt")
    os.symlink(outside / "folder", inbox / KB / "escape" / "folder")
    os.symlink("../../../outside/secret.txt", inbox / KB / "escape" / "dotdot.txt")
    bad_name = os.fsencode(inbox / KB) + b"/latin1-\xe9t\xe9.txt"  # not UTF-8: can't be stored, can't be shown
    with open(bad_name, "wb") as fh:
        fh.write(b"named in Latin-1")
    (inbox / "loose-file.txt").write_text("outside any knowledge base")

    defs = build_definitions(settings)
    sensor_log = _Captured()
    _opened = []
    try:
        with DagsterInstance.get() as instance:
            result, runs = tick_and_run(defs, instance, log_handler=sensor_log)
            opened, _opened = _opened, None
            assert isinstance(result, SensorResult) and len(runs) == 1, "one run for the whole drop"
            second, again = tick_and_run(defs, instance, result.cursor, sensor_log)
            third, _ = tick_and_run(defs, instance, second.cursor, sensor_log)
            run_logs = [e.user_message for e in instance.all_logs(runs[0].run_id)]
            parsed_checks = {e.partition: e for e in runs[0].get_asset_check_evaluations() if e.check_name == "parsed"}
            partitions = set(instance.get_dynamic_partitions("documents"))
            chunk_reasons = {}
            for key in partitions:
                found = instance.fetch_materializations(
                    AssetRecordsFilter(AssetKey("document_chunks"), asset_partitions=[key]), limit=1
                ).records
                meta = found[0].asset_materialization.metadata if found else {}
                if meta and meta["status"].value == "failed":
                    chunk_reasons[key] = meta["reason"].value
    finally:
        _opened = None

    engine = get_engine(settings.database_url)
    rows = {r.path: r for r in records.list_documents(engine)}
    by_key = {r.partition_key: r for r in rows.values()}

    # The good ones: indexed, and searchable by what they say.
    for name in GOOD:
        assert rows[name].status == "indexed", (name, rows[name].error)
    for query, path in [
        ("Kaffeemühle warehouse Köln", "data/inventory.csv"),
        ("sleeper cabins trains overnight", "office/travel.docx"),
        ("leading dash option", "names/-rf --help.txt"),
        ("newline in a file name log line", "names/line\nbreak.txt"),
    ]:
        [hits] = search_many(settings, [(query, KB)], k=1)
        assert hits and hits[0]["path"] == path, (query, hits)

    # Each bad one: failed, with its own reason, in the database and as the UI's `parsed` check.
    expected = {name: reason for name, (_, reason) in {**BAD, **OVER_LIMITS}.items()}
    expected.update({
        "escape/secret.txt": "symbolic link refused", "escape/folder": "symbolic link refused",
        "escape/dotdot.txt": "symbolic link refused",
    })
    for name, reason in expected.items():
        assert rows[name].status == "failed" and reason in rows[name].error, (name, rows[name].error)
        assert rows[name].partition_key in partitions, f"{name} has no partition in the UI"
    refused_unread = {e.partition: e for e in result.asset_events if getattr(e, "check_name", None) == "parsed"}
    for key, row in by_key.items():
        if row.status != "failed":
            continue
        evaluation = refused_unread.get(key) or parsed_checks[key]
        if evaluation.passed:  # parsed, then refused by the chunk step: its materialization says why
            assert chunk_reasons[key] == row.error, row.path
        else:  # the evaluation names the file, then says why
            assert evaluation.description == f"{KB}/{row.path}: {row.error}", row.path
    assert {by_key[k].path for k in chunk_reasons} == {"limits/many-chunks.txt"}
    assert {by_key[k].path for k in refused_unread} == {"limits/too-big.txt", *(n for n in expected if n.startswith("escape/"))}

    # Ignored names and names that can't be documents never become rows.
    assert not [p for p in rows if Path(p).name in {Path(i).name for i in IGNORED}]
    assert not [p for p in rows if "latin1" in p] and "loose-file.txt" not in rows
    assert len(rows) == len(GOOD) + len(expected)

    # Nothing outside the landing directory was opened or listed, by the sensor or the run; nor
    # were the refused files themselves (the size limit is checked on the listing).
    outside_str = str(outside)
    assert opened and not [p for p in opened if p.startswith(outside_str) or "outside" in p], opened
    assert not [p for p in opened if p.endswith(("too-big.txt", "escape/secret.txt", "escape/dotdot.txt"))]

    # Said once: each failure once in the run's log; the sensor's refusals and problems once
    # over three ticks, and later ticks have nothing new to report.
    for name in expected:
        if rows[name].partition_key in parsed_checks:
            assert sum(1 for m in run_logs if m and f"document {KB}/{name} failed" in m) == 1, name
    for key in refused_unread:
        assert sum(1 for m in sensor_log.messages if f"document {KB}/{by_key[key].path} refused" in m) == 1
    for problem in ("not valid UTF-8", "files belong in a knowledge base folder"):
        assert sum(1 for m in sensor_log.messages if problem in m) == 1, (problem, sensor_log.messages)
    assert not again and not second.run_requests and not second.asset_events and not third.asset_events

    # `status --json` shows each state and reason.
    out = io.StringIO()
    with redirect_stdout(out):
        cli_main(["status", "--json"])
    status = {d["path"]: d for d in json.loads(out.getvalue())["documents"]}
    for name, reason in expected.items():
        assert status[name]["status"] == "failed" and reason in status[name]["error"]
    assert status["names/line\nbreak.txt"]["status"] == "indexed"


def test_a_file_still_being_written_waits_until_it_settles(rag_env, monkeypatch):
    monkeypatch.setenv("RAG_SETTLE_SECONDS", "2")
    settings = Settings.from_env()
    target = settings.inbox_dir / KB / "growing.txt"
    target.parent.mkdir(parents=True)
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance, open(target, "wb") as writer:
        writer.write(b"The first half of a document that is still being copied. ")
        writer.flush()
        first, runs = tick_and_run(defs, instance)
        assert not runs and not records.list_documents(get_engine(settings.database_url))
        writer.write(b"The second half arrives a moment later.")
        writer.flush()
        time.sleep(2.2)
        second, runs = tick_and_run(defs, instance, getattr(first, "cursor", None))
    [row] = records.list_documents(get_engine(settings.database_url))
    assert len(runs) == 1 and row.status == "indexed"
    assert row.version == hashlib.sha256(target.read_bytes()).hexdigest(), "registered whole, not half-written"


def test_a_file_about_to_settle_is_taken_by_the_tick_that_sees_it(rag_env, monkeypatch):
    """The tick waits the rest of the settle time for it (not a second tick a second later),
    and that wait is not counted as the tick's work, which would earn the sensor a rest."""
    from dagster import build_sensor_context

    from rag_pipeline_tests.helpers import execute

    monkeypatch.setenv("RAG_SETTLE_SECONDS", "0.8")
    settings = Settings.from_env()
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def("inbox_sensor")
    with DagsterInstance.get() as instance:
        write_files(settings.inbox_dir, KB, {"fresh.txt": b"Written a moment before the sensor looked."})
        started = time.monotonic()
        with build_sensor_context(instance=instance, resources=defs.resources) as ctx:
            result = sensor(ctx)
        elapsed = time.monotonic() - started
        assert len(result.run_requests) == 1 and elapsed > 0.5
        assert json.loads(result.cursor)["tick_seconds"] < elapsed - 0.4
        execute(defs, instance, result.run_requests[0])
    [row] = records.list_documents(get_engine(settings.database_url))
    assert row.status == "indexed"
