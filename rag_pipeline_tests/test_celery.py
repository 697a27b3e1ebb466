"""Past one machine by configuration alone: the same definitions, with RAG_EXECUTOR=celery and
the broker in RAG_EXECUTOR_CONFIG, run every ingestion step as a task on a Celery worker (a
separate `dagster-celery worker` process, as on another machine). The broker and result
backend are Celery's filesystem transports, the only ones that need no server here; in
production they are RabbitMQ or Redis URLs, and nothing else changes."""

from __future__ import annotations

import json
import shutil

import pytest
from dagster import DagsterEventType, DagsterInstance, RunsFilter

from rag_pipeline.core import records
from rag_pipeline.core.db import open_engine
from rag_pipeline.devtools.topology import Topology, production_home, wait_for
from rag_pipeline.settings import Settings
from rag_pipeline_tests.helpers import FORMAT_FILES, assert_run_succeeded, write_files



@pytest.mark.slow
def test_celery_executor_runs_the_steps_on_a_worker(rag_env, pg_url, tmp_path, embedding_server, monkeypatch):
    _run_through_celery(pg_url, tmp_path, monkeypatch, lambda settings: write_files(settings.inbox_dir, "kb", FORMAT_FILES))


@pytest.mark.slow
def test_celery_steps_read_the_bucket_with_no_shared_folder(
    rag_env, pg_url, tmp_path, embedding_server, s3_server, s3_bucket, monkeypatch,
):
    """The landing zone is a bucket: the worker's steps read the objects themselves; no
    landing directory exists anywhere."""
    monkeypatch.setenv("RAG_INBOX_URL", f"s3://{s3_bucket}/landing")
    monkeypatch.setenv("RAG_INBOX_DIR", str(tmp_path / "no-such-folder"))
    client = s3_server.client()

    def upload(settings: Settings) -> None:
        for rel, data in FORMAT_FILES.items():
            client.put_object(Bucket=s3_bucket, Key=f"landing/kb/{rel}", Body=data)

    _run_through_celery(pg_url, tmp_path, monkeypatch, upload)
    assert not (tmp_path / "no-such-folder").exists()


def _run_through_celery(pg_url, tmp_path, monkeypatch, upload) -> None:  # noqa: ANN001
    for key, value in production_home(tmp_path / "prod_home", pg_url).items():
        monkeypatch.setenv(key, value)
    queue, results = tmp_path / "celery_queue", tmp_path / "celery_results"
    for folder in (queue, results, tmp_path / "celery_processed"):
        folder.mkdir()
    celery = {
        "broker": "filesystem://",
        "backend": f"file://{results}",
        "config_source": {
            "broker_transport_options": {"data_folder_in": str(queue), "data_folder_out": str(queue),
                                         "processed_folder": str(tmp_path / "celery_processed")},
        },
    }
    monkeypatch.setenv("RAG_EXECUTOR", "celery")
    monkeypatch.setenv("RAG_EXECUTOR_CONFIG", json.dumps(celery))
    # The worker reads the same settings from the file dagster-celery's docs prescribe.
    worker_config = tmp_path / "worker"
    worker_config.mkdir()
    (worker_config / "celery.yaml").write_text(json.dumps({"execution": {"config": celery}}))
    (worker_config / "dagster_celery_config.py").write_text(
        f"broker_url = {celery['broker']!r}\nresult_backend = {celery['backend']!r}\n"
        f"broker_transport_options = {celery['config_source']['broker_transport_options']!r}\n"
    )
    settings = Settings.from_env()
    engine = open_engine(settings.database_url)
    topology = Topology(tmp_path)
    try:
        topology.start_code_server()
        # dagster-celery starts `celery` from PATH: the one beside it.
        topology.env["PATH"] = f"{topology.bin}:{topology.env.get('PATH', '')}"
        worker = topology.spawn("celery_worker", [
            str(topology.bin / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
            "-y", str(worker_config / "celery.yaml"), "--", "--pool=solo", "--without-gossip", "--without-mingle",
            "--without-heartbeat",
        ])
        topology.start_daemon()
        upload(settings)

        def indexed() -> bool:
            assert worker.poll() is None, "the Celery worker exited"
            rows = records.list_documents(engine)
            return len(rows) == len(FORMAT_FILES) and all(r.status == records.INDEXED for r in rows)

        wait_for(indexed, 180, "the documents to be indexed through Celery", poll=1)
        with DagsterInstance.get() as instance:
            [run] = instance.get_runs(RunsFilter(job_name="index_documents"))
            wait_for(lambda: instance.get_run_by_id(run.run_id).is_finished, 60, "the run to end")
            assert_run_succeeded(instance.get_run_by_id(run.run_id), instance)
            starts = instance.all_logs(run.run_id, of_type=DagsterEventType.STEP_START)
            assert {e.step_key for e in starts} == {"source_document", "document_chunks", "chunk_vectors", "document_embeddings"}
        # Every step was a task the worker ran.
        assert topology.log("celery_worker").count("succeeded in") >= 4, topology.log("celery_worker")[-3000:]
    except BaseException:
        topology.print_log_tails()
        raise
    finally:
        topology.stop()
        shutil.rmtree(queue, ignore_errors=True)


def test_executor_is_chosen_and_configured_by_environment(monkeypatch):
    from rag_pipeline.definitions import build_definitions
    from rag_pipeline.defs.executor import ExecutorConfigError, executor_from_config

    monkeypatch.setenv("RAG_EXECUTOR", "multiprocess")
    monkeypatch.setenv("RAG_EXECUTOR_CONFIG", '{"max_concurrent": 2}')
    defs = build_definitions(Settings.from_env())
    # The sensor's job and the UI's materializations and backfills (the implicit asset job) alike.
    for job in (defs.resolve_job_def("index_documents"), defs.resolve_implicit_global_asset_job_def()):
        assert job.executor_def.name == "multiprocess_from_rag_executor_config"

    with pytest.raises(ExecutorConfigError, match="one of .*'celery'.*got 'spark'"):
        executor_from_config("spark")
    with pytest.raises(ExecutorConfigError, match="not valid JSON"):
        executor_from_config("multiprocess", "{broker: x}")
    with pytest.raises(ExecutorConfigError, match="needs the no-such-module package"):
        executor_from_config("no_such_module:executor")
    with pytest.raises(ExecutorConfigError, match="not a Dagster executor"):
        executor_from_config("json:dumps")
