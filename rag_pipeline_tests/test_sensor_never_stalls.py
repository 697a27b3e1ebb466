"""The sensor never stalls: large drops, files being written, lost ticks, outages and scattered
changes each leave documents waiting for seconds, not minutes (issue: "The sensor never stalls").

Driven through the real sensor, PostgreSQL, Dagster's instance and in-process runs."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, build_sensor_context

from rag_pipeline.core import detection, planning, records
from rag_pipeline.core.db import get_engine
from rag_pipeline.core.identity import document_id
from rag_pipeline.definitions import build_definitions
from rag_pipeline.defs import orchestrator, sensors
from rag_pipeline.settings import Settings
from rag_pipeline_tests.helpers import execute, tick_and_run, write_files


def _files(n: int, start: int = 0) -> dict[str, bytes]:
    return {f"f{i:03d}.txt": f"Document {i}: the tide tables of harbour number {i}.".encode() for i in range(start, start + n)}


def _age(path: Path, seconds: float = 60.0) -> None:
    """As if the file had been written `seconds` ago (settled)."""
    old = time.time() - seconds
    os.utime(path, (old, old))


def _tick(defs, instance: DagsterInstance, cursor: str | None = None):  # noqa: ANN001, ANN202
    """One evaluation whose runs are not executed (lost, or still queued)."""
    with build_sensor_context(instance=instance, resources=defs.resources, cursor=cursor) as ctx:
        return defs.resolve_sensor_def("inbox_sensor")(ctx)


def _documents(result) -> list[str]:  # noqa: ANN001
    """The documents each index run request covers, in partition order."""
    return [int(r.tags[orchestrator.DOCUMENTS_TAG]) for r in result.run_requests if r.job_name == "index_documents"]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_large_drop_is_registered_in_slices_with_runs_from_the_first_tick(rag_env, monkeypatch):
    monkeypatch.setattr(sensors, "TICK_BUDGET", detection.Budget(files=4, seconds=60))
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", _files(10))
    defs = build_definitions(settings)
    engine = get_engine(settings.database_url)
    log = _Lines()
    with DagsterInstance.get() as instance:
        first, runs = tick_and_run(defs, instance, log_handler=log)
        # The first slice is handed out at once, and the tick says how far it got.
        assert len(records.list_documents(engine)) == 4 and len(runs) == 1
        assert any("registered 4 of 10 new or changed files; 6 left for the next tick" in line for line in log.lines)
        assert json.loads(first.cursor)["listing"] == ""  # not registered in full: the next tick goes on
        second, _ = tick_and_run(defs, instance, cursor=first.cursor)
        third, _ = tick_and_run(defs, instance, cursor=second.cursor)
        assert json.loads(third.cursor)["listing"] != ""
        assert {r.status for r in records.list_documents(engine)} == {records.INDEXED}
        assert len(records.list_documents(engine)) == 10
        idle, runs = tick_and_run(defs, instance, cursor=third.cursor)
        assert idle.skip_reason and not runs


def _three_uploads():  # noqa: ANN202
    """Three files in the inbox: the definitions and our engine."""
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", _files(3))
    return build_definitions(settings), get_engine(settings.database_url)


def test_a_lost_hand_off_is_handed_out_again_at_the_next_tick(rag_env, monkeypatch):
    """A tick past its deadline, a daemon crash or `dagster sensor preview`: the documents were
    stamped requested, but no run was ever created for them."""
    defs, engine = _three_uploads()
    with DagsterInstance.get() as instance:
        lost = _tick(defs, instance)
        [request] = lost.run_requests
        # Within LOST_AFTER its run may still be on the way: not handed out twice.
        lost_after = planning.LOST_AFTER
        monkeypatch.setattr(planning, "LOST_AFTER", planning.REREQUEST_AFTER)
        assert _tick(defs, instance, cursor=lost.cursor).run_requests == []
        monkeypatch.setattr(planning, "LOST_AFTER", lost_after)
        time.sleep(planning.LOST_AFTER.total_seconds() + 0.5)
        again = _tick(defs, instance, cursor=lost.cursor)
        [retry] = again.run_requests
        assert retry.tags[orchestrator.REQUEST_TAG] != request.tags[orchestrator.REQUEST_TAG]
        assert _documents(again) == [3]
        assert {r.attempts for r in records.list_documents(engine)} == {2}
        execute(defs, instance, retry)
        assert {r.status for r in records.list_documents(engine)} == {records.INDEXED}


def test_documents_of_a_failed_run_are_handed_out_again_soon_after_it_ends(rag_env, embedding_server, monkeypatch):
    """An endpoint outage outlasting Dagster's run retries: its documents wait RETRY_AFTER after
    the last run ended, not a fixed ten minutes, and the attempts stay unspent."""
    defs, engine = _three_uploads()
    with DagsterInstance.get() as instance:
        first = _tick(defs, instance)
        [request] = first.run_requests
        embedding_server.set_faults(status_rate=1.0, statuses=(503,))
        try:
            assert not execute(defs, instance, request, expect_success=False).success
        finally:
            embedding_server.set_faults()
        assert {r.attempts for r in records.list_documents(engine)} == {0}  # refunded: not their fault
        # Its run has just ended: Dagster's own run retry may be about to start.
        assert _tick(defs, instance, cursor=first.cursor).run_requests == []
        monkeypatch.setattr(planning, "RETRY_AFTER", planning.RETRY_AFTER * 0)
        healed = _tick(defs, instance, cursor=first.cursor)
        [retry] = healed.run_requests
        assert _documents(healed) == [3]
        execute(defs, instance, retry)
        assert {r.status for r in records.list_documents(engine)} == {records.INDEXED}


def test_a_file_still_being_written_holds_back_only_itself(rag_env, monkeypatch):
    monkeypatch.setenv("RAG_SETTLE_SECONDS", "30")
    settings = Settings.from_env()
    inbox = settings.inbox_dir / "kb"
    write_files(settings.inbox_dir, "kb", _files(3))
    for path in inbox.iterdir():
        _age(path)
    growing = inbox / "growing.txt"
    growing.write_bytes(b"first line\n")
    defs = build_definitions(settings)
    engine = get_engine(settings.database_url)
    with DagsterInstance.get() as instance:
        first, runs = tick_and_run(defs, instance)
        assert {r.path for r in records.list_documents(engine)} == set(_files(3)) and len(runs) == 1
        # The listing is recognised as unchanged while the file keeps growing...
        with growing.open("ab") as fh:
            fh.write(b"second line\n")
        idle, _ = tick_and_run(defs, instance, cursor=first.cursor)
        assert "no changes" in idle.skip_reason.skip_message
        # ...and a new upload beside it is taken at the next tick.
        write_files(settings.inbox_dir, "kb", {"beside.txt": b"Uploaded while another file was still being copied."})
        _age(inbox / "beside.txt")
        beside, runs = tick_and_run(defs, instance, cursor=idle.cursor)
        assert len(runs) == 1 and records.get_documents(engine, [document_id("kb", "beside.txt")])
        # Once it has settled, the growing file is taken too.
        _age(growing)
        settled, runs = tick_and_run(defs, instance, cursor=beside.cursor)
        assert len(runs) == 1
        assert records.get_documents(engine, [document_id("kb", "growing.txt")])[document_id("kb", "growing.txt")].status == records.INDEXED


def _materializations(instance: DagsterInstance, key: str) -> int:
    return len(instance.fetch_materializations(
        AssetRecordsFilter(AssetKey("document_embeddings"), asset_partitions=[key]), limit=100
    ).records)


def test_scattered_changes_are_one_run_that_takes_exactly_them(rag_env):
    """After a re-upload storm, runs used to be one per group of neighbouring partitions
    (26 runs of 100, 1, 1, 1, 4, 1, ...). Changed documents are gathered at the end of the
    partition order, so one range run takes exactly them and no other document."""
    settings = Settings.from_env()
    files = _files(12)
    write_files(settings.inbox_dir, "kb", files)
    defs = build_definitions(settings)
    engine = get_engine(settings.database_url)
    with DagsterInstance.get() as instance:
        first, runs = tick_and_run(defs, instance)
        assert len(runs) == 1
        changed = ["f001.txt", "f004.txt", "f007.txt", "f010.txt"]
        write_files(settings.inbox_dir, "kb", {name: files[name] + b" Revised." for name in changed})
        storm, runs = tick_and_run(defs, instance, cursor=first.cursor)
        assert _documents(storm) == [4] and len(runs) == 1
        keys = {f"kb/{name}" for name in changed}
        assert set(instance.get_dynamic_partitions("documents")[-4:]) == keys
        for name in files:
            key = f"kb/{name}"
            assert _materializations(instance, key) == (2 if key in keys else 1), name
        assert {r.status for r in records.list_documents(engine)} == {records.INDEXED}


@pytest.mark.parametrize("budget", [detection.Budget(files=2, seconds=60), detection.Budget(files=100, seconds=0)])
def test_detection_within_a_budget_leaves_the_rest_for_the_next_call(rag_env, budget: detection.Budget):
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", _files(5))
    engine = get_engine(settings.database_url)
    seen: list[str] = []
    for _ in range(10):
        found = detection.detect(engine, settings.inbox_dir, budget=budget)
        seen += found.new
        if found.listing_digest:
            break
        # With no time at all, each call still registers one file: a slice never stalls.
        assert found.registered >= 1 and found.waiting == found.to_register - found.registered
    assert len(seen) == len(set(seen)) == 5
    assert detection.detect(engine, settings.inbox_dir, previous_digest=found.listing_digest, budget=budget).new == []


def test_a_slow_listing_leaves_the_hashing_its_time(rag_env):
    """Under a load average of 9 a listing of 100,000 files took 11 s; when the hashing clock
    also counted the listing, every tick registered one file. The clock starts after it, and a
    listing slower than the whole target still leaves MIN_HASHING."""
    from rag_pipeline.core.sources import FolderSource

    class SlowListing(FolderSource):
        def list(self, **kwargs):  # noqa: ANN003, ANN201
            time.sleep(0.5)
            return super().list(**kwargs)

    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", _files(20))
    engine = get_engine(settings.database_url)
    found = detection.detect(engine, SlowListing(settings.inbox_dir), budget=detection.Budget(files=100, seconds=0.4))
    assert (found.registered, found.waiting, len(found.new)) == (20, 0, 20)
    assert found.seconds["list"] >= 0.5 and set(found.seconds) == {"list", "compare", "hash", "register"}
    write_files(settings.inbox_dir, "kb", _files(20, start=20))
    found = detection.detect(
        engine, SlowListing(settings.inbox_dir), budget=detection.Budget(files=100, seconds=10, target_seconds=0.1)
    )
    assert (found.registered, found.waiting) == (20, 0)  # past the target, the floor still hashes


def test_overdue_reporting_never_waits_for_a_run_writing_a_document(rag_env):
    """A run holds its documents' rows through the point upsert (34 s once under load): the
    sensor's overdue report skips those rows instead of waiting, and reports them later."""
    import datetime as dt

    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", _files(3))
    engine = get_engine(settings.database_url)
    assert len(detection.detect(engine, settings.inbox_dir).new) == 3
    held = document_id("kb", "f001.txt")
    later = records.now() + dt.timedelta(hours=1)
    with engine.connect() as writer:
        with writer.begin():
            records.lock_documents(writer, [held])  # as a run's write step does
            started = time.monotonic()
            reported = {r.id for r in records.overdue(engine, later, 10)}
            assert time.monotonic() - started < 5
            assert reported == {document_id("kb", "f000.txt"), document_id("kb", "f002.txt")}
    assert [r.id for r in records.overdue(engine, later, 10)] == [held]


