"""Uploads of every format -> sensor -> partitions and batched runs -> tables, Qdrant, search."""

from __future__ import annotations

import sqlalchemy as sa
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, SensorResult

from rag_pipeline.core import records
from rag_pipeline.core.audit import audit_all
from rag_pipeline.core.db import get_engine
from rag_pipeline.cli import search_many
from rag_pipeline.core.identity import partition_key
from rag_pipeline.definitions import build_definitions
from rag_pipeline.settings import Settings, open_vector_store
from rag_pipeline_tests.helpers import FORMAT_FILES, tick_and_run, write_files


def _search(settings: Settings, query: str, kb: str | None = None) -> list[dict]:
    [hits] = search_many(settings, [(query, kb)], k=3)
    return hits


def _checks(run, name: str) -> dict:  # noqa: ANN001
    """Per-document evaluations of a check in a run: {partition key: evaluation}."""
    return {e.partition: e for e in run.get_asset_check_evaluations() if e.check_name == name}


def test_sensor_indexes_every_format_and_search_finds_it(rag_env, embedding_server):
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "science", FORMAT_FILES)
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        requests_before = embedding_server.requests
        result, runs = tick_and_run(defs, instance)
        assert isinstance(result, SensorResult)
        keys = instance.get_dynamic_partitions("documents")
        expected = {f"science/{rel}" for rel in FORMAT_FILES}
        assert set(keys) == expected
        # Several documents per run: one run for the whole drop.
        assert len(result.run_requests) == 1 and len(runs) == 1
        assert embedding_server.requests > requests_before

        engine = get_engine(settings.database_url)
        rows = {r.path: r for r in records.list_documents(engine)}
        assert {r.status for r in rows.values()} == {"indexed"}, [(r.path, r.error) for r in rows.values()]
        with engine.connect() as conn:
            n_chunks = conn.execute(sa.text("SELECT count(*) FROM chunks")).scalar_one()
        assert n_chunks == sum(r.chunk_count for r in rows.values())

        # Materializations are per document, with that document's metadata.
        records_ = instance.fetch_materializations(
            AssetRecordsFilter(AssetKey("document_chunks"), asset_partitions=[partition_key("science", "papers/geology.pdf")]),
            limit=1,
        ).records
        meta = records_[0].asset_materialization.metadata
        assert meta["status"].value == "processed" and meta["chunks"].value >= 2

        for query, path in [
            ("refractor telescope lenses mirrors", "guides/astronomy.md"),
            ("sourdough starter flour", "web/cooking.html"),
            ("basalt igneous rock lava", "papers/geology.pdf"),
            ("tomatoes full sun watering", "notes/gardening.txt"),
        ]:
            hits = _search(settings, query, kb="science")
            assert hits and hits[0]["path"] == path, (query, [(h["path"], h["score"]) for h in hits])
        assert _search(settings, "basalt", kb="other-kb") == []
        # The script tag never reaches the index.
        assert not any("var x" in h["text"] for h in _search(settings, "var x 1"))
        checks = _checks(runs[0], "points_match_chunks")
        assert set(checks) == expected and all(c.passed for c in checks.values())
        [limit] = [e for e in runs[0].get_asset_check_evaluations() if e.check_name == "chunks_within_token_limit"]
        assert limit.passed and limit.partition is None

        store = open_vector_store(settings)
        try:
            report = audit_all(engine, store)
        finally:
            store.close()
        assert report.ok and report.documents_checked == 4

        # Nothing changed: the next tick requests nothing and embeds nothing, with or without the
        # cursor (without it, the database comparison alone finds nothing to do).
        calls = embedding_server.requests
        for cursor in (None, result.cursor):
            again, runs = tick_and_run(defs, instance, cursor=cursor)
            assert again.skip_reason and not again.run_requests and not runs
        assert embedding_server.requests == calls

        # The cursor never hides a real change.
        (settings.inbox_dir / "science" / "notes" / "gardening.txt").write_bytes(b"Cucumbers climb trellises.")
        changed, runs = tick_and_run(defs, instance, cursor=again.cursor)
        assert len(changed.run_requests) == 1 and changed.run_requests[0].tags["rag/documents"] == "1"
        assert _search(settings, "cucumbers trellises", kb="science")[0]["path"] == "notes/gardening.txt"


def test_bad_file_is_recorded_and_does_not_block_others(rag_env):
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb1", {
        "good.txt": b"Lighthouses guide ships along dangerous coasts.",
        "broken.pdf": b"%PDF-1.4 this is not really a pdf",
        "empty.md": b"",
        "data.bin": b"\x00\x01\x02",
    })
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        _, [run] = tick_and_run(defs, instance)
    engine = get_engine(settings.database_url)
    rows = {r.path: r for r in records.list_documents(engine)}
    checks = _checks(run, "parsed")
    # Each failed evaluation is on the file's own partition, and names the file and the reason.
    assert {k: c.description for k, c in checks.items() if not c.passed} == {
        f"kb1/{p}": f"kb1/{p}: {rows[p].error}" for p in ("broken.pdf", "empty.md", "data.bin")
    }
    assert checks["kb1/good.txt"].passed and checks["kb1/good.txt"].metadata["path"].value == "good.txt"
    assert rows["good.txt"].status == "indexed"
    assert rows["broken.pdf"].status == "failed" and "PDF" in rows["broken.pdf"].error
    assert rows["empty.md"].status == "failed" and rows["empty.md"].error == "empty file"
    assert rows["data.bin"].status == "failed" and "unsupported file type '.bin'" in rows["data.bin"].error


