"""`rag-dagster-daemon`: dagster-daemon with the sensor loop every RAG_SENSOR_LOOP_SECONDS
instead of Dagster's fixed 5 s, run against the shipped dagster.yaml on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import time

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


@pytest.mark.slow
def test_sensor_ticks_every_loop_and_an_upload_is_indexed_within_seconds(rag_env, pg_url, tmp_path, monkeypatch):
    for key, value in production_home(tmp_path / "prod_home", pg_url).items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    engine = open_engine(settings.database_url)
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