def test_a_mass_deletion_leaves_search_at_once_and_the_ui_in_slices(rag_env, monkeypatch):
    """Dagster deletes dynamic partitions one statement per key: a tick retires at most
    `partition_deletes` of them and the next ticks go on, while search drops them all at once."""
    from rag_pipeline.cli import search_many

    settings = Settings.from_env()
    files = _files(5)
    write_files(settings.inbox_dir, "kb", files)
    defs = build_definitions(settings)
    with DagsterInstance.get() as instance:
        first, _ = tick_and_run(defs, instance)
        monkeypatch.setattr(sensors, "TICK_BUDGET", detection.Budget(partition_deletes=2))
        for name in files:
            (settings.inbox_dir / "kb" / name).unlink()
        result = _tick(defs, instance, cursor=first.cursor)
        assert [r.job_name for r in result.run_requests] == ["purge_deleted"]
        [hits] = search_many(settings, [("tide tables of harbour", None)], k=5)
        assert hits == []  # tombstoned by the tick, before the purge run
        remaining = [len(instance.get_dynamic_partitions("documents"))]
        cursor = result.cursor
        while json.loads(cursor)["retiring"]:
            result = _tick(defs, instance, cursor=cursor)
            cursor = result.cursor
            remaining.append(len(instance.get_dynamic_partitions("documents")))
        assert remaining == [3, 1, 0]
