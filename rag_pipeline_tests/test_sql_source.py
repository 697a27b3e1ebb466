"""Database rows as documents: the sources file, the SQL source on SQLite and PostgreSQL, and
the pipeline over several sources (issue 16)."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import psycopg
import pytest

from rag_pipeline.core.parsing import parse_bytes
from rag_pipeline.core.sources import SourceChanged, SourceMisconfigured, SourceUnavailable
from rag_pipeline.core.sources import catalog
from rag_pipeline.core.sources.sql import SqlSource

TICKETS = [
    (1, "OPS", "Printer on fire", "The printer on floor 3 is on fire again.", "open"),
    (2, "OPS", "VPN drops", "The VPN drops every ten minutes since the upgrade.", "open"),
    (3, "DEV", "Build is red", "The nightly build fails on the linker step.", "closed"),
]


def sqlite_tickets(path: Path, rows=TICKETS) -> str:  # noqa: ANN001
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE tickets (id INTEGER PRIMARY KEY, project TEXT, title TEXT, body TEXT, status TEXT)")
        conn.executemany("INSERT INTO tickets VALUES (?, ?, ?, ?, ?)", rows)
    return f"sqlite:///{path}"


def pg_tickets(pg_url: str, rows=TICKETS, table: str = "tickets") -> str:  # noqa: ANN001
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, project TEXT, title TEXT, body TEXT, status TEXT,"
            " updated_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {table} (id, project, title, body, status) VALUES (%s, %s, %s, %s, %s)", rows)
    return pg_url


def write_sources(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


def sql_entry(name: str, url: str, kb: str = "support", table: str = "tickets", extra: str = "") -> str:
    return (
        f"  - name: {name}\n    kind: sql\n    url: {url}\n    table: {table}\n    id: id\n"
        f"    knowledge_base: {kb}\n    text: [title, body]\n    metadata: [project, status]\n{extra}"
    )


def test_a_bad_source_is_one_line_naming_source_and_key_and_the_others_load(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TICKETS_DB", str(tmp_path))
    path = write_sources(tmp_path / "sources.yml", "sources:\n" + sql_entry("tickets", "sqlite:///${TICKETS_DB}/t.db") + (
        "  - name: typo\n    kind: sql\n    url: sqlite:///x\n    tabel: x\n    id: id\n    knowledge_base: kb\n    text: [a]\n"
        "  - name: nokey\n    kind: sql\n    url: sqlite:///${MISSING_VAR}/x\n    table: x\n    id: id\n    knowledge_base: kb\n    text: [a]\n"
        "  - name: both\n    kind: sql\n    url: sqlite:///x\n    table: x\n    query: SELECT 1\n    id: id\n    knowledge_base: kb\n    text: [a]\n"
        "  - name: strange\n    kind: ftp\n"
        "  - name: inbox\n    kind: folder\n    path: /srv/inbox\n"
        "  - name: bucket\n    kind: s3\n    url: s3://b/p\n"
    ))
    loaded = catalog.load(path)
    assert [s.name for s in loaded.sources] == ["tickets", "inbox"]
    assert loaded.sql[0].url == f"sqlite:///{tmp_path}/t.db"
    assert loaded.landing.name == "inbox"
    where = f"RAG_SOURCES_FILE={path}: "
    assert loaded.errors == {
        "typo": where + "source 'typo': key 'tabel': unknown key",
        "nokey": where + "source 'nokey': key 'url': environment variable MISSING_VAR is not set",
        "both": where + "source 'both': give exactly one of 'query' and 'table'",
        "strange": where + "source 'strange': key 'kind': expected one of folder, s3, sql",
        "bucket": where + "source 'bucket': key 'kind': a second landing zone (inbox is one); declare at most one folder or s3",
    }
    assert all("\n" not in e for e in loaded.errors.values())
    broken = catalog.load(write_sources(tmp_path / "broken.yml", "sources: [name: x\n"))
    assert broken.sources == [] and broken.errors[""].startswith("RAG_SOURCES_FILE=") and "not valid YAML" in broken.errors[""]
    assert "cannot read the file" in catalog.load(tmp_path / "absent.yml").errors[""]


def test_rows_render_hash_refuse_and_reread_on_sqlite(tmp_path: Path):
    url = sqlite_tickets(tmp_path / "t.db", [*TICKETS, (4, "OPS", None, "  ", "open")])
    spec = catalog.load(write_sources(tmp_path / "s.yml", "sources:\n" + sql_entry("tickets", url))).sql[0]
    source = SqlSource(spec)
    listing = source.list(max_file_bytes=10_000)
    assert sorted(listing.files) == [("support", "tickets/1"), ("support", "tickets/2"), ("support", "tickets/3")]
    assert listing.refused[("support", "tickets/4")].reason == "empty record: no text in title, body"
    stat = listing.files[("support", "tickets/1")]
    data = source.open("support", "tickets/1", token=stat.token).read()
    assert len(data) == stat.size
    parsed = parse_bytes(data, source.parse_name("tickets/1"))
    assert [s.heading for s in parsed.sections] == ["title", "body"]
    assert "fire" in parsed.sections[1].text and "OPS" not in " ".join(s.text for s in parsed.sections)
    assert parsed.info == {"encoding": "utf-8", "project": "OPS", "status": "open"}
    # Metadata is part of the version: a status change is a new token.
    with sqlite3.connect(tmp_path / "t.db") as conn:
        conn.execute("UPDATE tickets SET status = 'closed' WHERE id = 1")
    with pytest.raises(SourceChanged):
        source.open("support", "tickets/1", token=stat.token)
    assert source.list().files[("support", "tickets/1")].token != stat.token
    with pytest.raises(FileNotFoundError):
        source.open("support", "tickets/99")
    # Over the file limit: refused from the listing like an oversized file.
    assert "RAG_MAX_FILE_BYTES" in source.list(max_file_bytes=60).refused[("support", "tickets/2")].reason


def test_query_errors_and_missing_columns_name_the_key_and_a_dead_server_is_unavailable(pg_url: str, tmp_path: Path):
    pg_tickets(pg_url)
    body = "sources:\n" + sql_entry("tickets", pg_url) + (
        "  - name: wrongcol\n    kind: sql\n    url: " + pg_url + "\n    query: SELECT id, title FROM tickets\n"
        "    id: id\n    knowledge_base: kb\n    text: [title, body]\n"
        "  - name: badquery\n    kind: sql\n    url: " + pg_url + "\n    query: SELEKT 1\n"
        "    id: id\n    knowledge_base: kb\n    text: [title]\n"
        "  - name: down\n    kind: sql\n    url: postgresql://nobody@127.0.0.1:1/none\n    table: t\n"
        "    id: id\n    knowledge_base: kb\n    text: [title]\n"
    )
    specs = {s.name: s for s in catalog.load(write_sources(tmp_path / "s.yml", body)).sql}
    tickets = SqlSource(specs["tickets"])
    listing = tickets.list()
    assert len(listing.files) == 3
    stat = listing.files[("support", "tickets/2")]
    assert b"VPN" in tickets.open("support", "tickets/2", token=stat.token).read()
    with pytest.raises(SourceMisconfigured, match=r"^source 'wrongcol': key 'text': column 'body' is not in the result$"):
        SqlSource(specs["wrongcol"]).list()
    with pytest.raises(SourceMisconfigured, match=r"^source 'badquery': key 'query': .*syntax error"):
        SqlSource(specs["badquery"]).list()
    with pytest.raises(SourceUnavailable, match=r"^source 'down': postgresql(\+psycopg)?://nobody@127.0.0.1:1/none is not reachable"):
        SqlSource(specs["down"]).list()
    tickets.close()


def _texts(server) -> int:  # noqa: ANN001
    # Distinct texts the endpoint was asked for: a request the client retried (a connection
    # reset on a loaded machine) asks for the same texts again, which is no new embedding.
    return len(server.texts)


def _docs(settings) -> dict[tuple[str, str], str]:  # noqa: ANN001
    from rag_pipeline.core import records
    from rag_pipeline.core.db import open_engine

    return {(r.knowledge_base, r.path): r.status for r in records.list_documents(open_engine(settings.database_url))}


@pytest.mark.slow  # seven runs and searches: 12 s alone on 2 cores
def test_rows_sync_across_sources_with_same_ids_in_other_kbs(
    rag_env, pg_url: str, tmp_path: Path, embedding_server, monkeypatch, capsys,
):
    """A PostgreSQL table, a SQLite table with the same ids in another knowledge base and a
    folder file: one `run` indexes all; row updates, deletions and inserts are exactly what the
    next run does, without an embedding call for unchanged rows; one source's listing never
    tombstones another's documents; metadata filters search."""
    from rag_pipeline.cli import search_many
    from rag_pipeline.pipeline_runner import run_pending
    from rag_pipeline.settings import Settings

    source_db = pg_url.rsplit("/", 1)[0] + f"/src_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{source_db.rsplit("/", 1)[1]}"')
    try:
        pg_tickets(source_db)
        lite = sqlite_tickets(tmp_path / "crm.db", [(1, "CRM", "Invoice dispute", "Customer disputes invoice 77.", "open"),
                                                     (2, "CRM", "Renewal", "Renewal call booked for March.", "open")])
        monkeypatch.setenv("TICKETS_URL", source_db)
        sources = write_sources(tmp_path / "sources.yml", "sources:\n" + sql_entry("tickets", "${TICKETS_URL}")
                                + sql_entry("crm", lite, kb="sales"))
        monkeypatch.setenv("RAG_SOURCES_FILE", str(sources))
        settings = Settings.from_env()
        (settings.inbox_dir / "handbook").mkdir(parents=True)
        (settings.inbox_dir / "handbook" / "leave.txt").write_text("Annual leave carries over up to five days.")

        summary = run_pending(settings)
        assert summary["source_errors"] == [] and summary["run_failures"] == 0, summary
        assert _docs(settings) == {
            ("support", "tickets/1"): "indexed", ("support", "tickets/2"): "indexed", ("support", "tickets/3"): "indexed",
            ("sales", "crm/1"): "indexed", ("sales", "crm/2"): "indexed", ("handbook", "leave.txt"): "indexed",
        }
        [hits] = search_many(settings, [("printer on fire floor", "support")], 3)
        assert hits[0]["path"] == "tickets/1"
        [hits] = search_many(settings, [("invoice dispute", None)], 3)
        assert hits[0]["knowledge_base"] == "sales" and hits[0]["path"] == "crm/1"
        # Declared metadata rides on every chunk and filters search.
        from rag_pipeline.core.search import Searcher

        with Searcher.from_settings(settings) as searcher:
            hits = searcher.search("the build fails", k=10, metadata={"project": "DEV"}).hits
            assert hits and {h.citation.path for h in hits} == {"tickets/3"}
            assert hits[0].metadata == {"encoding": "utf-8", "project": "DEV", "status": "closed"}
            hits = searcher.search("printer VPN", k=10, knowledge_base="support", metadata={"project": "OPS", "status": "open"}).hits
            assert {h.citation.path for h in hits} == {"tickets/1", "tickets/2"}
        # The CLI, as the operator types it: --where on a declared column.
        from rag_pipeline.cli import main as cli_main

        capsys.readouterr()
        assert cli_main(["search", "printer VPN", "--kb", "support", "--where", "project=OPS", "--json", "-k", "10"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert {h["path"] for h in shown} == {"tickets/1", "tickets/2"}
        assert {h["metadata"]["project"] for h in shown} == {"OPS"}  # a UI shows the row's columns with the hit

        with psycopg.connect(source_db, autocommit=True) as conn:
            conn.execute("UPDATE tickets SET body = 'The VPN drops every hour since Tuesday.' WHERE id = 2")
            conn.execute("DELETE FROM tickets WHERE id = 3")
            conn.execute("INSERT INTO tickets (id, project, title, body, status) VALUES (4, 'OPS', 'Badge', 'Badge reader broken.', 'open')")
        before = _texts(embedding_server)
        summary = run_pending(settings)
        assert (summary["new"], summary["changed"], summary["deleted"]) == (1, 1, 1), summary
        docs = _docs(settings)
        assert ("support", "tickets/3") not in docs and docs[("support", "tickets/4")] == "indexed"
        assert docs[("sales", "crm/1")] == docs[("handbook", "leave.txt")] == "indexed"
        # Only the changed and new rows' chunks were embedded: titles are unchanged chunks.
        assert 0 < _texts(embedding_server) - before <= 3
        before = _texts(embedding_server)
        summary = run_pending(settings)
        assert (summary["new"], summary["changed"], summary["deleted"], summary["documents"]) == (0, 0, 0, 0)
        assert _texts(embedding_server) == before
        from rag_pipeline.doctor import _sql_sources

        assert {c.part: (c.status, c.detail.rsplit(": ", 1)[1]) for c in _sql_sources(settings)} == {
            "source tickets": ("ok", "3 rows"), "source crm": ("ok", "2 rows"),
        }

    finally:
        from rag_pipeline.core import db as core_db

        for key in [k for k in core_db._engines if "src_" in k]:
            core_db.dispose_engine(key)
        with psycopg.connect(pg_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{source_db.rsplit("/", 1)[1]}" WITH (FORCE)')


def test_the_guard_holds_a_purge_until_confirmed_and_a_bad_source_leaves_the_others_working(
    rag_env, tmp_path: Path, monkeypatch,
):
    """On SQLite: losing most of a source's rows is held, with the reason, until
    --confirm-deletions; a source whose entry goes bad is one line, its documents stay, and
    the others keep being indexed."""
    from rag_pipeline.pipeline_runner import run_pending
    from rag_pipeline.settings import Settings

    url = sqlite_tickets(tmp_path / "t.db")
    lite = sqlite_tickets(tmp_path / "crm.db", [(1, "CRM", "Invoice dispute", "Customer disputes invoice 77.", "open")])
    # A source whose rows routinely all go away turns the guard off with a fraction of 1.
    memo = sqlite_tickets(tmp_path / "memo.db", [(1, "MEMO", "Office closed", "The office is closed on Friday.", "open")])
    sources = write_sources(tmp_path / "sources.yml", "sources:\n" + sql_entry("tickets", url) + sql_entry("crm", lite, kb="sales")
                            + sql_entry("memo", memo, kb="memos", extra="    max_delete_fraction: 1.0\n"))
    monkeypatch.setenv("RAG_SOURCES_FILE", str(sources))
    settings = Settings.from_env()
    (settings.inbox_dir / "handbook").mkdir(parents=True)
    (settings.inbox_dir / "handbook" / "leave.txt").write_text("Annual leave carries over up to five days.")
    assert run_pending(settings)["indexed"] == 6

    # An emptied table looks exactly like a broken replica: held, said why, nothing deleted
    # (but the memo source's only row goes, as its fraction allows).
    with sqlite3.connect(tmp_path / "t.db") as conn:
        conn.execute("DELETE FROM tickets WHERE id <> 1")
    with sqlite3.connect(tmp_path / "memo.db") as conn:
        conn.execute("DELETE FROM tickets")
    summary = run_pending(settings)
    assert summary["deleted"] == 1 and summary["held_deletions"] == 2
    assert ("memos", "memo/1") not in _docs(settings)
    assert any("max_delete_fraction 0.5" in p and "--confirm-deletions tickets" in p for p in summary["problems"])
    assert _docs(settings)[("support", "tickets/2")] == "indexed"
    summary = run_pending(settings, confirm_deletions=["tickets"])
    assert summary["deleted"] == 2 and summary["held_deletions"] == 0
    assert sorted(_docs(settings)) == [("handbook", "leave.txt"), ("sales", "crm/1"), ("support", "tickets/1")]

    # A source gone bad is one line; the others keep working.
    sources.write_text(sources.read_text().replace("knowledge_base: sales", "knowledge_base: sales\n    colour: red"))
    (settings.inbox_dir / "handbook" / "new.txt").write_text("Expenses are reimbursed within thirty days.")
    summary = run_pending(settings)
    assert summary["source_errors"] == [f"RAG_SOURCES_FILE={sources}: source 'crm': key 'colour': unknown key"]
    assert _docs(settings)[("handbook", "new.txt")] == "indexed"
    assert _docs(settings)[("sales", "crm/1")] == "indexed"  # not deleted: its source was not listed


def _tick_sql(defs, instance, name: str, cursor: str | None = None):  # noqa: ANN001, ANN202
    from dagster import SensorResult, build_sensor_context

    from rag_pipeline_tests.helpers import execute

    sensor = defs.resolve_sensor_def(f"{name}_sensor")
    with build_sensor_context(instance=instance, resources=defs.resources, cursor=cursor) as ctx:
        result = sensor(ctx)
    runs = [execute(defs, instance, r) for r in result.run_requests or []] if isinstance(result, SensorResult) else []
    return result, runs


def test_each_sql_source_has_its_sensor_and_rows_are_partitions_between_ticks(rag_env, tmp_path: Path, monkeypatch):
    """On SQLite: the source's own sensor creates, updates and deletes row documents between
    ticks (partition `<kb>/<source>/<id>`); a broken entry's sensor skips with its one line."""
    from dagster import DagsterInstance

    from rag_pipeline.definitions import build_definitions
    from rag_pipeline.settings import Settings

    url = sqlite_tickets(tmp_path / "t.db")
    sources = write_sources(tmp_path / "sources.yml", "sources:\n" + sql_entry("tickets", url) + (
        "  - name: broken\n    kind: sql\n    url: sqlite:///x\n    table: x\n    id: id\n    knowledge_base: kb\n"
    ))
    monkeypatch.setenv("RAG_SOURCES_FILE", str(sources))
    settings = Settings.from_env()
    defs = build_definitions(settings)
    assert {s.name for s in defs.sensors} == {"inbox_sensor", "tickets_sensor", "broken_sensor"}
    with DagsterInstance.get() as instance:
        first, runs = _tick_sql(defs, instance, "tickets")
        assert runs and sorted(instance.get_dynamic_partitions("documents")) == [
            "support/tickets/1", "support/tickets/2", "support/tickets/3"
        ]
        assert _docs(settings) == {("support", f"tickets/{i}"): "indexed" for i in (1, 2, 3)}
        idle, runs = _tick_sql(defs, instance, "tickets", first.cursor)
        assert not runs and "no changes in sql source tickets (table tickets on sqlite:" in idle.skip_reason.skip_message
        # The UI counts the source's rows on every idle tick and says what the sensor reads.
        assert "(3 rows unchanged)" in idle.skip_reason.skip_message
        assert "Reads table tickets: id id, text title, body" in defs.resolve_sensor_def("tickets_sensor").description
        with sqlite3.connect(tmp_path / "t.db") as conn:
            conn.execute("UPDATE tickets SET status = 'closed' WHERE id = 1")
            conn.execute("DELETE FROM tickets WHERE id = 2")
        second, runs = _tick_sql(defs, instance, "tickets", idle.cursor)
        assert {r.job_name for r in second.run_requests} == {"index_documents", "purge_deleted"}
        assert sorted(instance.get_dynamic_partitions("documents")) == ["support/tickets/1", "support/tickets/3"]
        assert _docs(settings) == {("support", "tickets/1"): "indexed", ("support", "tickets/3"): "indexed"}
        # The folder's sensor lists the landing zone only: the rows are not its to delete.
        from rag_pipeline_tests.helpers import tick_and_run

        tick_and_run(defs, instance)
        assert _docs(settings) == {("support", "tickets/1"): "indexed", ("support", "tickets/3"): "indexed"}
        bad, runs = _tick_sql(defs, instance, "broken")
        assert not runs and bad.skip_reason.skip_message == f"RAG_SOURCES_FILE={sources}: source 'broken': key 'text': missing"


def test_updated_at_reads_only_recent_rows_with_an_overlap_and_ids_for_deletions(pg_url: str, tmp_path: Path):
    """Incremental listing on PostgreSQL: after the first registration, only rows updated since
    the latest registered updated_at (minus the overlap) are read; a row updated in the same
    second as that watermark is seen; a row whose change carries an old updated_at is not (the
    proof that the rest is not read); a deleted row is found by the id-only query."""
    from rag_pipeline.core import detection
    from rag_pipeline.core.db import open_engine

    pg_tickets(pg_url, table="src_tickets")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE src_tickets SET updated_at = '2026-01-01 10:00:00+00' WHERE id = 1")
        conn.execute("UPDATE src_tickets SET updated_at = '2026-01-01 11:00:00+00' WHERE id = 2")
        conn.execute("UPDATE src_tickets SET updated_at = '2026-01-01 12:00:00.250+00' WHERE id = 3")
    body = "sources:\n" + sql_entry("tickets", pg_url, table="src_tickets", extra="    updated_at: updated_at\n    overlap_seconds: 5\n")
    source = SqlSource(catalog.load(write_sources(tmp_path / "s.yml", body)).sql[0])
    engine = open_engine(pg_url)
    first = detection.detect(engine, source)
    assert len(first.new) == 3 and source.since_ns is None
    with psycopg.connect(pg_url, autocommit=True) as conn:
        # The same second as the watermark (12:00:00.250), a little earlier: within the overlap.
        conn.execute("UPDATE src_tickets SET body = 'Now the linker and the tests fail.', updated_at = '2026-01-01 12:00:00.100+00' WHERE id = 3")
        # Changed, but stamped an hour before the watermark: outside the overlap, not read.
        conn.execute("UPDATE src_tickets SET body = 'Changed without a new timestamp.' WHERE id = 1")
        conn.execute("DELETE FROM src_tickets WHERE id = 2")
    from rag_pipeline.core import records

    source.since_ns = records.latest_mtime_ns(engine, source.token_prefix)  # as detection does
    assert source.since_ns == dt_ns("2026-01-01T12:00:00.250+00:00")
    listing = source.list()
    assert set(listing.files) == {("support", "tickets/3")} and listing.held == {("support", "tickets/1")}
    # One of three rows gone: under the guard's fraction, so no confirmation is needed (and
    # the rows held back as unchanged must count as present for the guard).
    second = detection.detect(engine, source)
    assert (len(second.new), len(second.changed), len(second.deleted)) == (0, 1, 1)
    third = detection.detect(engine, source)
    assert (len(third.new), len(third.changed), len(third.deleted), third.unchanged) == (0, 0, 0, 1)
    source.close()


def dt_ns(text: str) -> int:
    import datetime as dt

    return int(dt.datetime.fromisoformat(text).timestamp() * 1_000_000) * 1000


def test_a_source_database_that_goes_down_leaves_its_rows_waiting_never_failed(rag_env, pg_url: str, tmp_path: Path, monkeypatch):
    """Rows registered, then their database refuses connections: `run` says so on one line
    (exit 2 material), the run reading them fails as a whole and they wait ("waiting: ..."),
    spending no attempt; once it is back, the next run indexes them."""
    from rag_pipeline.core import detection, records
    from rag_pipeline.core.db import open_engine
    from rag_pipeline.pipeline_runner import run_pending
    from rag_pipeline.settings import Settings, open_sources

    admin_url = pg_url.rsplit("/", 1)[0] + "/postgres"
    name = f"src_{uuid.uuid4().hex[:10]}"
    source_db = pg_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        pg_tickets(source_db)
        monkeypatch.setenv("RAG_SOURCES_FILE", str(write_sources(tmp_path / "s.yml", "sources:\n" + sql_entry("tickets", source_db))))
        settings = Settings.from_env()
        engine = open_engine(settings.database_url)
        sources = open_sources(settings)
        assert len(detection.detect(engine, sources.sql["tickets"]).new) == 3
        sources.sql["tickets"].close()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        summary = run_pending(settings)
        assert len(summary["source_errors"]) == 1 and "source 'tickets'" in summary["source_errors"][0]
        assert "not reachable" in summary["source_errors"][0] and "\n" not in summary["source_errors"][0]
        assert summary["run_failures"] == 1 and summary["failed"] == 0
        rows = {r.path: r for r in records.list_documents(engine)}
        assert {r.status for r in rows.values()} == {"pending"}
        assert all(r.error.startswith("waiting: ") and r.attempts == 0 for r in rows.values()), [(r.error, r.attempts) for r in rows.values()]
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        summary = run_pending(settings)
        assert summary["source_errors"] == [] and summary["indexed"] == 3, summary
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_run_with_a_bad_sources_file_is_one_line_exit_2_and_the_landing_zone_still_runs(rag_env, tmp_path: Path, capfd, monkeypatch):
    from rag_pipeline.cli import main
    from rag_pipeline.settings import Settings

    sources = write_sources(tmp_path / "sources.yml", "sources:\n  - name: tickets\n    kind: sql\n    url: sqlite:///x\n")
    monkeypatch.setenv("RAG_SOURCES_FILE", str(sources))
    inbox = Settings.from_env().inbox_dir / "kb"
    inbox.mkdir(parents=True)
    (inbox / "a.txt").write_text("Kestrels hover over motorway verges.")
    capfd.readouterr()
    code = main(["run"])
    out, err = capfd.readouterr()
    assert code == 2
    assert [line for line in err.splitlines() if line.strip()] == [
        f"rag-pipeline run: RAG_SOURCES_FILE={sources}: source 'tickets': missing keys: id, knowledge_base, text"
    ]
    assert out.startswith("1 document(s) in 1 run(s)") and "1 indexed" in out
    from rag_pipeline.doctor import run_checks

    checks = {c.part: c for c in run_checks(Settings.from_env())}
    assert checks["source tickets"].status == "FAILED" and "missing keys: id" in checks["source tickets"].detail
    code = main(["run", "--confirm-deletions", "nosuch"])
    _, err = capfd.readouterr()
    assert code == 2 and err.strip() == (
        "rag-pipeline run: --confirm-deletions nosuch: no usable SQL source of that name in RAG_SOURCES_FILE"
    )


def test_each_source_loads_only_its_own_documents(pg_url: str):
    """A tick compares its listing with its own source's documents, selected in SQL, not with
    every source's: `a_b`'s rows are not `aXb`'s (`_` is a LIKE wildcard) nor the landing zone's."""
    from rag_pipeline.core import records
    from rag_pipeline.core.db import open_engine
    from rag_pipeline.core.sources.sql import token_prefix

    engine = open_engine(pg_url)
    for kb, path, token in [("kb", "a.txt", None), ("kb", "b.txt", '"etag"'), ("kb", "a_b/1", token_prefix("a_b") + "x"),
                            ("kb", "aXb/1", token_prefix("aXb") + "y")]:
        records.register_upload(engine, kb, path, "v" * 64, 1, 0, change_token=token)
    paths = lambda known: sorted(p for _, p in known)  # noqa: E731
    assert paths(records.known_documents(engine, tokens=token_prefix("a_b"))) == ["a_b/1"]
    assert paths(records.known_documents(engine, not_tokens="sql:")) == ["a.txt", "b.txt"]
    assert len(records.known_documents(engine)) == 4


def test_each_source_hands_out_under_its_own_token_prefix():
    """A sensor releases only hand-offs whose token carries its prefix: prefixes are distinct
    per name (80 bits of a hash) and leave a token within its 40-character column."""
    from rag_pipeline.core.planning import new_token
    from rag_pipeline.defs.sensors import source_token_prefix

    names = [f"source_{i}" for i in range(20_000)]
    prefixes = {source_token_prefix(n) for n in names}
    assert len(prefixes) == len(names) and source_token_prefix(None) not in prefixes
    assert max(len(new_token(p)) for p in prefixes | {source_token_prefix("x" * 200)}) <= 40


def test_the_default_landing_folder_missing_is_empty_but_a_set_one_missing_is_a_problem(tmp_path: Path, monkeypatch):
    """A first run reading only SQL sources does not report the data folder's own inbox every
    time; a RAG_INBOX_DIR that is missing (an unmounted volume) still is, and deletes nothing."""
    from rag_pipeline.settings import Settings, open_sources

    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DATABASE_URL", "sqlite:///" + str(tmp_path / "x.db"))
    monkeypatch.delenv("RAG_INBOX_DIR", raising=False)
    monkeypatch.delenv("RAG_INBOX_URL", raising=False)
    scan = open_sources(Settings.from_env()).landing.list()
    assert scan.problems == [] and scan.unlisted == [] and (tmp_path / "data" / "inbox").is_dir()
    monkeypatch.setenv("RAG_INBOX_DIR", str(tmp_path / "mnt" / "uploads"))
    scan = open_sources(Settings.from_env()).landing.list()
    assert scan.problems == [f"{tmp_path / 'mnt' / 'uploads'}: the landing directory does not exist"]
    assert scan.unlisted == [""] and not (tmp_path / "mnt").exists()
