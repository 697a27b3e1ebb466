"""Dagster's default run launcher, plus worker health from the runs' heartbeats.

With this, Dagster's own run monitoring (dagster.yaml `run_monitoring`) notices a run whose
process died, marks it failed, and `run_retries` launches it again: the documents it held are
indexed by the retry instead of waiting for the run's maximum runtime.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from dagster import DefaultRunLauncher, Field, IntSource, StringSource

from rag_pipeline.core.db import open_engine
from rag_pipeline.defs import tuning
from rag_pipeline.defs.dagster_internals import CheckRunHealthResult, ConfigurableClassData, WorkerStatus
from rag_pipeline.core.heartbeat import INTERVAL_SECONDS, last_beat


class HeartbeatRunLauncher(DefaultRunLauncher):
    def __init__(
        self,
        inst_data: ConfigurableClassData | None = None,
        database_url: str | None = None,
        stale_after_seconds: int = 30,
        start_grace_seconds: int = 120,
    ) -> None:
        super().__init__(inst_data=inst_data)
        # The daemon and the webserver, which create runs, build this launcher from dagster.yaml.
        tuning.install()
        self.database_url = database_url
        # Several missed beats, so a loaded machine or a database blip is not a death.
        self.stale_after_seconds = max(stale_after_seconds, int(3 * INTERVAL_SECONDS))
        self.start_grace_seconds = start_grace_seconds

    @classmethod
    def config_type(cls) -> dict:
        return {
            "database_url": Field(StringSource, description="Where runs write their heartbeats (DATABASE_URL)."),
            "stale_after_seconds": Field(IntSource, default_value=30, is_required=False),
            "start_grace_seconds": Field(IntSource, default_value=120, is_required=False),
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> "HeartbeatRunLauncher":
        return cls(inst_data=inst_data, **config_value)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run) -> CheckRunHealthResult:  # noqa: ANN001
        beat = last_beat(open_engine(self.database_url), run.run_id)
        if beat is None:
            record = self._instance.get_run_record_by_id(run.run_id)
            started = record.start_time if record and record.start_time else time.time()
            if time.time() - started > self.start_grace_seconds:
                return CheckRunHealthResult(WorkerStatus.FAILED, "the run worker never reported a heartbeat")
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        if beat.finished_at is not None:
            return CheckRunHealthResult(WorkerStatus.SUCCESS)
        age = beat.age()
        if age > self.stale_after_seconds:
            return CheckRunHealthResult(
                WorkerStatus.FAILED,
                f"the run worker (pid {beat.pid} on {beat.host}) stopped beating {age:.0f}s ago: "
                "killed, out of memory, or its machine was lost",
            )
        return CheckRunHealthResult(WorkerStatus.RUNNING)
