"""Connections stay bounded: many runs at once against a PostgreSQL with few connection slots
(a private cluster with a low max_connections), Dagster's storage and our tables both on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from rag_pipeline.core import records
from rag_pipeline.core.db import open_engine
from rag_pipeline.settings import Settings
from rag_pipeline_tests.helpers import write_files
from rag_pipeline_tests.private_pg import private_cluster

REPO = Path(__file__).resolve().parent.parent
MAX_CONNECTIONS = 30
RUNS = 5
# Per run process: our engine (the run's thread and its heartbeat thread, never more), Dagster's
# pooled event log (2 kept, a third while one stored event nests another call) and its run
# storage (a connection per call).
PER_RUN = 6

pytestmark = pytest.mark.slow  # a private cluster and five run processes at once


@pytest.fixture
def small_postgres():
    yield from private_cluster(MAX_CONNECTIONS)


RUNNER = """
import sys
from dagster import DagsterInstance
from rag_pipeline.definitions import build_definitions
job = build_definitions().resolve_job_def("index_documents")
with DagsterInstance.get() as instance:
    result = job.execute_in_process(instance=instance, tags={
        "dagster/asset_partition_range_start": sys.argv[1], "dagster/asset_partition_range_end": sys.argv[2]})
sys.exit(0 if result.success else 1)
"""


def test_concurrent_runs_stay_within_the_connection_bound(small_postgres, rag_env, tmp_path, monkeypatch):
    home = tmp_path / "prod_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    for key, value in {
        "DAGSTER_HOME": str(home), "DAGSTER_PG_USER": "postgres", "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(small_postgres.port), "DAGSTER_PG_DB": "postgres",
        "DATABASE_URL": small_postgres.url,
    }.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    write_files(settings.inbox_dir, "kb", {
        f"doc{i:02d}.txt": f"Document {i} on the migration of arctic terns, chapter {i}.".encode() for i in range(RUNS * 3)
    })
    from rag_pipeline.core import detection
    from rag_pipeline.defs.jobs import ensure_pools
    from rag_pipeline.defs.partitions import documents_partitions

    engine = open_engine(settings.database_url, pool_size=1)
    detection.detect(engine, settings.inbox_dir)
    keys = sorted(detection.pending_documents(engine, None))
    with __import__("dagster").DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(documents_partitions.name, keys)
        ensure_pools(instance)  # as the sensor does before it launches any run
    engine.dispose()

    peak = {"n": 0}
    stop = threading.Event()

    def sample() -> None:
        with psycopg.connect(small_postgres.url, autocommit=True) as conn:
            while not stop.is_set():
                n = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'").fetchone()[0]
                peak["n"] = max(peak["n"], n - 1)  # not counting this sampler
                time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    procs = [
        subprocess.Popen([sys.executable, "-c", RUNNER, keys[i], keys[i + 2]], env=dict(os.environ),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for i in range(0, len(keys), 3)
    ]
    outputs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in procs]
    stop.set()
    sampler.join(5)
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
        assert "too many clients" not in out and "remaining connection slots" not in out
    rows = records.list_documents(open_engine(settings.database_url))
    assert len(rows) == RUNS * 3 and {r.status for r in rows} == {records.INDEXED}
    print(f"peak connections with {RUNS} concurrent runs: {peak['n']} (bound {RUNS * PER_RUN})")
    assert 0 < peak["n"] <= RUNS * PER_RUN
    # And no session is left behind, idle in a transaction or otherwise.
    with psycopg.connect(small_postgres.url, autocommit=True) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()[0]
    assert left <= 1  # at most the test's own engine
