"""The CLI end to end, as an operator scripts it: every verb with --json, parsed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rag_pipeline_tests.helpers import FORMAT_FILES, assert_run_succeeded

# Every verb is its own process that loads Dagster and runs the pipeline: a third of the fast
# tier's CPU on 2 cores, so these run in the slow tier.
pytestmark = pytest.mark.slow


def cli(*args: str, check: bool = True) -> tuple[int, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "rag_pipeline.cli", *args, "--json"],
        capture_output=True, text=True, env=dict(os.environ), timeout=300,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def test_ingest_run_status_search_verify(rag_env, tmp_path: Path, embedding_server):
    src = tmp_path / "upload"
    for rel, data in FORMAT_FILES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    (src / "broken.pdf").write_bytes(b"%PDF-1.7 truncated")

    _, ingested = cli("ingest", str(src), "--kb", "science")
    assert {d["path"] for d in ingested} == {*FORMAT_FILES, "broken.pdf"}
    assert all(len(d["document_id"]) == 36 for d in ingested)
    # Atomic copy: nothing but the final names lands in the inbox.
    inbox_files = [p for p in (Path(rag_env["RAG_DATA_DIR"]) / "inbox").rglob("*") if p.is_file()]
    assert not [p for p in inbox_files if p.name.startswith(".")]

    code, summary = cli("run", check=False)
    assert code == 1  # one document failed, so the run says so
    assert summary["indexed"] == 4 and summary["failed"] == 1 and summary["pending"] == 0
    assert summary["failures"][0]["path"] == "broken.pdf" and "corrupt PDF" in summary["failures"][0]["error"]

    _, status = cli("status")
    assert status["totals"] == {"indexed": 4, "failed": 1}
    by_path = {d["path"]: d for d in status["documents"]}
    assert by_path["broken.pdf"]["status"] == "failed" and by_path["broken.pdf"]["error"]
    assert by_path["guides/astronomy.md"]["chunks"] >= 1

    _, hits = cli("search", "sourdough starter", "--kb", "science", "-k", "2")
    assert hits[0]["path"] == "web/cooking.html" and hits[0]["score"] > 0
    assert {"document_id", "text", "chunk_index"} <= set(hits[0])

    _, report = cli("verify")
    assert report["ok"] and report["documents_checked"] == 4

    # Secrets never reach output.
    for payload in (summary, status, hits, report):
        assert rag_env["OPENAI_API_KEY"] not in json.dumps(payload)

    # A second run with nothing new does nothing and succeeds... except the parked failure.
    requests = embedding_server.requests
    code, again = cli("run", check=False)
    assert again["runs"] == 0 and embedding_server.requests == requests


def _index_and_break(settings) -> None:  # noqa: ANN001
    """Index one document, then lose one of its points and add a point of no document."""
    from qdrant_client.http import models as qm

    from rag_pipeline.core.vectorstore import open_client

    docs = settings.inbox_dir / "kb"
    docs.mkdir(parents=True)
    (docs / "a.txt").write_text("Alpha document about whales and dolphins.")
    cli("run")
    client = open_client(None, settings.qdrant_path)
    try:
        ids = [str(p.id) for p in client.scroll(settings.collection, limit=10)[0]]
        client.delete(settings.collection, points_selector=qm.PointIdsList(points=ids[:1]))
        client.upsert(settings.collection, points=[qm.PointStruct(id="00000000-0000-0000-0000-000000000001", vector=[0.1] * 256, payload={})])
    finally:
        client.close()


def test_verify_detects_and_repairs_missing_and_orphan_points(rag_env, embedding_server):
    from rag_pipeline.settings import Settings

    _index_and_break(Settings.from_env())
    code, report = cli("verify", check=False)
    assert code == 1 and not report["ok"]
    assert report["orphan_points"] == 1
    assert list(report["documents_missing_points"].values()) == [1]
    assert set(report["problems"]) == {"", *report["documents_missing_points"]}  # the orphan has no document

    code, repaired = cli("verify", "--repair", check=False)
    assert code == 0 and repaired["repaired"] == {"orphan_points_deleted": 1, "documents_requested": 1, "unserved_rows_dropped": 0}
    # The re-requested document is re-indexed from the embedding cache: no endpoint traffic.
    sent = sum(embedding_server.texts.values())
    cli("run")
    assert sum(embedding_server.texts.values()) == sent
    code, report = cli("verify")
    assert code == 0 and report["ok"] and report["points_checked"] >= 1


def test_run_applies_deletions_like_the_sensor(rag_env):
    from rag_pipeline.settings import Settings

    docs = Settings.from_env().inbox_dir / "kb"
    docs.mkdir(parents=True)
    (docs / "keep.txt").write_text("Kestrels hover over motorway verges hunting voles.")
    (docs / "drop.txt").write_text("Dormice hibernate for half of the year in hazel woods.")
    cli("run")
    assert {h["path"] for h in cli("search", "dormice hibernate hazel")[1]} >= {"drop.txt"}
    (docs / "drop.txt").unlink()
    _, summary = cli("run")
    assert summary["deleted"] == 1 and summary["run_failures"] == 0
    assert [d["path"] for d in cli("status")[1]["documents"]] == ["keep.txt"]
    assert "drop.txt" not in {h["path"] for h in cli("search", "dormice hibernate hazel")[1]}
    _, report = cli("verify")
    assert report["ok"] and report["points_checked"] == report["documents_checked"] == 1


def test_scheduled_audit_marks_the_documents_and_repairs_on_request(rag_env, embedding_server):
    from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

    from rag_pipeline.core.identity import document_id
    from rag_pipeline.definitions import build_definitions
    from rag_pipeline.settings import Settings

    settings = Settings.from_env()
    _index_and_break(settings)
    defs = build_definitions(settings)
    schedule = defs.resolve_schedule_def("nightly_index_audit")
    assert schedule.cron_schedule == "17 3 * * *" and schedule.job_name == "audit_index"
    job = defs.resolve_job_def("audit_index")
    with DagsterInstance.get() as instance:
        found = job.execute_in_process(instance=instance, raise_on_error=False)
        assert found.dagster_run.status == DagsterRunStatus.FAILURE
        [evaluation] = [
            e.dagster_event.event_specific_data
            for e in instance.all_logs(found.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
        ]
        assert evaluation.check_name == "points_match_chunks" and not evaluation.passed
        assert evaluation.partition == "kb/a.txt" and "no point" in evaluation.description

        sent = sum(embedding_server.texts.values())
        fixed = job.execute_in_process(instance=instance, run_config={"ops": {"audit_points": {"config": {"repair": True}}}})
        [output] = [e for e in fixed.all_events if e.is_successful_output]
        meta = output.event_specific_data.metadata
        assert meta["orphan_points_deleted"].value == 1 and meta["documents_requested"].value == 1
        cli("run")  # the re-requested document, from the embedding cache
        assert sum(embedding_server.texts.values()) == sent
        assert_run_succeeded(job.execute_in_process(instance=instance))


def raw_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rag_pipeline.cli", *args], capture_output=True, text=True,
        env={**os.environ, **env}, timeout=300,
    )


def test_each_mistake_is_one_line_from_a_process_and_doctor_names_it(rag_env):
    """Issue 22's done-when check, as an operator meets it: a missing database, a closed Qdrant
    port and a closed endpoint each give at most 3 lines on stderr naming the setting, without a
    traceback or a library warning; `doctor` names the broken part."""
    import socket

    from rag_pipeline_tests.helpers import write_files

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    write_files(Path(rag_env["RAG_DATA_DIR"]) / "inbox", "kb", {"a.txt": b"Wrens sing loudly for their size."})
    # The endpoint before Qdrant: a run against a closed Qdrant port banks its vectors first.
    mistakes = {
        "database": dict(DATABASE_URL=rag_env["DATABASE_URL"] + "_missing"),
        "embedding": dict(OPENAI_BASE_URL=f"http://127.0.0.1:{closed}/v1", RAG_EMBED_MAX_RETRIES="0"),
        "qdrant": dict(QDRANT_URL=f"http://127.0.0.1:{closed}"),
    }
    settings = {"database": "DATABASE_URL=", "qdrant": "QDRANT_URL=", "embedding": "OPENAI_BASE_URL="}
    for part, env in mistakes.items():
        proc = raw_cli("run", **env)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and 1 <= len(lines) <= 3, (part, proc.stderr)
        assert settings[part] in proc.stderr and "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
        doctor = raw_cli("doctor", "--json", **env)
        report = json.loads(doctor.stdout)
        assert doctor.returncode == 1 and [c["part"] for c in report["checks"] if c["status"] == "FAILED"] == [part]
    # And when nothing is wrong: silence on stderr (no BetaWarning), exit 0.
    proc = raw_cli("run")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert raw_cli("doctor").returncode == 0
