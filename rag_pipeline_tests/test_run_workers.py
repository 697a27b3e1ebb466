"""`rag-pipeline run` with RAG_RUN_PROCESSES: the pending documents split into runs executed side
by side, each in a process of its own, with the same results as one run in the command's process."""

from __future__ import annotations

import os

from dagster import DagsterInstance, DagsterRunStatus

from rag_pipeline import run_workers
from rag_pipeline.core import planning, records
from rag_pipeline.core.db import get_engine
from rag_pipeline.core.heartbeat import last_beat
from rag_pipeline.pipeline_runner import run_pending
from rag_pipeline.settings import Settings
from rag_pipeline_tests.helpers import write_files

TEXTS = {f"note{i}.txt": f"Field note {i}: the heron stood in the shallows for {i + 3} minutes.".encode() for i in range(7)}


def test_run_splits_the_documents_into_runs_side_by_side_in_processes_of_their_own(rag_env, monkeypatch):
    monkeypatch.setenv("RAG_RUN_PROCESSES", "2")
    monkeypatch.setattr(planning, "MIN_SPLIT_RUN", 3)
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", {**TEXTS, "broken.pdf": b"%PDF-1.7 truncated"})
    used = []
    real = run_workers.execute

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        used.append(kwargs["processes"])
        return real(*args, **kwargs)

    monkeypatch.setattr(run_workers, "execute", spy)
    summary = run_pending(settings)
    # 8 documents in 2 processes: 2 runs of 4, each a success (the broken PDF fails alone).
    assert used == [2] and summary["runs"] == 2 and summary["run_failures"] == 0 and not summary["errors"]
    assert summary["indexed"] == 7 and summary["failed"] == 1
    assert "corrupt PDF" in summary["failures"][0]["error"]
    engine = get_engine(settings.database_url)
    with DagsterInstance.get() as instance:
        # The executed runs (each beats; defs/failures.py's record of the refused one does not).
        beats = {r.run_id: (r, last_beat(engine, r.run_id)) for r in instance.get_runs()}
        executed = [(r, beat) for r, beat in beats.values() if beat is not None]
    assert len(executed) == 2 and {r.status for r, _ in executed} == {DagsterRunStatus.SUCCESS}
    pids = {beat.pid for _, beat in executed}
    assert os.getpid() not in pids
    # Nothing pending: a second `run` finds nothing to do and starts no process.
    used.clear()
    again = run_pending(settings)
    assert again["runs"] == 0 and used == [] and again["indexed"] == 7
    assert {r.status for r in records.list_documents(engine)} == {records.INDEXED, records.FAILED}


def test_a_run_that_fails_in_its_process_is_one_line_and_its_documents_wait(rag_env, embedding_server, monkeypatch):
    monkeypatch.setenv("RAG_RUN_PROCESSES", "2")
    monkeypatch.setattr(planning, "MIN_SPLIT_RUN", 3)
    # No retries: the endpoint's 500s fail the embedding step at once.
    monkeypatch.setenv("RAG_EMBED_MAX_RETRIES", "0")
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", TEXTS)
    used = []
    real = run_workers.execute
    monkeypatch.setattr(run_workers, "execute", lambda *a, **k: used.append(k["processes"]) or real(*a, **k))
    embedding_server.set_faults(status_rate=1.0, statuses=(500,))
    try:
        summary = run_pending(settings)
    finally:
        embedding_server.set_faults()
    # Both failed in the workers (not in this process), each with one line.
    assert used == [2] and summary["runs"] == 2 and summary["run_failures"] == 2 and summary["indexed"] == 0
    assert summary["errors"] and all("\n" not in e for e in summary["errors"])
    assert summary["pending"] == 7