def test_many_uploads_are_batched_into_few_runs(rag_env, monkeypatch):
    monkeypatch.setenv("RAG_DOCS_PER_RUN", "10")
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "bulk", {f"doc-{i:03d}.txt": f"Document number {i} about topic {i % 7}.".encode() for i in range(25)})
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        result, runs = tick_and_run(defs, instance)
        # QUEUE_AHEAD (2) runs at a time; the rest are handed out as runs start.
        assert [r.tags["rag/documents"] for r in result.run_requests] == ["10", "10"]
        second, runs = tick_and_run(defs, instance, cursor=result.cursor)
        assert [r.tags["rag/documents"] for r in second.run_requests] == ["5"]
    rows = records.list_documents(get_engine(settings.database_url))
    assert len(rows) == 25 and all(r.status == "indexed" for r in rows)


def test_a_tick_behind_a_full_queue_says_what_the_documents_wait_for(rag_env):
    """Pending documents wait while QUEUE_AHEAD index runs are queued: the tick registers them
    and says why it requests no run (the UI showed "Sensor function returned an empty result")."""
    from dagster import DagsterRunStatus
    from dagster._core.test_utils import create_run_for_test

    from rag_pipeline.defs.jobs import index_documents_job

    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", {f"doc-{i}.txt": f"Queued note {i}.".encode() for i in range(5)})
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        for _ in range(2):
            create_run_for_test(instance, job_name=index_documents_job.name, status=DagsterRunStatus.NOT_STARTED)
        result, runs = tick_and_run(defs, instance)
    assert not runs and not result.run_requests
    reason = result.skip_reason.skip_message
    assert reason.endswith(
        "0 run(s) requested; pending documents wait for the 2 index run(s) queued ahead (handed out as those start)"
    ), reason
    assert "5 new" in reason
    assert {r.status for r in records.list_documents(get_engine(settings.database_url))} == {"pending"}


def test_a_run_reads_the_corpus_partition_keys_once_per_step_not_once_per_document(rag_env, monkeypatch):
    """Per-document metadata made Dagster re-read every partition key of the corpus once per
    document (quadratic in the corpus): a 60-document run must read them a bounded number of times."""
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "bulk", {f"doc-{i:03d}.txt": f"Note {i} on subject {i % 5}.".encode() for i in range(60)})
    reads = []
    real = DagsterInstance.get_dynamic_partitions

    def counted(self, partitions_def_name):  # noqa: ANN001, ANN202
        reads.append(partitions_def_name)
        return real(self, partitions_def_name)

    monkeypatch.setattr(DagsterInstance, "get_dynamic_partitions", counted)
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        _, runs = tick_and_run(defs, instance)
    assert len(runs) == 1
    assert all(r.status == "indexed" for r in records.list_documents(get_engine(settings.database_url)))
    assert len(reads) < 30, f"{len(reads)} reads of every partition key for 60 documents"


def test_transient_endpoint_errors_are_retried(rag_env, embedding_server):
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", {"a.txt": b"Volcanoes erupt when magma rises.", "b.txt": b"Glaciers carve valleys."})
    embedding_server.set_faults(next_statuses=[500, 429, 503])
    failures = embedding_server.failures
    try:
        defs = build_definitions(settings)
        with DagsterInstance.get() as instance:
            tick_and_run(defs, instance)
    finally:
        embedding_server.set_faults()
    assert embedding_server.failures - failures == 3
    rows = records.list_documents(get_engine(settings.database_url))
    assert [r.status for r in rows] == ["indexed", "indexed"]


def test_the_embedding_step_keeps_rag_embed_requests_batches_at_the_endpoint(rag_env, embedding_server, monkeypatch):
    """The asset, as a run executes it, has a second batch at the endpoint while the first is held."""
    import threading
    import time

    monkeypatch.setenv("RAG_EMBED_BATCH_SIZE", "2")
    monkeypatch.setenv("RAG_EMBED_REQUESTS", "2")
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", {
        f"long{i}.txt": " ".join(f"tide{i}pool{j}" for j in range(300)).encode() for i in range(2)
    })
    defs = build_definitions(settings)
    embedding_server.hold_next(1)
    before, outcome = embedding_server.requests, []
    with DagsterInstance.get() as instance:
        run = threading.Thread(target=lambda: outcome.append(tick_and_run(defs, instance)))
        run.start()
        try:
            assert embedding_server.wait_until_held(1, timeout=120)
            deadline = time.monotonic() + 10
            while embedding_server.requests < before + 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            second = embedding_server.requests >= before + 2
        finally:
            embedding_server.release()
            run.join(120)
    assert second, "one batch at a time: RAG_EMBED_REQUESTS did not reach the step"
    _, runs = outcome[0]
    assert len(runs) == 1 and all(r.status == "indexed" for r in records.list_documents(get_engine(settings.database_url)))
