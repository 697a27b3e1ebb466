"""`rag-dagster-daemon`: dagster-daemon with the sensor loop every RAG_SENSOR_LOOP_SECONDS
instead of Dagster's fixed 5 s, run against the shipped dagster.yaml on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import re
import time

import psutil

import pytest
import sqlalchemy as sa

from rag_pipeline.core import records
from rag_pipeline.core.db import open_engine
from rag_pipeline.daemon import loop_seconds
from rag_pipeline.devtools.topology import Topology, production_home, wait_for
from rag_pipeline.settings import Settings, SettingsError
from rag_pipeline_tests.helpers import write_files


def test_loop_seconds_come_from_the_environment_and_nonsense_is_refused():
    assert loop_seconds({}) == 0.5
    assert loop_seconds({"RAG_SENSOR_LOOP_SECONDS": "2"}) == 2.0
    for bad in ("0", "-1", "soon", "3600"):
        with pytest.raises(SettingsError, match=f"^RAG_SENSOR_LOOP_SECONDS='{bad}' is not valid: expected .* 0.1 to 60$"):
            loop_seconds({"RAG_SENSOR_LOOP_SECONDS": bad})


def _tick_starts(engine: sa.Engine) -> list[float]:
    with engine.connect() as conn:
        bodies = conn.execute(sa.text("SELECT tick_body FROM job_ticks WHERE type = 'SENSOR' ORDER BY id")).scalars()
        return [json.loads(body)["timestamp"] for body in bodies]


def _production(pg_url: str, tmp_path, monkeypatch) -> tuple[Settings, sa.Engine]:  # noqa: ANN001
    """The repository's dagster.yaml on PostgreSQL: the settings and our tables' engine."""
    for key, value in production_home(tmp_path / "prod_home", pg_url).items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    return settings, open_engine(settings.database_url)


@pytest.mark.slow
def test_sensor_ticks_every_loop_and_an_upload_is_indexed_within_seconds(rag_env, pg_url, tmp_path, monkeypatch):
    settings, engine = _production(pg_url, tmp_path, monkeypatch)
    with Topology(tmp_path) as topology:
        topology.start_code_server()
        topology.start_daemon()
        wait_for(lambda: len(_tick_starts(engine)) >= 2, 180, "the sensor's first ticks")
        time.sleep(4)
        starts = _tick_starts(engine)
        gaps = [b - a for a, b in zip(starts[-5:], starts[-4:])]
        # Due every RAG_SENSOR_INTERVAL_SECONDS (1); Dagster's own loop would space them 5 s apart.
        assert len(gaps) == 4 and max(gaps) < 2.5, gaps

        write_files(settings.inbox_dir, "kb", {"note.txt": b"The lighthouse keeper logged every storm of the winter."})
        written = time.time()

        def queued() -> float | None:
            with engine.connect() as conn:
                return conn.execute(sa.text("SELECT min(create_timestamp) FROM runs")).scalar()

        created = wait_for(queued, 60, "a run for the upload", poll=0.05)
        # 1 s of settling, then the next tick (at most ~1.5 s later) requests the run.
        # (Dagster stores naive UTC.)
        assert created.replace(tzinfo=dt.timezone.utc).timestamp() - written < 4.0
        wait_for(lambda: [r.status for r in records.list_documents(engine)] == [records.INDEXED], 180,
                 "the upload to be indexed")


def _forked_children(forkserver: psutil.Process) -> set[int]:
    try:
        return {p.pid for p in forkserver.children()}
    except psutil.NoSuchProcess:
        return set()


@pytest.mark.slow
def test_a_run_is_forked_from_the_code_servers_preloaded_process(rag_env, pg_url, tmp_path, monkeypatch):
    """RAG_RUN_START=fork (the default): the code server keeps a forkserver that imported what
    runs need, and the run for an upload is a fork of it, not a spawned interpreter."""
    settings, engine = _production(pg_url, tmp_path, monkeypatch)
    with Topology(tmp_path) as topology:
        topology.start_code_server()
        server = psutil.Process(topology.code_server.pid)

        def forkserver() -> psutil.Process | None:
            return next((p for p in server.children() if "multiprocessing.forkserver" in " ".join(p.cmdline())), None)

        preloaded = wait_for(forkserver, 60, "the code server's forkserver")
        topology.start_daemon()
        write_files(settings.inbox_dir, "kb", {"note.txt": b"The ferry ran twice a day until the ice came."})
        forked: set[int] = set()
        spawned: set[int] = set()

        def indexed() -> bool:
            forked.update(_forked_children(preloaded))
            spawned.update(p.pid for p in server.children() if "spawn_main" in " ".join(p.cmdline()))
            return [r.status for r in records.list_documents(engine)] == [records.INDEXED]

        wait_for(indexed, 180, "the upload to be indexed", poll=0.02)
        with engine.connect() as conn:
            messages = conn.execute(sa.text(
                "SELECT event FROM event_logs WHERE dagster_event_type = 'ENGINE_EVENT' AND event LIKE '%Started process for run%'"
            )).scalars().all()
        pids = {int(m) for body in messages for m in re.findall(r"Started process for run \(pid: (\d+)\)", body)}
        assert pids and pids <= forked, (pids, forked)
        assert not spawned
