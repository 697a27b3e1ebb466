"""A run worker killed with SIGKILL in the middle of a run, under the real daemon (sensor, run
queue, run monitoring, run retries) with the repository's dagster.yaml on PostgreSQL: the run
is marked failed from its stale heartbeat, retried, and its documents end up indexed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from rag_pipeline.core import records
from rag_pipeline.core.db import open_engine, run_heartbeats
from rag_pipeline.devtools.topology import Topology, production_home, wait_for
from rag_pipeline.settings import Settings
from rag_pipeline_tests.helpers import assert_run_succeeded, write_files

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("victims", ["worker", "worker_and_code_server"])
def test_killed_run_worker_is_retried_and_its_documents_indexed(
    victims, rag_env, pg_url, tmp_path, embedding_server, monkeypatch
):
    """`worker`: the code server that spawned the run sees its child die and fails the run.
    `worker_and_code_server`: the machine running both is lost and its code server comes back
    empty-handed (a container restart); nobody remembers the run, and only its stale heartbeat,
    read by HeartbeatRunLauncher for run monitoring, reveals the death."""
    for key, value in production_home(tmp_path / "prod_home", pg_url).items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", {
        f"doc{i}.txt": f"Document {i} tells of lighthouse keeper number {i} and the storms they saw.".encode()
        for i in range(3)
    })
    engine = open_engine(settings.database_url)
    embedding_server.hold_next(1)  # the run's first embedding request waits: the moment to kill it
    topology = Topology(tmp_path)
    topology.start_code_server()
    topology.start_daemon()
    try:
        assert embedding_server.wait_until_held(timeout=180), "no run reached the embedding step"

        def live_worker():  # noqa: ANN202
            with engine.connect() as conn:
                return conn.execute(
                    sa.select(run_heartbeats.c.run_id, run_heartbeats.c.pid).where(run_heartbeats.c.finished_at.is_(None))
                ).first()

        run_id, pid = wait_for(live_worker, 30, "the run's heartbeat")
        if victims == "worker_and_code_server":
            # The worker is the code server's: forked from its forkserver (RAG_RUN_START=fork).
            assert _parent_pid(_parent_pid(pid)) == topology.code_server.pid
            os.kill(topology.code_server.pid, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        embedding_server.release()
        if victims == "worker_and_code_server":
            topology.code_server.wait(10)
            topology.start_code_server()  # what a container restart policy does

        def all_indexed() -> bool:
            rows = records.list_documents(engine)
            return len(rows) == 3 and all(r.status == records.INDEXED for r in rows)

        wait_for(all_indexed, 240, "the documents to be indexed after the kill", poll=1)
        recovery = time.monotonic() - killed
        with DagsterInstance.get() as instance:
            dead = instance.get_run_by_id(run_id)
            assert dead.status == DagsterRunStatus.FAILURE
            failure_messages = [
                e.message for e in instance.all_logs(run_id)
                if e.dagster_event and e.dagster_event.event_type in (DagsterEventType.RUN_FAILURE, DagsterEventType.ENGINE_EVENT)
            ]
            expected = "stopped beating" if victims == "worker_and_code_server" else "terminated by signal 9"
            assert any(expected in (m or "") for m in failure_messages), failure_messages
            # The documents are indexed before their run records its own end.
            def retries_ended() -> list:
                retries = instance.get_runs(RunsFilter(tags={"dagster/parent_run_id": run_id}))
                return retries if retries and all(r.is_finished for r in retries) else []

            retries = wait_for(retries_ended, 60, "the retry run to end")
            assert len(retries) == 1, [(r.run_id, r.status) for r in retries]
            assert_run_succeeded(retries[0], instance)
        ARTIFACTS.mkdir(exist_ok=True)
        with open(ARTIFACTS / "recovery_after_kill.txt", "a") as out:
            out.write(f"kill -9 of {victims} (run {run_id}): all documents indexed {recovery:.1f} s later\n")
        print(f"recovery after kill -9 of {victims}: {recovery:.1f} s")
        # The bound: stale heartbeat (30 s) + a monitoring poll (10 s) + a retry's launch and run.
        assert recovery < 120
        # No async code runs anywhere in the pipeline; the processes' logs prove no loop trouble.
        logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.log"))
        assert "Event loop is closed" not in logs and "attached to a different loop" not in logs
    finally:
        embedding_server.release()
        topology.stop()
